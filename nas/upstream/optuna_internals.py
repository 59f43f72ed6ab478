"""Optuna's private API, as the project uses it (written against optuna 5; see :mod:`nas.upstream`)."""

from __future__ import annotations

from contextlib import AbstractContextManager

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, Trial, TrialState


def heartbeat(study: optuna.Study, trial: Trial) -> AbstractContextManager:
    """What ``Study.optimize`` runs around a trial: a thread that records the trial's heartbeat in the storage (when
    the storage has a heartbeat interval), so that a worker that dies leaves a trial the others can fail."""
    return get_heartbeat_thread(trial._trial_id, study._storage)


def record_heartbeat(study: optuna.Study, trial: Trial | FrozenTrial) -> None:
    """Record one heartbeat of ``trial`` now (what a worker's heartbeat thread does each interval)."""
    study._storage.record_heartbeat(trial._trial_id)


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Mark a trial that no process will finish as failed, with ``fail_reason`` (``tell`` would need the live
    trial's process; this works from any process on the storage)."""
    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
