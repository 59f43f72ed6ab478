"""The Optuna backend: local worker processes sharing one RDB study.

Each worker runs :func:`run_worker`: claim a trial (under a lock, so ``n_trials`` is exact however many workers
race), score it with the study's :class:`~nas.objective.Evaluator`, tell the storage. The parent process watches the
storage and draws the progress. Running the same search again continues the stored study up to ``n_trials``
finished (complete or pruned) trials; failed trials do not count, so they are replaced.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.trial import TrialState

from kernels.cache import file_lock, lock_dir
from latency_model.db import redact
from search_spaces import ArchConfig
from search_spaces.errors import ConfigError, ResourceError, ShiftAddError, StateError

from . import attributes as attr
from .dashboard import artifact_location, artifact_store, publish_study, publish_trial
from .device import Placement, resolve, resolve_device, worker_device
from .disk import ensure_database_writable
from .driver import SearchDriver, SearchEvents, SearchOptions, SearchSummary, progress_of
from .process import quiet_optuna_logging, quiet_search_worker_warnings, set_torch_threads
from .study import Study, create_pruner, create_sampler, sampler_seed
from .upstream.optuna_internals import heartbeat

# Trials that use up the budget: finished ones and those running now (queued ones do not, until claimed).
STARTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
SQLITE_TIMEOUT_S = 60
# A worker whose trials fail this many times in a row stops: the cause is the setup, not one architecture.
MAX_CONSECUTIVE_FAILURES = 3
# How long a started worker waits for the others to be ready before it claims a trial anyway.
READY_TIMEOUT_S = 300


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
    from search_spaces.config import BlockConfig, MoEConfig

    depth = study.space.depth
    paper = BlockConfig("additive", "dense", "dense", "moe", MoEConfig(1, ("dense", "shift")))
    return {"dense": ArchConfig.dense(study.model, depth), "paper": ArchConfig(study.model, (paper,) * depth)}


def open_study(study: Study, create: bool = True, heartbeat: bool = False) -> optuna.Study:
    """The study's Optuna study on its storage (created with the reference trials queued when new); with
    ``heartbeat``, the storage watches its workers' trials (see :func:`storage_of`). Processes of this machine open
    it one at a time: two drivers started together would both create the storage's tables, or both queue the
    reference trials."""
    with _claim_lock(study):
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
        return optuna.load_study(study_name=study.name, storage=storage, sampler=create_sampler(study),
                                 pruner=create_pruner(study))
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


@contextmanager
def _claim_lock(study: Study) -> Iterator[None]:
    """A lock around "count the trials, start one" shared by the workers of this machine."""
    key = hashlib.sha256(f"{study.storage}\0{study.name}".encode()).hexdigest()[:16]
    with file_lock(lock_dir() / f"{key}.lock"):
        yield


def _claim(study: Study, ostudy: optuna.Study, n_trials: int) -> optuna.Trial | None:
    with _claim_lock(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(ostudy)  # trials of dead workers -> FAIL, and queued again
        if len(ostudy.get_trials(deepcopy=False, states=STARTED)) >= n_trials:
            return None
        return ostudy.ask()


def run_worker(study_path: str, storage: str | None, n_trials: int, timeout_s: float | None, threads: int,
               worker: int = 0, stored_at_start: int = 0, ready=None, device: str | None = None,
               driver_seed: int = 0) -> int:
    """One search worker (a process of its own): claim, run and tell trials until ``n_trials`` are planned.
    ``driver_seed`` (:attr:`SearchOptions.driver_seed`), ``stored_at_start`` (the study's trial count when the search
    started) and ``worker`` seed its sampler; each trial records that seed.
    ``ready`` (a barrier shared by the workers of one search) holds the first claim until every worker has loaded
    its teacher, data and predictor, so the trials are shared from the first one, not taken by whichever process
    started first. ``device`` is where it trains (the driver's choice for this worker, see
    :func:`nas.device.worker_device`; None: the study's). Returns how many trials this worker ran."""
    from .objective import Evaluator, optuna_objective

    quiet_optuna_logging()
    quiet_search_worker_warnings()
    if threads:
        set_torch_threads(threads)
    study = Study.load(study_path, storage=storage).on_device(device)
    ostudy = open_study(study, heartbeat=True)
    stream = (driver_seed, stored_at_start, worker)
    ostudy.sampler, seed = create_sampler(study, stream), sampler_seed(study, stream)
    objective = optuna_objective(Evaluator(study))
    store = artifact_store(artifact_location(study))
    if ready is not None:
        try:
            ready.wait(timeout=READY_TIMEOUT_S)
        except threading.BrokenBarrierError:
            pass  # a worker that failed to start does not hold up the others
    deadline = time.monotonic() + timeout_s if timeout_s else None
    ran, failed_in_a_row = 0, 0
    while (deadline is None or time.monotonic() < deadline) and failed_in_a_row < MAX_CONSECUTIVE_FAILURES:
        trial = _claim(study, ostudy, n_trials)
        if trial is None:
            break
        trial.set_user_attr(attr.WORKER, f"{os.uname().nodename}:{os.getpid()}")
        trial.set_user_attr(attr.SAMPLER_SEED, seed)
        start = time.perf_counter()
        values = None
        try:
            with heartbeat(ostudy, trial):  # what optimize() does around a trial
                values = objective(trial)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except Exception as e:  # noqa: BLE001 - any failure of one trial fails that trial, not the search
            trial.set_user_attr(attr.FAIL_REASON, f"{type(e).__name__}: {e}"[:2000])
            trial.set_user_attr(attr.TRACEBACK, traceback.format_exc()[-4000:])
            state = TrialState.FAIL
        trial.set_user_attr(attr.WALL_S, round(time.perf_counter() - start, 3))
        publish_trial(study, trial, state, store)
        ostudy.tell(trial, values, state=state)
        failed_in_a_row = failed_in_a_row + 1 if state == TrialState.FAIL else 0
        ran += 1
    if failed_in_a_row >= MAX_CONSECUTIVE_FAILURES:
        raise SearchError("storage", f"{failed_in_a_row} trials in a row failed; this worker stopped")
    return ran


def _worker_devices(study: Study, workers: int) -> list[str]:
    """Where each local worker trains, resolved on this machine (:func:`nas.device.worker_device`: round robin over
    the GPUs); a device or precision this machine cannot give is a :class:`ConfigError` here, before any work."""
    devices = [str(resolve_device(worker_device(study.train.device, i))) for i in range(workers)]
    for device in set(devices):
        resolve(device, study.train.precision)
    return devices


def _worker_main(*args: Any) -> None:
    import sys

    try:
        run_worker(*args)
    except ShiftAddError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


class OptunaDriver(SearchDriver):
    """Worker processes on this machine, each claiming trials from the study's storage (see the module's text)."""

    name = "optuna"

    def check(self, study: Study, options: SearchOptions) -> None:
        if options.ray_address:
            raise ConfigError("--ray-address", "only with --backend ray")

    def describe(self, study: Study, options: SearchOptions) -> str:
        devices = _worker_devices(study, options.workers)
        where = devices[0] if len(set(devices)) == 1 else ", ".join(f"worker {i} on {d}" for i, d in
                                                                     enumerate(devices))
        if study.evaluation.supernet:
            per_trial = (f"weights inherited from the supernet (+{study.evaluation.finetune_steps} steps) per "
                         "trial")
        else:
            per_trial = f"{study.budget.epochs} epochs of {study.budget.steps_per_epoch or 'all'} steps per trial"
        return (f"{options.trials_for(study)} trials, {options.workers} worker process(es) training on {where}, "
                f"{per_trial}")

    def run(self, study: Study, options: SearchOptions, events: SearchEvents = SearchEvents(),
            poll_s: float = 1.0) -> SearchSummary:
        import multiprocessing

        from .objective import Evaluator

        self.check(study, options)
        n_trials, timeout_s, workers = options.trials_for(study), options.timeout_for(study), options.workers
        ensure_database_writable(study.storage, "storage")  # a full disk or read-only folder: said before any work
        devices = _worker_devices(study, workers)  # a device this machine lacks: said before any work
        # fail here, once and clearly, if the teacher, data or predictor is missing (loaded on the CPU: the workers
        # train, this process only watches)
        Evaluator(study, placement=Placement())
        artifact_store(artifact_location(study))  # and if the artifact store cannot be used
        ostudy = open_study(study)
        publish_study(study, ostudy)
        before = progress_of(ostudy)
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")  # torch and TVM threads do not survive fork
        ready = context.Barrier(workers) if workers > 1 else None
        processes = [context.Process(target=_worker_main, name=f"nas-worker-{i}",
                                     args=(str(study.path), study.storage, n_trials, timeout_s, threads, i,
                                           sum(before.counts.values()), ready, devices[i], options.driver_seed))
                     for i in range(workers)]
        start = time.perf_counter()
        for p in processes:
            p.start()
        try:
            while any(p.is_alive() for p in processes):
                events.progress(progress_of(ostudy))
                for p in processes:
                    p.join(timeout=poll_s / len(processes))
        except KeyboardInterrupt:
            for p in processes:
                p.terminate()
            for p in processes:
                p.join()
            raise
        after = progress_of(ostudy)
        events.progress(after)
        publish_study(study, ostudy)  # the references' results
        bad = [p for p in processes if p.exitcode not in (0, None)]
        if bad and after.finished < n_trials:
            codes = ", ".join(f"{p.name} exit {p.exitcode}" for p in bad)
            last = f"; last failure: trial {after.failures[-1][0]}: {after.failures[-1][1]}" if after.failures else ""
            raise SearchError("--workers", f"search workers stopped early ({codes}); {after.finished} of {n_trials} "
                                           f"trials finished{last}. Fix the cause and run the same command again to "
                                           "continue")
        orphans = after.counts.get("RUNNING", 0)
        if orphans and after.finished < n_trials:  # every worker here has ended: those trials' workers died earlier
            grace = 2 * study.search.heartbeat_s
            raise SearchError("storage", f"{orphans} trial(s) are still RUNNING from a worker that died (an earlier "
                                         f"run, or another machine); they count against n_trials until their "
                                         f"heartbeat is {grace} s old, then they are marked FAIL and queued again: "
                                         "run the same command again after that")
        return SearchSummary(self.name, before, after, time.perf_counter() - start)
