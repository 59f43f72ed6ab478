"""The refine stage: the few architectures a search recommends, trained for real.

A supernet-mode front is ranked by inherited weights, a proxy that orders real fine-tunes only in part; refining
fine-tunes the front's ``top`` candidates (spread along the front) and the dense reference, each from the teacher
with the ``nas finetune`` recipe, for ``seeds`` seeds, and scores them on the search split (what selects among them)
and the test split (what is reported).

Each (architecture, seed) is a *job*: a trial of the companion Optuna study ``<name>:refine`` on the study's own
storage, queued WAITING with the job's description in its attributes. A worker claims a job by moving its trial from
WAITING to RUNNING (an atomic update in the storage, so two processes or machines never take the same one), trains it
under the storage's heartbeat, and tells the trial COMPLETE with its results, as soon as it ends. A worker that dies
leaves its trial RUNNING; once its heartbeat is stale the next claim marks it FAIL and the job is queued again. Running
the refine again queues only the jobs no trial finished: it resumes. optuna-dashboard shows the jobs as that study's
trials.

Workers run on this machine (:func:`run_local`, processes) or as Ray tasks on a cluster (:func:`run_ray`); either way
each one loops claim → train → tell until no job is left.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from latency_model.predictor import Predictor
from search_spaces import ArchConfig
from search_spaces.errors import ShiftAddError
from search_spaces.reparam import create_model

from .. import attributes as attr
from ..device import Placement, resolve_device, worker_device
from ..process import start_worker
from ..study import Study
from ..training.checkpoints import save_weights
from ..training.evaluator import Evaluator, tested_attrs
from ..upstream.optuna_internals import claim_waiting, fail_stale, fail_trial, heartbeat
from .ray_cluster import join_ray, ray, trial_device
from .report import pareto_trials
from .storage import SearchError, claim_lock, open_refine_study, refine_study_name

# A worker whose jobs fail this many times in a row stops: the cause is the setup, not one architecture.
MAX_CONSECUTIVE_FAILURES = 2
# How long a Ray task waits for the others to be ready before it claims a job anyway (a cluster short of slots).
READY_TIMEOUT_S = 120


@dataclass(frozen=True)
class Job:
    """One fine-tune of the refine stage: an architecture of the search (its trial) with one seed."""

    config: ArchConfig
    seed: int
    trial: int  # the search trial it refines
    label: str  # "dense" (a reference trial's name) or "trial N"
    epochs: int

    @property
    def key(self) -> str:
        return job_key(self.config.id, self.seed, self.epochs)

    def attrs(self) -> dict[str, Any]:
        return {attr.REFINE_JOB: self.key, attr.CONFIG: self.config.to_json(), attr.CONFIG_ID: self.config.id,
                attr.SEED: self.seed, attr.SEARCH_TRIAL: self.trial, attr.LABEL: self.label,
                attr.EPOCHS: self.epochs}

    @classmethod
    def of(cls, a: dict[str, Any]) -> "Job":
        """The job a trial's attributes describe."""
        return cls(ArchConfig.from_json(a[attr.CONFIG]), int(a[attr.SEED]), int(a[attr.SEARCH_TRIAL]),
                   str(a[attr.LABEL]), int(a[attr.EPOCHS]))


def job_key(config_id: str, seed: int, epochs: int) -> str:
    """A job's identity: the same architecture, seed and epochs is the same result, whoever trains it."""
    return f"{config_id}/seed-{seed}/epochs-{epochs}"


def seeds_of(study: Study, seeds: int) -> list[int]:
    """The seeds of the fine-tunes: the study's ``train.seed`` and the next ones (a job's numbers follow from it)."""
    return [study.train.seed + i for i in range(seeds)]


def candidates(ostudy: optuna.Study, top: int) -> list[tuple[FrozenTrial, str]]:
    """The search trials to refine: ``top`` of its Pareto front, spread along it by accuracy (its most and its
    least accurate end always among them), and the dense reference trial; each with its label."""
    front = pareto_trials(ostudy)  # most accurate first
    if len(front) > top:
        picks = sorted({round(i * (len(front) - 1) / max(top - 1, 1)) for i in range(top)}) if top > 1 else [0]
        front = [front[i] for i in picks]
    chosen = {t.number: (t, t.user_attrs.get(attr.REFERENCE) or f"trial {t.number}") for t in front}
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get(attr.REFERENCE) == "dense" and attr.CONFIG in t.user_attrs:
            chosen.setdefault(t.number, (t, "dense"))
            break
    return [chosen[n] for n in sorted(chosen)]


def plan(study: Study, ostudy: optuna.Study, top: int, seeds: int, epochs: int) -> list[Job]:
    """Every job of a refine: each candidate (:func:`candidates`) with each seed."""
    return [Job(ArchConfig.from_json(t.user_attrs[attr.CONFIG]), seed, t.number, label, epochs)
            for t, label in candidates(ostudy, top) for seed in seeds_of(study, seeds)]


def enqueue(study: Study, rstudy: optuna.Study, jobs: list[Job]) -> list[Job]:
    """Queue the jobs no trial has finished, is running or is waiting for; returns them. Stale trials of dead
    workers are marked FAIL first, so their jobs are queued again."""
    with claim_lock(study):
        fail_stale(rstudy)
        taken = {t.user_attrs.get(attr.REFINE_JOB) for t in rstudy.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))}
        queued = [job for job in jobs if job.key not in taken]
        for job in queued:
            rstudy.enqueue_trial({}, user_attrs=job.attrs(), skip_if_exists=False)
    return queued


def _requeue_stale(rstudy: optuna.Study) -> None:
    """Mark FAIL the running jobs whose worker's heartbeat went stale (the worker died, here or on another machine),
    and queue each again unless another trial of it finished, runs or waits: the workers still claiming take it."""
    running = {t.number for t in rstudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    fail_stale(rstudy)
    if not running:
        return
    trials = rstudy.get_trials(deepcopy=False)
    live = {t.user_attrs.get(attr.REFINE_JOB) for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)}
    for t in trials:
        key = t.user_attrs.get(attr.REFINE_JOB)
        if t.number in running and t.state == TrialState.FAIL and key is not None and key not in live:
            rstudy.enqueue_trial({}, user_attrs=Job.of(t.user_attrs).attrs(), skip_if_exists=False)
            live.add(key)


def claim(study: Study, rstudy: optuna.Study) -> optuna.Trial | None:
    """The next waiting job, now RUNNING for this process; None when none waits. A job whose worker went silent is
    queued again first (:func:`_requeue_stale`). A job some other trial already finished or runs (two drivers queued
    it at once on two machines) is dropped here, marked PRUNED."""
    while True:
        with claim_lock(study):
            _requeue_stale(rstudy)
            trial = claim_waiting(rstudy)
        if trial is None:
            return None
        key = trial.user_attrs.get(attr.REFINE_JOB)
        mine = (trial.datetime_start, trial.number)
        rivals = [t for t in rstudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
                  if t.user_attrs.get(attr.REFINE_JOB) == key and t.number != trial.number]
        # claims of one job in the same instant all see each other: the first claimed (then the lowest number) wins
        if key is not None and not any(t.state == TrialState.COMPLETE or (t.datetime_start, t.number) < mine
                                       for t in rivals):
            return trial
        rstudy.tell(trial, state=TrialState.PRUNED)


def run_worker(study: Study, threads: int = 0, evaluator=None, where: dict[str, str] | None = None) -> int:
    """Claim, train and tell refine jobs until none waits; returns how many it ran. ``evaluator``:
    a fine-tune-mode :class:`~nas.training.evaluator.Evaluator` of the study (default: made here from its files);
    ``where``: attributes that say where it runs, set on each job it claims (a Ray node's id)."""
    start_worker(threads, tvm=True)  # a fine-tune may run kernels: TVM gets the same share of the cores
    rstudy = open_refine_study(study, heartbeat=True)
    assert rstudy is not None
    evaluator = evaluator or Evaluator(study, mode="finetune")
    ran, failed_in_a_row = 0, 0
    while failed_in_a_row < MAX_CONSECUTIVE_FAILURES:
        trial = claim(study, rstudy)
        if trial is None:
            break
        job = Job.of(trial.user_attrs)
        trial.set_user_attr(attr.WORKER, f"{os.uname().nodename}:{os.getpid()}")
        for key, value in (where or {}).items():
            trial.set_user_attr(key, value)
        start = time.perf_counter()
        try:
            with heartbeat(rstudy, trial):
                result, model = evaluator.run(job.config, epochs=job.epochs, full_epochs=True, seed=job.seed,
                                              test=True)
            weights = save_weights(model.cpu(), weights_path(study, job), {"config": job.config.to_json()})
            assert result.test is not None
            for key, value in {attr.SEARCH_ACCURACY: result.search.accuracy,
                               attr.SEARCH_SE: round(result.search.standard_error, 6),
                               attr.SEARCH_IMAGES: result.search.count, **tested_attrs(result.test),
                               attr.LATENCY_MS: result.latency_ms, attr.ENERGY_UJ: result.energy_uj,
                               attr.SEARCH_ACCURACY_HISTORY: result.history, attr.WEIGHTS_FILE: str(weights),
                               attr.WALL_S: round(time.perf_counter() - start, 3)}.items():
                trial.set_user_attr(key, value)
            rstudy.tell(trial, result.test.accuracy)
            failed_in_a_row = 0
        except Exception as e:  # noqa: BLE001 - one failed job fails that job, not the refine
            trial.set_user_attr(attr.FAIL_REASON, f"{type(e).__name__}: {e}"[:2000])
            trial.set_user_attr(attr.TRACEBACK, traceback.format_exc()[-4000:])
            rstudy.tell(trial, state=TrialState.FAIL)
            failed_in_a_row += 1
        ran += 1
    if failed_in_a_row >= MAX_CONSECUTIVE_FAILURES:
        raise SearchError("storage", f"{failed_in_a_row} refine jobs in a row failed; this worker stopped (see "
                                     f"their fail_reason in study {refine_study_name(study)!r})")
    return ran


def weights_path(study: Study, job: Job) -> Path:
    """Where a job's fine-tuned weights go: beside the study's report, one folder per architecture."""
    return study.folder / "runs" / study.name / "refine" / job.config.id / f"seed-{job.seed}.safetensors"


# ---- where the workers run ------------------------------------------------------------------------------------------
@dataclass
class JobCounts:
    """The jobs of a refine, by state of their latest trial."""

    total: int
    done: int
    running: int
    failed: list[tuple[str, str]]  # (job label, reason) of jobs whose latest trial failed

    @property
    def waiting(self) -> int:
        return self.total - self.done - self.running - len(self.failed)


def job_counts(rstudy: optuna.Study, jobs: list[Job]) -> JobCounts:
    latest: dict[str, FrozenTrial] = {}
    for t in rstudy.get_trials(deepcopy=False):
        key = t.user_attrs.get(attr.REFINE_JOB)
        if key is not None and t.state != TrialState.PRUNED:
            if key not in latest or latest[key].state != TrialState.COMPLETE:
                latest[key] = t
    states = [latest.get(job.key) for job in jobs]
    done = sum(1 for t in states if t is not None and t.state == TrialState.COMPLETE)
    running = sum(1 for t in states if t is not None and t.state == TrialState.RUNNING)
    failed = [(f"{job.label} seed {job.seed}", t.user_attrs.get(attr.FAIL_REASON, "unknown"))
              for job, t in zip(jobs, states) if t is not None and t.state == TrialState.FAIL]
    return JobCounts(len(jobs), done, running, failed)


def _local_worker(study_path: str, storage: str | None, threads: int, device: str | None) -> None:
    try:
        run_worker(Study.load(study_path, storage=storage).on_device(device), threads)
    except ShiftAddError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run_local(study: Study, jobs: list[Job], workers: int, on_progress: Callable[[JobCounts], None] | None = None,
              poll_s: float = 1.0) -> None:
    """``workers`` processes on this machine claim the jobs until none waits. A worker that dies (killed, out of
    memory) fails its running job at once and a new worker takes its place, up to ``workers`` replacements."""

    rstudy = open_refine_study(study)
    assert rstudy is not None
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # torch and TVM threads do not survive fork

    def start(i: int):
        device = str(resolve_device(worker_device(study.train.device, i)))
        p = context.Process(target=_local_worker, name=f"nas-refine-{i}",
                            args=(str(study.path), study.storage, threads, device))
        p.start()
        return p

    processes = [start(i) for i in range(workers)]
    replacements, buried = 0, set()
    try:
        while any(p.is_alive() for p in processes):
            for i, p in enumerate(processes):
                p.join(timeout=poll_s / len(processes))
                if not p.is_alive() and p.exitcode not in (0, 2) and p.pid not in buried:
                    buried.add(p.pid)
                    _fail_jobs_of(rstudy, p.pid, f"its worker died (exit {p.exitcode})")
                    enqueue(study, rstudy, jobs)
                    if replacements < workers:
                        replacements += 1
                        processes[i] = start(i)
            if on_progress is not None:
                on_progress(job_counts(rstudy, jobs))
    except KeyboardInterrupt:
        for p in processes:
            p.terminate()
        for p in processes:
            p.join()
        raise
    if on_progress is not None:
        on_progress(job_counts(rstudy, jobs))
    if any(p.exitcode == 2 for p in processes) and job_counts(rstudy, jobs).done < len(jobs):
        raise SearchError("--workers", "refine workers stopped on an error (printed above); fix it and run the same "
                                       "command again to continue")


def _fail_jobs_of(rstudy: optuna.Study, pid: int, reason: str) -> None:
    """The RUNNING jobs of a dead local worker, marked FAIL (its heartbeat would say so, later)."""
    me = f"{os.uname().nodename}:{pid}"
    for t in rstudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(attr.WORKER) == me:
            fail_trial(rstudy, t, reason)


class _Gate:
    """A Ray actor the refine's tasks check in with, so that none claims a job before all are ready (else the task
    that loaded first could take every short job while the others are still loading)."""

    def __init__(self) -> None:
        self.arrived = 0

    def arrive(self) -> int:
        self.arrived += 1
        return self.arrived

    def count(self) -> int:
        return self.arrived


def _ray_task(study_text: str, study_path: str, teacher_state: dict, predictor: dict, threads: int,
              device: str, gate, tasks: int) -> int:
    """One Ray task: a refine worker on whichever node Ray put it (the teacher and predictor came with it)."""
    study = Study.parse(study_text, study_path).on_device(device)
    teacher = create_model(study.model)
    teacher.load_state_dict(teacher_state)
    evaluator = Evaluator(study, teacher=teacher.eval(), predictor=Predictor.from_dict(predictor), mode="finetune")
    deadline = time.monotonic() + READY_TIMEOUT_S
    ray.get(gate.arrive.remote())
    while ray.get(gate.count.remote()) < tasks and time.monotonic() < deadline:
        time.sleep(0.2)
    node = {f"{attr.RAY_NODE_PREFIX}node_id": ray.get_runtime_context().get_node_id()}
    return run_worker(study, threads, evaluator, node)


def run_ray(study: Study, jobs: list[Job], workers: int, ray_address: str | None, cpus_per_job: float = 1.0,
            gpus_per_job: float = 0.0, on_progress: Callable[[JobCounts], None] | None = None,
            poll_s: float = 1.0) -> None:
    """``workers`` Ray tasks (on a local Ray, or the cluster at ``ray_address``) claim the jobs until none waits.
    The storage must be one every node reaches (PostgreSQL for a cluster of several machines)."""

    evaluator = Evaluator(study, placement=Placement(), mode="finetune")  # the teacher and predictor that travel
    rstudy = open_refine_study(study)
    assert rstudy is not None
    join_ray(ray_address, cpus_per_job, workers)
    try:
        task = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=0)(_ray_task)
        gate = ray.remote(num_cpus=0)(_Gate).remote()
        teacher = ray.put(evaluator.teacher.state_dict())
        pending = [task.remote(study.path.read_text(), str(study.path), teacher, evaluator.predictor.to_dict(),
                               max(1, int(cpus_per_job)), trial_device(study.train.device, gpus_per_job), gate,
                               workers)
                   for _ in range(workers)]
        errors = []
        while pending:
            ready, pending = ray.wait(pending, timeout=poll_s)
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a task that died: its job is failed by its heartbeat
                    errors.append(str(e).splitlines()[0])
            if on_progress is not None:
                on_progress(job_counts(rstudy, jobs))
    finally:
        ray.shutdown()
    if errors and job_counts(rstudy, jobs).done < len(jobs):
        raise SearchError("--backend", f"refine tasks stopped: {errors[0]}; run the same command again to continue")


__all__ = ["Job", "JobCounts", "candidates", "claim", "enqueue", "job_counts", "plan",
           "run_local", "run_ray", "run_worker", "weights_path"]
