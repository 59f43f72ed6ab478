"""The Optuna backend: local worker processes sharing one RDB study.

Each worker runs :func:`run_worker`: claim a trial (under a lock, so ``n_trials`` is exact however many workers
race), score it with the study's :class:`~nas.training.evaluator.Evaluator`, tell the storage. The parent process
watches the storage and draws the progress. Running the same search again continues the stored study up to ``n_trials``
finished (complete or pruned) trials; failed trials do not count, so they are replaced.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
import traceback
from typing import Any

import optuna
from optuna.trial import TrialState

from search_spaces.errors import ConfigError, ShiftAddError

from .. import attributes as attr
from ..device import Placement, resolve, resolve_device, worker_device
from ..disk import ensure_database_writable
from ..process import start_worker
from ..study import Study, create_sampler, sampler_seed
from ..training.evaluator import Evaluator
from ..upstream.optuna_internals import ask_beating, fail_stale, heartbeat
from .dashboard import artifact_store, publish_study, publish_trial
from .driver import SearchDriver, SearchEvents, SearchOptions, SearchSummary, progress_of
from .objective import optuna_objective
from .storage import SearchError, claim_lock, open_study

# Trials that use up the budget: finished ones and those running now (queued ones do not, until claimed).
STARTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
# A worker whose trials fail this many times in a row stops: the cause is the setup, not one architecture.
MAX_CONSECUTIVE_FAILURES = 3
# How long a started worker waits for the others to be ready before it claims a trial anyway.
READY_TIMEOUT_S = 300


def _claim(study: Study, ostudy: optuna.Study, n_trials: int) -> optuna.Trial | None:
    with claim_lock(study):
        fail_stale(ostudy)  # trials of dead workers -> FAIL, and queued again
        if len(ostudy.get_trials(deepcopy=False, states=STARTED)) >= n_trials:
            return None
        return ask_beating(ostudy)


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
    start_worker(threads)
    study = Study.load(study_path, storage=storage).on_device(device)
    ostudy = open_study(study, heartbeat=True)
    stream = (driver_seed, stored_at_start, worker)
    ostudy.sampler, seed = create_sampler(study, stream), sampler_seed(study, stream)
    objective = optuna_objective(Evaluator(study))
    store = artifact_store(study.artifact_location)
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

        self.check(study, options)
        n_trials, timeout_s, workers = options.trials_for(study), options.timeout_for(study), options.workers
        ensure_database_writable(study.storage, "storage")  # a full disk or read-only folder: said before any work
        devices = _worker_devices(study, workers)  # a device this machine lacks: said before any work
        # fail here, once and clearly, if the teacher, data or predictor is missing (loaded on the CPU: the workers
        # train, this process only watches)
        Evaluator(study, placement=Placement())
        artifact_store(study.artifact_location)  # and if the artifact store cannot be used
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
