"""Optuna's private API, as the project uses it (written against optuna 5; see :mod:`nas.upstream`)."""

from __future__ import annotations

import json
import warnings
from contextlib import AbstractContextManager

import optuna
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import FrozenTrial, Trial, TrialState


def heartbeat(study: optuna.Study, trial: Trial) -> AbstractContextManager:
    """What ``Study.optimize`` runs around a trial: a thread that records the trial's heartbeat in the storage (when
    the storage has a heartbeat interval), so that a worker that dies leaves a trial the others can fail."""
    return get_heartbeat_thread(trial._trial_id, study._storage)


def record_heartbeat(study: optuna.Study, trial: Trial | FrozenTrial) -> None:
    """Record one heartbeat of ``trial`` now (what a worker's heartbeat thread does each interval)."""
    study._storage.record_heartbeat(trial._trial_id)


def _beats(study: optuna.Study) -> bool:
    return is_heartbeat_enabled(study._storage)


def claim_waiting(study: optuna.Study) -> Trial | None:
    """A queued (WAITING) trial of ``study``, now RUNNING for this process, or None when none waits: what
    ``Study.ask`` does first, without its fallback of creating a new trial. The storage's state update is
    conditional on the trial still waiting, so two processes never claim the same one.

    On a storage that watches heartbeats, the trial beats once *before* it is claimed: a trial that never beat
    cannot go stale, so a worker killed between its claim and its heartbeat thread's first beat would otherwise
    leave it RUNNING for ever (a beat on a trial another process then claims, or that stays waiting, is harmless:
    only RUNNING trials are checked, and their claimer beats again)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if _beats(study):
            study._storage.record_heartbeat(t._trial_id)
        if study._storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
            return Trial(study, t._trial_id)
    return None


def ask_beating(study: optuna.Study) -> Trial:
    """``study.ask()``, with the new trial's first heartbeat recorded at once on a storage that watches them (a
    trial that never beat cannot go stale: a worker killed before its heartbeat thread started would leave it
    RUNNING for ever). A trial is created RUNNING, so one statement's window remains, as in ``Study.optimize``."""
    trial = study.ask()
    if _beats(study):
        record_heartbeat(study, trial)
    return trial


def fail_stale(study: optuna.Study) -> None:
    """Fail the RUNNING trials whose heartbeat stopped (their worker died), so that they can be queued again:
    Optuna's ``fail_stale_trials``, whose experimental-API warning is silenced here, once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Mark a trial that no process will finish as failed, with ``fail_reason`` (``tell`` would need the live
    trial's process; this works from any process on the storage)."""
    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def study_artifacts(study: optuna.Study) -> dict[str, str]:
    """The artifacts of a study, id -> file name, without the removed ones (whose record optuna-dashboard leaves as
    null, which ``optuna.artifacts.get_all_artifact_meta`` cannot read)."""


    found = {}
    for key, value in study._storage.get_study_system_attrs(study._study_id).items():
        meta = json.loads(value) if key.startswith(ARTIFACTS_ATTR_PREFIX) and isinstance(value, str) else None
        if isinstance(meta, dict):
            found[meta["artifact_id"]] = meta["filename"]
    return found


def remove_study_artifact(study: optuna.Study, store, artifact_id: str) -> None:
    """Remove an artifact of a study: its file from the store and its record from the study (as optuna-dashboard's
    delete button does; Optuna has no public call for it)."""


    store.remove(artifact_id)
    study._storage.set_study_system_attr(study._study_id, ARTIFACTS_ATTR_PREFIX + artifact_id, json.dumps(None))
