"""The Ray Tune backend: the same objective and search space as the Optuna backend, run as Ray Tune trials, with
Optuna as Ray's searcher on the study's RDB storage, so trials land in the study that optuna-dashboard, ``nas export``
and ``nas report`` read.

:class:`StudySearcher` fixes the bookkeeping of Ray's ``OptunaSearch``: a trial a scheduler stops early (ASHA) is
PRUNED, not COMPLETE with a partial value; a trial whose worker died is FAIL even if it had reported results; every
Optuna trial carries the Ray trial id, the node, and the same user attributes as the Optuna backend.

The trainable gets the study text, the teacher, the predictor and (supernet mode) the supernet's weights through
Ray's object store, so a worker node needs neither the study folder nor the files in it (an ``imagefolder`` dataset
must still be on a shared path).

This module imports Ray at its top (its classes extend Ray's): it is loaded only when the ``ray`` backend is chosen
(:data:`nas.search.backends.BACKENDS` names it).
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Mapping
from typing import Any

import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from latency_model.predictor import Predictor
from search_spaces.errors import ConfigError
from search_spaces.reparam import create_model

from .. import attributes as attr
from ..device import Placement
from ..disk import ensure_database_writable, ensure_writable
from ..process import set_torch_threads, set_tvm_threads
from ..study import Study, create_sampler, sampler_seed
from ..training.evaluator import Evaluator
from ..training.supernet_file import supernet_from_state, supernet_state
from ..upstream import ray_internals
from ..upstream.optuna_internals import fail_trial
from .dashboard import artifact_store, publish_study, publish_trial
from .driver import SearchDriver, SearchEvents, SearchOptions, SearchSummary, progress_of
from .objective import set_constraints
from .ray_cluster import join_ray, trial_device
from .storage import open_study, storage_of

FINAL = "final"  # set in the last result of a trial that ran to the end
NODE_KEYS = ("hostname", "node_ip", "node_id", "pid")  # where a Ray result came from (stored as ray_<key>)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Ray un-flattens the dotted Optuna names (``b0.attention`` -> ``{"b0": {"attention": ...}}``); undo it."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def trainable(config: dict[str, Any], study_text: str, study_path: str, teacher_state: dict, predictor: dict,
              threads: int, device: str = "cpu", supernet_state: dict | None = None) -> None:
    """One Ray Tune trial: rebuild the architecture from the searcher's parameters and score it."""
    set_tvm_threads(threads)
    set_torch_threads(threads)

    study = Study.parse(study_text, study_path).on_device(device)
    arch = study.space.from_params(_flatten(config))
    teacher = create_model(study.model)
    teacher.load_state_dict(teacher_state)
    supernet = None
    if supernet_state is not None:  # supernet mode: the trained weights came through the object store

        supernet = supernet_from_state(study, teacher.eval(), supernet_state)
    evaluator = Evaluator(study, teacher=teacher.eval(), predictor=Predictor.from_dict(predictor), supernet=supernet)
    # Every result carries every metric (Ray checks for them); before the end, the hardware metrics are priced at the
    # default MoE split.
    early = {"latency_ms": evaluator.predictor.predict(arch, evaluator.batch).total_ms}
    energy = evaluator.energy(arch)
    if energy is not None:
        early["energy_uj"] = energy["energy_uj"]
    node = ray.get_runtime_context().get_node_id()

    epochs = study.budget.epochs

    def report(epoch: int, accuracy: float) -> bool:
        # The last epoch's accuracy goes out with the final result: a scheduler stops every trial at its last
        # report (ASHA at max_t), and that report must be the one that says the trial ran to the end.
        if epoch + 1 < epochs:
            tune.report({"accuracy": accuracy, **early, "epoch": epoch + 1, "node_id": node})
        return False

    try:
        result, _ = evaluator.run(arch, report=report)
    except Exception as e:  # noqa: BLE001 - the trial fails with its reason; Ray and the study go on
        tune.report({"accuracy": float("nan"), **early, "node_id": node,
                     "fail_reason": f"{type(e).__name__}: {e}"})
        return
    # Ray flattens nested results; the attributes travel as one JSON string
    final = {m: result.metric(m) for m in early}
    tune.report({"accuracy": result.accuracy, **final, "epoch": epochs, FINAL: True,
                 "node_id": node, "attrs": json.dumps(result.user_attrs())})


class StudySearcher(OptunaSearch):
    """Ray's OptunaSearch, storing each trial's true end state and its attributes."""

    # Ray pickles the searcher into its experiment state for Tuner.restore. This one resumes through the Optuna
    # study instead, and its storage connection, sampler and space cannot be pickled: leave them out.
    def __getstate__(self) -> dict:
        return {**ray_internals.picklable_state(self), "_arch_space": None, "_study": None, "_store": None}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("resume a search by running `nas search --backend ray` again")

    def __init__(self, *args, arch_space=None, budgets: dict[str, float] | None = None,
                 timeout_s: float | None = None, study: Study | None = None, artifacts=None,
                 sampler_seed: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sampler_seed = sampler_seed  # recorded on each trial
        self._arch_space = arch_space  # rebuilds a trial's ArchConfig from its parameters
        self._study, self._store = study, artifacts  # each trial's note and artifact (nas.search.dashboard)
        self._budgets = budgets or {}  # hardware metric -> budget: a constraint each (as the Optuna backend's)
        self._where: dict[str, dict[str, Any]] = {}  # Ray trial id -> the node it last reported from
        # like the Optuna backend's timeout: no new trial after it, running ones finish (Tune's time_budget_s
        # would stop them, and they would be stored as pruned)
        self._deadline = time.time() + timeout_s if timeout_s else None

    def suggest(self, trial_id: str):
        if self._deadline is not None and time.time() > self._deadline:
            return self.FINISHED
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._where[trial_id] = {key: result[key] for key in NODE_KEYS if key in result}
        if "fail_reason" not in result and FINAL not in result:
            super().on_trial_result(trial_id, result)  # intermediate accuracy for single-objective studies

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = ray_internals.pending_trial(self, trial_id)
        if trial is None:
            return
        result = result or {}
        trial.set_user_attr(attr.RAY_TRIAL_ID, trial_id)
        if self._sampler_seed is not None:
            trial.set_user_attr(attr.SAMPLER_SEED, self._sampler_seed)
        for key, value in {**self._where.pop(trial_id, {}), **result}.items():
            if key in NODE_KEYS:  # a dead worker sends no result: its node is the one it last reported from
                trial.set_user_attr(f"{attr.RAY_NODE_PREFIX}{key}", value)
        if self._arch_space is not None:
            try:
                trial.set_user_attr(attr.CONFIG, self._arch_space.from_params(trial.params).to_json())
            except ConfigError:
                pass  # parameters still incomplete: the trial failed before its architecture was drawn
        if result.get("time_total_s") is not None:
            trial.set_user_attr(attr.WALL_S, round(float(result["time_total_s"]), 3))
        if error or "fail_reason" in result:
            reason = result.get("fail_reason") or "the Ray worker running this trial died or raised"
            trial.set_user_attr(attr.FAIL_REASON, reason)
            state, values = TrialState.FAIL, None
        elif result.get(FINAL):
            for key, value in json.loads(result.get("attrs", "{}")).items():
                trial.set_user_attr(key, value)
            metric = ray_internals.metric(self)
            if isinstance(metric, list):
                values = [result[m] for m in metric]
            else:  # the last epoch's accuracy, held back from the intermediate reports (see trainable)
                values = result[metric]
                trial.report(values, result["training_iteration"])

            set_constraints(trial, self._budgets, result.__getitem__)
            state = TrialState.COMPLETE
        else:  # stopped by the scheduler before its last epoch
            state, values = TrialState.PRUNED, None
        if self._study is not None:
            publish_trial(self._study, trial, state, self._store)
        ray_internals.tell(self, trial_id, values, state)



def _fail_stale(ostudy) -> int:
    """Trials left RUNNING by an interrupted Ray driver: nobody will finish them (one Ray driver per study). Trials of
    Optuna-backend workers (they carry ``worker``) are left to those workers' heartbeats."""
    running = ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = [t for t in running if attr.WORKER not in t.user_attrs]
    for t in stale:
        fail_trial(ostudy, t, "left running by an interrupted search")
    return len(stale)


class RayDriver(SearchDriver):
    """Ray Tune trials, on a local Ray or a cluster, with Optuna as Ray's searcher on the study's storage."""

    name = "ray"

    def check(self, study: Study, options: SearchOptions) -> None:
        if study.pruner.name not in ("none", "asha"):
            raise ConfigError("pruner.name", f"the Ray backend stops trials with ASHA: use {{name: asha}} or "
                                             f"{{name: none}}, not {study.pruner.name!r}", str(study.path))
        device = study.train.device
        if device.startswith("cuda:"):
            raise ConfigError("train.device", f"{device} names one GPU of one machine; on Ray use cuda (or auto) "
                                              "and --gpus-per-trial: Ray gives each trial its GPU", str(study.path))
        if device == "cuda" and options.gpus_per_trial <= 0:
            raise ConfigError("--gpus-per-trial", "train.device is cuda: give each trial a GPU with --gpus-per-trial "
                                                  "1 (or a fraction), which Ray then assigns")
        if study.train.precision == "fp16" and trial_device(device, options.gpus_per_trial) == "cpu":
            raise ConfigError("train.precision", "fp16 needs a CUDA device and these trials train on the CPU "
                                                 "(--gpus-per-trial 0): use bf16 or fp32", str(study.path))

    def describe(self, study: Study, options: SearchOptions) -> str:
        where = f"the Ray cluster at {options.ray_address}" if options.ray_address else "a local Ray"
        device = trial_device(study.train.device, options.gpus_per_trial)
        return (f"on {where}: up to {options.workers} concurrent trial(s), {options.cpus_per_trial} CPU and "
                f"{options.gpus_per_trial} GPU each, training on {'its GPU' if device == 'cuda' else 'the CPU'}")

    def run(self, study: Study, options: SearchOptions, events: SearchEvents = SearchEvents()) -> SearchSummary:
        """Run (or continue) the study's search as Ray Tune trials, ``options.workers`` at a time; no trial starts
        after the timeout."""
        self.check(study, options)
        n_trials, workers = options.trials_for(study), options.workers
        cpus_per_trial, gpus_per_trial = options.cpus_per_trial, options.gpus_per_trial
        ensure_database_writable(study.storage, "storage")
        ensure_writable(study.folder / "runs" / study.name / "ray", "Ray's results folder")
        # the teacher and predictor that travel with every trial (on the CPU: the trials train); fails early, clearly
        evaluator = Evaluator(study, placement=Placement())
        store = artifact_store(study.artifact_location)
        ostudy = open_study(study)
        publish_study(study, ostudy)
        stale = _fail_stale(ostudy)
        notes = (f"{stale} trial(s) left running by an interrupted search were marked FAIL",) if stale else ()
        before = progress_of(ostudy)
        remaining = n_trials - before.finished
        if remaining <= 0:
            return SearchSummary(self.name, before, before, 0.0, notes)
        join_ray(options.ray_address, cpus_per_trial, workers)
        try:
            multi = study.objectives.multi
            metric = list(study.objectives.metrics) if multi else "accuracy"
            mode = ["max" if m == "accuracy" else "min" for m in metric] if multi else "max"

            def define(trial) -> None:
                study.space.suggest(trial)

            stream = (options.driver_seed, len(ostudy.trials))  # a continued search draws new architectures
            searcher = StudySearcher(space=define, metric=metric, mode=mode, sampler=create_sampler(study, stream),
                                     sampler_seed=sampler_seed(study, stream), study_name=study.name,
                                     storage=storage_of(study.storage), arch_space=study.space,
                                     budgets=study.objectives.budgets,
                                     timeout_s=options.timeout_for(study), study=study, artifacts=store)
            scheduler = None
            if study.pruner.name == "asha":
                kwargs = {"max_t": study.budget.epochs, "grace_period": 1, "reduction_factor": 2,
                          **study.pruner.kwargs}
                try:
                    scheduler = ASHAScheduler(time_attr="training_iteration", metric="accuracy", mode="max", **kwargs)
                except (TypeError, ValueError) as e:
                    raise ConfigError("pruner", f"asha does not take {study.pruner.kwargs}: {e}", str(study.path)) \
                        from None
            threads = max(1, int(cpus_per_trial))
            run = tune.with_parameters(trainable, study_text=study.path.read_text(), study_path=str(study.path),
                                       teacher_state=evaluator.teacher.state_dict(),
                                       predictor=evaluator.predictor.to_dict(), threads=threads,
                                       device=trial_device(study.train.device, gpus_per_trial),
                                       supernet_state=None if evaluator.supernet is None else
                                       supernet_state(evaluator.supernet))
            tuner = tune.Tuner(
                tune.with_resources(run, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                            max_concurrent_trials=workers),
                run_config=tune.RunConfig(
                    name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}", verbose=0,
                    callbacks=[_Progress(events, ostudy)],
                    storage_path=str((study.folder / "runs" / study.name / "ray").resolve()),
                    failure_config=tune.FailureConfig(max_failures=0)),
            )
            start = time.perf_counter()
            tuner.fit()
            seconds = time.perf_counter() - start
        finally:
            ray.shutdown()
        after = progress_of(ostudy)
        events.progress(after)
        publish_study(study, ostudy)
        return SearchSummary(self.name, before, after, seconds, notes)


class _Progress(Callback):
    """Tells the caller's :class:`SearchEvents` how each Ray trial ended, and the storage's state, in the driver."""

    def __init__(self, events: SearchEvents, ostudy) -> None:
        self.events = events
        self.ostudy = ostudy

    def __getstate__(self) -> dict:  # Ray pickles callbacks into its experiment state; the printer stays here
        return {"events": SearchEvents(), "ostudy": None}

    def _ended(self, trial, state: str) -> None:
        self.events.trial(trial.trial_id, state)
        if self.ostudy is not None:
            self.events.progress(progress_of(self.ostudy))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        self._ended(trial, "complete" if last.get(FINAL) else ("failed" if "fail_reason" in last else "stopped early"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "failed (worker died or raised)")
