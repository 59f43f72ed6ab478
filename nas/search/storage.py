"""The search's storage: the study's Optuna study on its RDB (SQLite or PostgreSQL), opened the same way by every
driver, worker and report, with the reference trials queued when it is new; the lock that lets the processes of one
machine take their turn with it.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna

from kernels.cache import file_lock, lock_dir
from latency_model.db import redact
from latency_model.energy import DEFAULT_MODEL as DEFAULT_ENERGY_MODEL
from search_spaces import ArchConfig
from search_spaces.config import BlockConfig, MoEConfig
from search_spaces.errors import ConfigError, ResourceError, StateError

from .. import attributes as attr
from ..study import Study, create_pruner, create_sampler

SQLITE_TIMEOUT_S = 60
REFINE_SUFFIX = ":refine"  # the refine's companion study (nas.search.refine): <study name>:refine


class SearchError(ResourceError):
    """The search could not go on (its workers stopped, the cluster cannot be joined); ``where`` is the storage or the
    flag to look at. What is stored stays valid and a re-run continues."""


def storage_of(url: str, heartbeat_s: int | None = None, retries: int = 0) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage. SQLite gets a long busy timeout and WAL so several local workers can share it.
    With ``heartbeat_s``, a RUNNING trial that stops beating for two intervals (its worker died) is marked FAIL by
    the next worker that claims a trial, and queued again up to ``retries`` times."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8: said once, in README
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            beats: dict[str, Any] = {}
            if heartbeat_s:
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries)
                beats = {"heartbeat_interval": heartbeat_s, "grace_period": 2 * heartbeat_s,
                         "heartbeat_stale_trial_callback": retry}
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **beats)
    except (ImportError, ModuleNotFoundError) as e:
        raise ResourceError("storage", f"no database driver for {redact(url)}: {e}") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy/optuna raise many kinds for a bad URL or server
        raise ResourceError("storage", f"cannot open {redact(url)}: {type(e).__name__}: {str(e).splitlines()[0]}") \
            from None
    if url.startswith("sqlite"):
        with storage.engine.connect() as connection:  # WAL persists in the file: readers stop blocking writers
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def reference_configs(study: Study) -> dict[str, ArchConfig]:
    """The reference points a search is judged against: the all-dense model, and the paper's hand-picked
    allocation (ShiftAddViT: additive attention in every block, MoE of a dense and a shift expert in every MLP)."""
    depth = study.space.depth
    paper = BlockConfig("additive", "dense", "dense", "moe", MoEConfig(1, ("dense", "shift")))
    return {"dense": ArchConfig.dense(study.model, depth), "paper": ArchConfig(study.model, (paper,) * depth)}


def open_study(study: Study, create: bool = True, heartbeat: bool = False) -> optuna.Study:
    """The study's Optuna study on its storage (created with the reference trials queued when new); with
    ``heartbeat``, the storage watches its workers' trials (see :func:`storage_of`). Processes of this machine open
    it one at a time: two drivers started together would both create the storage's tables, or both queue the
    reference trials."""
    with claim_lock(study):
        return _open_study(study, create, heartbeat)


def _open_study(study: Study, create: bool, heartbeat: bool) -> optuna.Study:
    settings = study.search
    storage = storage_of(study.storage, settings.heartbeat_s, settings.retries) if heartbeat else \
        storage_of(study.storage)
    directions = study.objectives.directions
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if study.name in existing:
        stored = [d.name.lower() for d in existing[study.name].directions]
        if stored != directions:
            raise ConfigError("objectives.metrics", f"study {study.name!r} in {redact(study.storage)} optimizes "
                                                    f"{stored}, but the file asks for {directions}; give the study "
                                                    "another name to start afresh", str(study.path))
        ostudy = optuna.load_study(study_name=study.name, storage=storage, sampler=create_sampler(study),
                                   pruner=create_pruner(study))
        _check_energy(study, ostudy)
        return ostudy
    if not create:
        known = ", ".join(sorted(existing)) or "none"
        raise StateError("name", f"no study {study.name!r} in {redact(study.storage)} (studies there: {known}); "
                                  f"run `nas search {study.path}` first", str(study.path))
    ostudy = optuna.create_study(study_name=study.name, storage=storage, directions=directions,
                                 sampler=create_sampler(study), pruner=create_pruner(study), load_if_exists=True)
    if not ostudy.user_attrs:
        ostudy.set_user_attr(attr.STUDY_FILE, str(study.path))
        ostudy.set_user_attr(attr.STUDY_MODEL, study.model.to_dict())
        ostudy.set_user_attr(attr.STUDY_LATENCY_DEVICE, study.latency.device)
        ostudy.set_user_attr(attr.STUDY_METRICS, list(study.objectives.metrics))
        ostudy.set_user_attr(attr.STUDY_ENERGY_TABLE, study.energy.to_dict())
        for name, config in reference_configs(study).items():
            try:
                params = study.space.params_of(config)
            except ConfigError:
                continue  # not in this space: a search cannot propose it, so the report shows no such point
            ostudy.enqueue_trial(params, user_attrs={attr.REFERENCE: name})
    return ostudy


def _check_energy(study: Study, ostudy: optuna.Study) -> None:
    """Refuse to go on with a study that searches on energy under another energy model or table than its stored
    trials were priced with: their ``energy_uj`` would not compare."""
    stored = ostudy.user_attrs.get(attr.STUDY_ENERGY_TABLE)
    if not stored or not study.objectives.uses_energy:
        return
    was = (stored.get("model", DEFAULT_ENERGY_MODEL), stored.get("name"))
    now = (study.energy.model, study.energy.name)
    if was != now:
        raise ConfigError("energy.model" if was[0] != now[0] else "energy.table",
                          f"study {study.name!r} in {redact(study.storage)} priced its trials' energy with model "
                          f"{was[0]} ({was[1]}), but the file asks for {now[0]} ({now[1]}); their energy_uj would "
                          "not compare: set the energy section back, or give the study another name to start afresh",
                          str(study.path))


def refine_study_name(study: Study) -> str:
    """The name of the study that holds a study's refine jobs, on the same storage."""
    return f"{study.name}{REFINE_SUFFIX}"


def open_refine_study(study: Study, create: bool = True, heartbeat: bool = False) -> optuna.Study | None:
    """The companion study that holds the refine jobs (None when it does not exist and ``create`` is False); with
    ``heartbeat``, its storage watches the workers' heartbeats (:func:`nas.search.storage.storage_of`)."""
    settings = study.search
    storage = storage_of(study.storage, settings.heartbeat_s, settings.retries) if heartbeat else \
        storage_of(study.storage)
    name = refine_study_name(study)
    if not create:
        names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
        return optuna.load_study(study_name=name, storage=storage) if name in names else None
    with claim_lock(study):  # two drivers starting together would both create it
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)


@contextmanager
def claim_lock(study: Study) -> Iterator[None]:
    """A lock around "count the trials, start one" shared by the workers of this machine."""
    key = hashlib.sha256(f"{study.storage}\0{study.name}".encode()).hexdigest()[:16]
    with file_lock(lock_dir() / f"{key}.lock"):
        yield


__all__ = ["SearchError", "claim_lock", "open_study", "reference_configs", "storage_of"]
