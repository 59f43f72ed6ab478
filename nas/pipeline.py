"""The steps of a search, as functions: what the ``nas`` commands call, and what a script or a notebook can call.

Each step takes a :class:`~nas.study.Study` and typed options, returns a result value, prints nothing and is
idempotent: profiling what the table holds, fitting a predictor that is up to date, pretraining a cached teacher or
searching a study that has its trials is a quick no-op. Progress is reported through optional callbacks, which the
CLI turns into progress bars. Errors are :class:`search_spaces.errors.ShiftAddError` with a ``where`` to act on.

    profile -> fit_latency -> pretrain -> [supernet] -> search -> refine -> report -> export -> finetune

:func:`run` runs them all in order, each skipped when done (what ``nas run`` does), telling a :class:`RunEvents`.
:func:`latency` prices (and measures) one architecture, as ``nas latency`` does.

Example::

    from nas import pipeline
    from nas.study import Study

    study = Study.load("studies/quickstart.yaml")
    profiled = pipeline.profile(study, pipeline.ProfileOptions(trials=0))
    if pipeline.needs_fit(study, profiled):
        pipeline.fit_latency(study)
    pipeline.pretrain(study)
    summary = pipeline.search(study, "optuna", pipeline.SearchOptions(n_trials=4))
    # or all of it at once:
    result = pipeline.run(study, pipeline.RunOptions(search=pipeline.SearchOptions(n_trials=4)))
    print(result.best, result.report.front)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernels.cache import cache_dir, file_lock, lock_dir
from latency_model import db
from latency_model.db import DEFAULT_URL
from latency_model.decomposition import ModelDims
from latency_model.energy import MODELS, EnergySettings, estimate
from latency_model.gate import PredictorRefused, check
from latency_model.predictor import Predictor, PredictorError, router_loads
from latency_model.settings import LatencySettings
from search_spaces import ArchConfig, build_model
from search_spaces.errors import ConfigError, ShiftAddError, StateError
from search_spaces.reparam import create_model

from . import attributes as attr
from .device import resolve
from .disk import ensure_database_writable, ensure_writable
from .export import export as write_configs
from .finetune import finetune as train_config
from .search import refine as jobs_of
from .search.backends import get_driver
from .search.dashboard import artifact_location, artifact_store, note_finetune, publish_study, replace_study_artifacts
from .search.driver import Progress, SearchEvents, SearchOptions, SearchSummary
from .search.objective import score_test_split
from .search.provenance import named_study, read_export
from .search.refined import SETTINGS, refined_front, refined_points, trust
from .search.report import front_metrics, shown_trials
from .search.report import report as write_report
from .search.storage import open_refine_study, open_study
from .study import Study, create_pruner, create_sampler
from .study_latency import measure_latency, profiled_trials, where_it_pays
from .training import data
from .training.checkpoints import load_published, load_weights
from .training.supernet_trainer import check_memory, is_trained, train
from .training.teacher import is_pretrained, load_teacher
from .training.teacher import pretrain as train_teacher

if TYPE_CHECKING:
    from latency_model.energy import EnergyEstimate
    from latency_model.prediction import Accuracy, Prediction
    from latency_model.profile import Summary as ProfileSummary

    from .device import Placement
    from .finetune import FinetuneResult
    from .search.refine import JobCounts
    from .search.refined import Refined, Trust
    from .search.report import Report
    from .training.data import Splits
    from .training.supernet_trainer import SupernetResult
    from .training.teacher import PretrainResult


__all__ = ["FitOptions", "FitResult", "LatencyOptions", "LatencyReport", "ProfileOptions", "Progress", "RunEvents",
           "RunOptions", "RunResult", "RunStep", "SearchEvents", "SearchOptions", "SearchSummary", "Validation",
           "FinetuneJob", "export", "finetune", "fit_latency", "in_study", "latency", "load_data", "needs_fit",
           "needs_pretrain", "needs_supernet", "preflight", "pretrain", "profile", "refine", "RefineOptions",
           "RefineResult", "report", "run", "search", "supernet", "validate", "where_it_pays"]


@contextmanager
def in_study(study: Study) -> Iterator[None]:
    """Errors about a study's files and settings name the study file too."""
    try:
        yield
    except ShiftAddError as e:
        raise (e.in_file(study.path) if e.source is None else e) from None


def load_data(study: Study) -> "Splits":
    """The study's train / search / test splits, checked against its model."""
    dims = ModelDims.of(study.model)
    with in_study(study):
        return data.load(study.data, dims.img, dims.classes)


# ---- validate -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Validation:
    study: Study
    splits: "Splits"
    placement: "Placement"  # where training runs on this machine


def validate(study: Study) -> Validation:
    """Check what a study needs without running anything: its sampler and pruner arguments, its data, its teacher
    checkpoint or published weights file (when given) and its predictor file (when there is one)."""
    with in_study(study):
        create_sampler(study)  # their arguments are checked when built
        create_pruner(study)
        placement = training_placement(study)
        splits = load_data(study)
        if study.checkpoint is not None:
            load_teacher(study)  # the checkpoint reads and fits the model
        if isinstance(study.pretrained, Path):
            load_published(create_model(study.model), study.pretrained)  # the weights file reads and fits it
        if Path(study.latency.predictor).is_file():
            try:
                Predictor.load(study.latency.predictor, device=study.latency.device)  # fitted for this device
            except PredictorError as e:
                raise ConfigError("latency.predictor", str(e)) from None
    return Validation(study, splits, placement)


def training_placement(study: Study) -> "Placement":
    """Where the study trains on this machine: ``train.device`` and ``train.precision`` resolved; ``cuda`` on a
    machine without one is a :class:`ConfigError` here, before any work."""
    with in_study(study):
        return resolve(study.train.device, study.train.precision)


# ---- profile --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProfileOptions:
    """Overrides of the study's ``latency:`` section (None: the study's), and where kernels come from."""

    target: str | None = None
    device: str | None = None
    db: str | None = None
    trials: int | None = None  # MetaSchedule trials per kernel; 0: untuned default schedules
    batch_sizes: tuple[int, ...] | None = None
    kernel_cache: Path | None = None  # default: $SHIFTADD_CACHE (kernels.cache)
    rpc_tracker: str | None = None  # HOST:PORT: time the kernels on a remote device
    device_key: str | None = None  # that device's key at the tracker
    remeasure: str | None = None  # "noisy": re-time the marked rows and the whole models; "all": every row

    def settings(self, study: Study) -> "LatencySettings":
        """The study's latency settings with these overrides applied."""
        return study.latency_with(target=self.target, device=self.device, db=self.db, trials=self.trials,
                                  batch_sizes=self.batch_sizes)


def profile(study: Study, options: ProfileOptions = ProfileOptions(), *,
            on_start: Callable | None = None, on_done: Callable | None = None,
            on_noisy: Callable | None = None, on_wait: Callable[[], None] | None = None) -> "ProfileSummary":
    """Measure what the table lacks for the study's space (see :func:`latency_model.profile.profile`, whose
    callbacks these are). The table and the kernel cache are checked writable before any work. One profile of a
    table and device at a time on this machine (timings taken beside another profile would be noisy): another one
    is waited for (``on_wait()`` says so), then this one measures what that one left."""
    import hashlib

    from latency_model.profile import profile as measure_missing

    settings = options.settings(study)
    settings.check_runtime()
    ensure_database_writable(settings.db, "latency.db")  # a full disk or read-only folder: said before any work
    ensure_writable(options.kernel_cache or cache_dir(), "kernel cache (--cache, $SHIFTADD_CACHE)")
    key = hashlib.sha256(f"{settings.db}\0{settings.device}".encode()).hexdigest()[:16]
    with file_lock(lock_dir() / f"profile-{key}.lock", on_wait):
        return measure_missing(study.space, settings, kernel_root=options.kernel_cache, tracker=options.rpc_tracker,
                               device_key=options.device_key, remeasure=options.remeasure, on_start=on_start,
                               on_done=on_done, on_noisy=on_noisy)


# ---- fit-latency ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitOptions:
    """Overrides of the study's ``latency:`` section, and the fit's own settings."""

    db: str | None = None
    device: str | None = None
    out: Path | None = None  # the predictor file (default: the study's latency.predictor)
    holdout: float = 0.2  # share of shapes held out to score the op models
    seed: int = 0  # of that split
    max_model_error: float | None = None  # default: the study's latency.max_model_error
    allow_noisy: bool = False  # fit rows marked noisy (said in the file)


@dataclass
class FitResult:
    """A fit, written or refused. ``accuracy`` is the out-of-sample accuracy per op model (and of the whole
    models, :data:`latency_model.predictor.LOO`); ``refused`` says why nothing was written."""

    settings: "LatencySettings"
    out: Path
    rows: int
    predictor: "Predictor"
    accuracy: dict[str, "Accuracy"]
    max_model_error: float
    gate: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the file written; None when refused
    refused: "PredictorRefused | None" = None


def fit_latency(study: Study | None, options: FitOptions = FitOptions()) -> FitResult:
    """Fit the predictor on the latest measurements, check it out of sample, and only then write it. A check that
    fails writes nothing (``refused``); the previous file stays. Without a study, ``options`` must give the device
    and the output file."""
    from latency_model.profile import table_dispatch

    if study is not None:
        settings = study.latency_with(db=options.db, device=options.device)
        out = Path(options.out or settings.predictor)
        fix = f"nas profile {study.path} --remeasure"
    elif options.device and options.out:
        settings = LatencySettings(db=options.db or DEFAULT_URL, device=options.device)
        out = Path(options.out)
        fix = "nas profile STUDY --remeasure"
    else:
        raise ConfigError("study", "give a study file, or --device and --out (and --db unless the default)")
    max_error = options.max_model_error if options.max_model_error is not None else settings.max_model_error
    ensure_writable(out.parent, "latency.predictor" if study is not None else "--out", need_mb=1)
    engine = db.connect(settings.db)
    rows = db.latest(engine, settings.device)
    if not rows:
        known = ", ".join(db.devices(engine)) or "none"
        raise StateError("latency.device" if study is not None else "--device",
                         f"no measurements for device {settings.device!r} in {db.redact(settings.db)} "
                         f"(devices: {known}); run `nas profile` first", str(study.path) if study else None)
    models = db.model_rows(engine, settings.device)
    predictor, accuracy = Predictor.fit(rows, settings.device, holdout=options.holdout, seed=options.seed,
                                        meta=db.device_info(engine, settings.device), models=models)
    result = FitResult(settings, out, len(rows), predictor, accuracy, max_error)
    try:
        result.gate = check(rows, models, predictor.model_checks, max_error, fix, allow_noisy=options.allow_noisy)
    except PredictorRefused as e:
        result.refused = e
        return result
    predictor.meta["gate"] = result.gate
    # the kernel variant its module timings ran at each shape (kernels.dispatch), for the file's reader
    predictor.meta["kernel_variants"] = table_dispatch(engine, settings.device).to_dict()
    result.path = predictor.save(out)
    if study is not None:
        from .search.dashboard import publish_stored_study

        publish_stored_study(study)  # the study's note names the predictor and its accuracy
    return result


def needs_fit(study: Study, profiled: "ProfileSummary | None" = None) -> bool:
    """True when the study's predictor file is missing, unreadable, fitted for another device, older than
    measurements ``profiled`` just added, or cannot price some op of the study's space (a file fitted on another
    space's rows, while the table already holds this one's: the file is local state, the table is shared)."""
    if profiled is not None and profiled.measured:
        return True
    try:
        predictor = Predictor.load(study.latency.predictor, device=study.latency.device)
    except PredictorError:
        return True
    return not predictor.covers(study.space, study.latency.batch_sizes)


# ---- latency --------------------------------------------------------------------------------------------------------
MEASURE_ROUNDS = 3  # a measured latency: the model and the dense model timed in turn, this many times each


@dataclass(frozen=True)
class LatencyOptions:
    """What ``latency`` prices and measures: the study's latency settings with ``profile``'s overrides, a predictor
    file (default: the study's), and whether to time the model on the kernels too."""

    profile: ProfileOptions = ProfileOptions()
    predictor: str | None = None
    allow_other_device: bool = False
    measure: bool = False


@dataclass
class LatencyReport:
    """One architecture priced: its predicted latency (per block), measured too when asked (with the dense model of
    its shape timed in turn with it), and its energy under the study's energy model and the other."""

    config: ArchConfig
    batch: int
    device: str
    runtime: str
    prediction: "Prediction"
    measured_ms: float | None = None
    dense_ms: float | None = None  # the dense model timed in turn with it (None: not measured, or it is dense)
    predicted_dense_ms: float | None = None
    energy: "EnergyEstimate | None" = None
    energy_error: str | None = None  # why there is no energy estimate (a primitive that cannot be priced)
    energy_models: dict[str, float] = field(default_factory=dict)  # the total under each energy model that prices it

    @property
    def measured_vs_dense(self) -> float | None:
        return None if self.dense_ms is None else self.measured_ms / self.dense_ms

    @property
    def predicted_vs_dense(self) -> float | None:
        return None if self.predicted_dense_ms is None else self.prediction.total_ms / self.predicted_dense_ms


def latency(study: Study, config: ArchConfig, options: LatencyOptions = LatencyOptions()) -> LatencyReport:
    """Price ``config`` with the study's predictor at the first batch size; with ``options.measure``, also time it on
    the kernels the predictor was fitted on (each shape on its table's fastest variant, at the tuning the table was
    profiled with), in turn with the dense model of its shape, and price both at the routing its routers made."""
    settings = options.profile.settings(study)
    predictor = Predictor.load(options.predictor or settings.predictor, device=settings.device,
                               allow_other_device=options.allow_other_device)
    batch = settings.batch_sizes[0]
    report = LatencyReport(config, batch, predictor.device, settings.runtime, predictor.predict(config, batch))
    if options.measure:
        settings.check_runtime()
        loads, medians = _measure_with_dense(config, settings, batch, options.profile.trials,
                                             options.profile.kernel_cache)
        report.measured_ms = medians["model"]
        report.prediction = predictor.predict(config, batch, moe_loads=loads)  # at the split its routers made
        if "dense" in medians:
            report.dense_ms = medians["dense"]
            report.predicted_dense_ms = predictor.predict(ArchConfig.dense(config.model, config.depth), batch).total_ms
    try:
        report.energy = estimate(config, study.energy)
    except (ConfigError, NotImplementedError) as e:
        report.energy_error = str(e)
        return report
    report.energy_models[study.energy.model] = report.energy.total_uj
    for other in (m for m in MODELS if m != study.energy.model):
        try:
            report.energy_models[other] = estimate(config, EnergySettings.from_dict({"model": other})).total_uj
        except (ConfigError, NotImplementedError):
            pass
    return report


def _measure_with_dense(config: ArchConfig, settings: "LatencySettings", batch: int, trials: int | None,
                        kernel_cache: Path | None) -> tuple[dict, dict[str, float]]:
    """Median latency (ms) of ``config`` and of the dense model of its shape (``"model"``, ``"dense"``), timed in turn
    :data:`MEASURE_ROUNDS` times in one process (this machine's speed drifts between launches far more than the two
    models' ratio does), on kernels tuned with ``trials`` (default: as the table was profiled), and the MoE loads
    ``config``'s routers made."""
    import statistics

    from kernels.runtime import to_kernels
    from latency_model.profile import table_kernels, torch_device
    from latency_model.timing import time_model
    from search_spaces.families import ModelDims

    trials = profiled_trials(settings) if trials is None else trials
    kernels = table_kernels(settings, trials, kernel_root=kernel_cache)
    device = torch_device(kernels)
    img = ModelDims.of(config.model).img
    model = to_kernels(build_model(config), kernels)
    dense = ArchConfig.dense(config.model, config.depth)
    models = {"model": model} if config == dense else {"model": model, "dense": to_kernels(build_model(dense), kernels)}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(MEASURE_ROUNDS):
        for name, each in models.items():
            times[name].append(time_model(each, batch, img, repeats=settings.repeats, compiled=settings.compiled,
                                          device=device).median_ms)
    return router_loads(model), {name: statistics.median(values) for name, values in times.items()}


# ---- pretrain -------------------------------------------------------------------------------------------------------
def pretrain(study: Study, force: bool = False,
             on_epoch: Callable[[int, float, float], None] | None = None,
             on_wait: Callable[[], None] | None = None) -> "PretrainResult":
    """Train the dense teacher on the study's data (cached next to the study; ``force`` retrains).
    ``on_epoch(epoch, loss, search_accuracy)`` after each epoch; ``on_wait()`` when another process is training this
    teacher (this one waits for it, then uses its file)."""
    splits = load_data(study)
    return train_teacher(study, splits.train, splits.search, force=force, on_epoch=on_epoch, on_wait=on_wait)


def needs_pretrain(study: Study) -> bool:
    """True when the study names no checkpoint and its teacher file is missing or stale."""
    return study.checkpoint is None and not is_pretrained(study)


# ---- supernet -------------------------------------------------------------------------------------------------------
def supernet(study: Study, force: bool = False,
             on_step: Callable[[int, int, float], None] | None = None,
             on_wait: Callable[[], None] | None = None, start_from: Path | None = None) -> "SupernetResult":
    """Train the study's weight-sharing supernet (cached next to the study; a killed run resumes; ``force``
    retrains). Needs the teacher and the latency predictor (the cheapest subnet, the MoE expert latencies).
    ``start_from``: another supernet file whose weights a fresh run starts from (few-shot splitting).
    ``on_step(step, steps, loss)`` after each step; ``on_wait()`` when another process is training this supernet
    (this one waits for it, then uses its file). A supernet too large for this machine's memory is refused
    before anything is loaded."""
    with in_study(study):
        placement = training_placement(study)
        check_memory(study, placement)
        teacher = load_teacher(study)
        try:
            predictor = Predictor.load(study.latency.predictor, device=study.latency.device)
        except PredictorError as e:
            raise StateError("latency.predictor", f"{e}; run `nas fit-latency {study.path}` first") from None
        splits = load_data(study)
        return train(study, splits.train, teacher, predictor, force=force, on_step=on_step, placement=placement,
                     on_wait=on_wait, start_from=start_from)


def needs_supernet(study: Study) -> bool:
    """True when the study searches in supernet mode and its supernet file is missing, unfinished or stale."""
    if not study.evaluation.supernet:
        return False

    return not is_trained(study, load_teacher(study))


# ---- search ---------------------------------------------------------------------------------------------------------
def search(study: Study, backend: str = "optuna", options: SearchOptions = SearchOptions(),
           events: SearchEvents = SearchEvents()) -> SearchSummary:
    """Run (or continue) the study's search on ``backend`` (see :mod:`nas.search.driver`)."""
    driver = get_driver(backend)
    driver.check(study, options)
    return driver.run(study, options, events)


# ---- refine ---------------------------------------------------------------------------------------------------------
REFINE_BACKENDS = ("optuna", "ray")  # the search's backend names: worker processes here, or Ray tasks


@dataclass(frozen=True)
class RefineOptions:
    """Overrides of the study's ``refine:`` section (None: the study's) and where the jobs run: ``workers`` processes
    on this machine (backend ``optuna``, as the search's) or Ray tasks (``ray``, on a local Ray or the cluster at
    ``ray_address``, ``cpus_per_job`` and ``gpus_per_job`` each). ``measure``: time each refined architecture on
    this device once its jobs are done."""

    top: int | None = None
    seeds: int | None = None
    epochs: int | None = None
    workers: int = 1
    backend: str = "optuna"
    ray_address: str | None = None
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0
    measure: bool = True

    def settings(self, study: Study) -> dict[str, int]:
        """``{top, seeds, epochs}``: these options over the study's ``refine:`` section."""
        r = study.refine
        values = {"top": self.top if self.top is not None else r.top,
                  "seeds": self.seeds if self.seeds is not None else r.seeds,
                  "epochs": self.epochs or r.epochs or study.budget.finetune_epochs}
        for key, value in values.items():
            if not isinstance(value, int) or value < (0 if key == "top" else 1):
                raise ConfigError(f"--{key}", f"expected a {'non-negative' if key == 'top' else 'positive'} "
                                              f"integer, got {value!r}")
        if self.backend not in REFINE_BACKENDS:
            raise ConfigError("--backend", f"expected one of {', '.join(REFINE_BACKENDS)}, got {self.backend!r}")
        if self.ray_address and self.backend != "ray":
            raise ConfigError("--ray-address", "only with --backend ray")
        if self.workers < 1:
            raise ConfigError("--workers", f"expected a positive integer, got {self.workers}")
        return values


@dataclass
class RefineResult:
    """A refine: its settings, its jobs (planned, and finished by this run), the refined points and front, and how
    well the search's proxy ordered them."""

    settings: dict[str, int]
    jobs: int
    ran: int
    points: list["Refined"]
    front: list["Refined"]
    trust: "Trust"
    seconds: float


def refine(study: Study, options: RefineOptions = RefineOptions(),
           on_progress: Callable[["JobCounts"], None] | None = None,
           on_measure: Callable[[str], None] | None = None) -> RefineResult:
    """Fine-tune the search front's ``top`` candidates and the dense reference for real, ``seeds`` seeds each (see
    :mod:`nas.search.refine`): the jobs no earlier run finished, on ``options.workers`` workers; then time each
    refined architecture on this device (``on_measure(label)`` before each). ``on_progress(counts)`` as jobs end."""
    import time

    settings = options.settings(study)
    if options.measure:
        study.latency.check_runtime()  # said before the training, not after it
    started = time.perf_counter()
    with in_study(study):
        ostudy = open_study(study, create=False)
        jobs = jobs_of.plan(study, ostudy, **settings)
        if not jobs:
            raise StateError("name", f"study {study.name!r} has no complete trial to refine; run the search first")
        rstudy = open_refine_study(study, heartbeat=True)  # heartbeats: dead workers' jobs queued again
        assert rstudy is not None
        rstudy.set_user_attr(SETTINGS, settings)
        jobs_of.enqueue(study, rstudy, jobs)
        before = jobs_of.job_counts(rstudy, jobs).done
        if before < len(jobs):
            if options.backend == "ray":
                jobs_of.run_ray(study, jobs, options.workers, options.ray_address, options.cpus_per_job,
                                options.gpus_per_job, on_progress)
            else:
                training_placement(study)  # a device this machine lacks: said before any worker starts
                jobs_of.run_local(study, jobs, options.workers, on_progress)
        counts = jobs_of.job_counts(rstudy, jobs)
        if on_progress is not None:
            on_progress(counts)  # also when every job was done before: the caller's view shows it
        if counts.done < len(jobs):
            failed = f"; {counts.failed[0][0]}: {counts.failed[0][1]}" if counts.failed else ""
            raise StateError("refine", f"{len(jobs) - counts.done} of {len(jobs)} refine jobs did not finish"
                                       f"{failed}. Run the same command again to train the rest (a job whose "
                                       f"worker died is queued again once its heartbeat is "
                                       f"{2 * study.search.heartbeat_s} s old)")
        points = refined_points(ostudy, rstudy)
        if options.measure:
            _measure_refined(study, rstudy, points, on_measure)
            points = refined_points(ostudy, rstudy)

    publish_study(study, ostudy)  # the note shows the refined front
    return RefineResult(settings, len(jobs), counts.done - before, points,
                        refined_front(points, front_metrics(ostudy)), trust(points), time.perf_counter() - started)


def _measure_refined(study: Study, rstudy, points: list["Refined"],
                     on_measure: Callable[[str], None] | None) -> None:
    """Each refined architecture timed on this device with its first seed's weights (when they are on this
    machine), once: stored on the refine's study."""
    teacher = None
    for p in points:
        if p.measured_ms is not None or not p.weights or not Path(p.weights[0]).is_file():
            continue
        if on_measure is not None:
            on_measure(p.label)
        teacher = teacher if teacher is not None else load_teacher(study)
        model = load_weights(build_model(p.config, teacher), p.weights[0], "weights").eval()
        rstudy.set_user_attr(f"{attr.MEASURED_PREFIX}{p.config.id}", round(measure_latency(study, model), 4))


def stored_refinement(study: Study, ostudy) -> list["Refined"]:
    """The study's refined points, empty where it has not been refined."""
    return refined_points(ostudy, open_refine_study(study, create=False))


# ---- report, export, finetune ---------------------------------------------------------------------------------------
def report_folder(study: Study) -> Path:
    return study.folder / "runs" / study.name


def report(study: Study, out: Path | None = None, on_test: Callable[[int], None] | None = None) -> "Report":
    """The Pareto plot, the allocation chart and the CSV of the study's trials, in ``out`` (default:
    ``<study folder>/runs/<name>/report``). The front's and the reference trials' test accuracy is evaluated first
    where their trials did not (supernet mode, :func:`nas.search.objective.score_test_split`; ``on_test(trial number)``
    before each)."""
    out = ensure_writable(out or report_folder(study) / "report", "--out", need_mb=1)
    ostudy = open_study(study, create=False)
    untested = ""
    try:
        score_test_split(study, ostudy, shown_trials(ostudy), on_test)
    except StateError as e:  # the supernet is gone or stale: the report still shows what the trials stored
        untested = str(e)
    title = f"{study.name}: {study.model.name} on {study.data.source}, {study.latency.device}"
    written = write_report(ostudy, out, title, where_it_pays(study))
    written.untested = untested
    refined = stored_refinement(study, ostudy)
    if refined:
        from .search.refined import refined_front, trust, write_refined

        written.refined, written.refined_front = refined, refined_front(refined, written.metrics)
        written.trust = trust(refined)
        written.files += write_refined(refined, written.refined_front, out, title)
    replace_study_artifacts(ostudy, artifact_store(artifact_location(study)), written.files)
    publish_study(study, ostudy)
    return written


def export(study: Study, which: str, out: Path) -> list[Path]:
    """Write the ArchConfig files of the chosen trials (``best``, ``pareto`` or a trial number) into ``out``;
    ``best`` and ``pareto`` from the refined front when the study was refined."""
    ostudy = open_study(study, create=False)
    return write_configs(study, ostudy, which, out, stored_refinement(study, ostudy))


@dataclass(frozen=True)
class FinetuneJob:
    """What ``nas finetune`` will train: the architecture, the study it comes from, and for how many epochs."""

    config: "ArchConfig"
    origin: dict[str, Any]  # the export's provenance (empty for a plain ArchConfig file)
    study: Study
    epochs: int
    initial: Path | None = None  # the weights a supernet-mode export wrote next to the config: training starts there

    @classmethod
    def of(cls, config_file: Path, study_file: Path | None = None, epochs: int | None = None,
           device: str | None = None) -> "FinetuneJob":
        """An exported (or plain) ArchConfig file; the study is the one the export names unless ``study_file`` is
        given, ``epochs`` defaults to its ``budget.finetune_epochs``, ``device`` (``--device``) overrides its
        ``train.device``."""
        study_file = study_file or named_study(config_file)
        # the study first: its plugins register primitives the config may name
        study = Study.load(study_file).on_device(device) if study_file else None
        config, origin = read_export(config_file)
        if study is None:
            raise ConfigError("provenance.study_file", "this config names no study; give --study STUDY.yaml",
                              str(config_file))
        initial = None
        if origin.get("weights"):
            initial = Path(config_file).parent / str(origin["weights"])
            if not initial.is_file():
                raise ConfigError("provenance.weights", f"the inherited weights {initial} are missing (export the "
                                                        "trial again, or delete the key to start from the teacher)",
                                  str(config_file))
        return cls(config, origin, study, epochs or study.budget.finetune_epochs, initial)


def finetune(job: FinetuneJob, out: Path, measure: bool = True,
             on_epoch: Callable[[int, float], None] | None = None) -> "FinetuneResult":
    """Fine-tune the job's architecture from the teacher and score it on the test split, writing the weights, the
    config and ``result.json`` into ``out``; with ``measure``, time it on the kernels."""
    if measure:
        job.study.latency.check_runtime()  # said before the training, not after it
    result = train_config(job.study, job.config, job.epochs, out, measure=measure, origin=job.origin,
                          on_epoch=on_epoch, initial=job.initial)
    trial = job.origin.get("trial")
    if job.origin.get("study") == job.study.name and isinstance(trial, int):
        note_finetune(job.study, trial, {"epochs": job.epochs, attr.TEST_ACCURACY: result.test_accuracy,
                                         attr.TEST_SE: result.test_se, "measured_ms": result.measured_ms})
    return result


# ---- run ------------------------------------------------------------------------------------------------------------
def preflight(study: Study, out: Path) -> None:
    """Every place ``nas run``'s steps write to, checked before the first: not a full disk found at step 4."""
    training_placement(study)  # a device this machine does not have: said before step 1
    settings = study.latency
    settings.check_runtime()
    ensure_database_writable(settings.db, "latency.db")
    ensure_writable(Path(settings.predictor).parent, "latency.predictor", need_mb=1)
    if study.checkpoint is None:  # pretrain writes the teacher next to the study
        ensure_writable(study.teacher_path.parent, "model.checkpoint")
    if study.evaluation.supernet:  # and the supernet, which must fit in memory
        ensure_writable(study.supernet_path.parent, "evaluation.mode")
        from .training.supernet_trainer import check_memory

        check_memory(study, training_placement(study))
    ensure_database_writable(study.storage, "storage")
    ensure_writable(out, "--out")


# ---- run: every step, in order --------------------------------------------------------------------------------------
RUN_STEPS = ("profile", "fit-latency", "pretrain", "supernet", "search", "refine", "report", "export")


@dataclass(frozen=True)
class RunOptions:
    """What :func:`run` takes besides the study: the search backend and its options, the profile's tuning trials per
    kernel (None: the study's ``latency.trials``), the folder of the report and the exported best trial (None:
    :func:`report_folder`) and whether to refine the front (the study's ``refine:`` section, on the search's
    backend and workers; ``refine.top: 0`` in the study skips it too)."""

    backend: str = "optuna"
    search: SearchOptions = field(default_factory=SearchOptions)
    kernel_trials: int | None = None
    out: Path | None = None
    refine: bool = True

    def refine_options(self) -> RefineOptions:
        """The refine's options: the search's backend, workers, cluster and resources per job."""
        s = self.search
        return RefineOptions(workers=s.workers, backend=self.backend, ray_address=s.ray_address,
                             cpus_per_job=s.cpus_per_trial, gpus_per_job=s.gpus_per_trial)


@dataclass(frozen=True)
class RunStep:
    """A step of :func:`run` as it starts: its number of :attr:`total` (pretrain and supernet share one), its name
    (one of :data:`RUN_STEPS`) and whether it does work (False: up to date, ``cached`` names the file it uses or
    says why it is skipped)."""

    number: int
    name: str
    runs: bool
    cached: str = ""
    total: int = 7


class RunEvents:
    """What :func:`run` tells as it goes; every method is a no-op here (``nas run`` subclasses it to draw progress
    bars and print each result). :meth:`step` returns the context a step's work runs in."""

    def step(self, step: RunStep) -> AbstractContextManager[Any]:
        return nullcontext()

    def result(self, step: RunStep, result: Any) -> None:
        """A step's result value (what its own function returns)."""

    def waiting(self, step: str) -> None:
        """Another process holds what this step writes (the table, the teacher, the supernet): waiting for it."""

    def profile_started(self, job: Any, index: int, total: int) -> None: ...

    def profile_done(self, job: Any, seconds: float) -> None: ...

    def profile_noisy(self, job: Any, timing: Any, attempt: int) -> None: ...

    def pretrain_epoch(self, epoch: int, loss: float, accuracy: float) -> None: ...

    def supernet_step(self, step: int, steps: int, loss: float) -> None: ...

    def refine_progress(self, counts: "JobCounts") -> None:
        """The refine's jobs by state, as they end."""

    def refine_measure(self, label: str) -> None:
        """A refined architecture is being timed on this device."""

    def search_events(self) -> SearchEvents:
        return SearchEvents()

    def test_split(self, trial_number: int) -> None:
        """A supernet-mode trial of the front has its test split evaluated (the report needs it)."""


@dataclass
class RunResult:
    """What :func:`run` did: each step's result (None where it did no work or the run stopped before it), the
    report, the exported best trial's file, the seconds it took, and why it stopped early (None: it did not)."""

    out: Path
    profiled: "ProfileSummary | None" = None
    fitted: "FitResult | None" = None
    pretrained: "PretrainResult | None" = None
    supernet: "SupernetResult | None" = None
    searched: SearchSummary | None = None
    refined: RefineResult | None = None
    report: "Report | None" = None
    best: Path | None = None
    seconds: float = 0.0
    stopped: str | None = None


def run(study: Study, options: RunOptions = RunOptions(), events: RunEvents = RunEvents()) -> RunResult:
    """Every step of a search, each skipped when done: profile (what the table lacks) -> fit-latency (when the table
    changed) -> pretrain (no teacher yet) [-> supernet, in supernet mode] -> search -> refine (the jobs not yet
    trained) -> report -> export the best trial (of the refined front when refined). Every place a step writes to is checked before the first (:func:`preflight`). The run stops before the
    search, with :attr:`RunResult.stopped` saying why, when the profile left noisy timings or the predictor failed
    its check: a search priced by either optimises a number no machine produces."""
    import time

    driver = get_driver(options.backend)
    driver.check(study, options.search)  # a flag the backend refuses: said before step 1
    started = time.perf_counter()
    done = RunResult(out=options.out or report_folder(study))
    preflight(study, done.out)

    def finish(stopped: str | None = None) -> RunResult:
        done.seconds, done.stopped = time.perf_counter() - started, stopped
        return done

    # profiling what the table already holds is a quick no-op, and it catches a space with shapes the table lacks
    # (another study's predictor file in the same folder, shapes that failed last time)
    step = RunStep(1, "profile", True)
    with events.step(step):
        done.profiled = profile(study, ProfileOptions(trials=options.kernel_trials), on_start=events.profile_started,
                                on_done=events.profile_done, on_noisy=events.profile_noisy,
                                on_wait=lambda: events.waiting("profile"))
    events.result(step, done.profiled)
    if done.profiled.noisy:
        return finish("a search priced by noisy timings optimises a number no machine produces")

    step = RunStep(2, "fit-latency", needs_fit(study, done.profiled), cached=study.latency.predictor)
    with events.step(step):
        if step.runs:
            done.fitted = fit_latency(study, FitOptions())
    if done.fitted is not None:
        events.result(step, done.fitted)
        if done.fitted.refused is not None:
            return finish("the predictor did not pass its check")

    step = RunStep(3, "pretrain", needs_pretrain(study), cached=str(study.teacher_path))
    with events.step(step):
        if step.runs:
            done.pretrained = pretrain(study, on_epoch=events.pretrain_epoch,
                                       on_wait=lambda: events.waiting("pretrain"))
    if done.pretrained is not None:
        events.result(step, done.pretrained)

    if study.evaluation.supernet:
        step = RunStep(3, "supernet", needs_supernet(study), cached=str(study.supernet_path))
        with events.step(step):
            if step.runs:
                done.supernet = supernet(study, on_step=events.supernet_step,
                                         on_wait=lambda: events.waiting("supernet"))
        if done.supernet is not None:
            events.result(step, done.supernet)

    step = RunStep(4, "search", True)
    with events.step(step):
        done.searched = driver.run(study, options.search, events.search_events())
    events.result(step, done.searched)

    step = RunStep(5, "refine", options.refine and study.refine.top > 0,
                   cached="skipped: " + ("refine.top is 0" if options.refine else "--no-refine"))
    with events.step(step):
        if step.runs:
            done.refined = refine(study, options.refine_options(), on_progress=events.refine_progress,
                                  on_measure=events.refine_measure)
    if done.refined is not None:
        events.result(step, done.refined)

    step = RunStep(6, "report", True)
    with events.step(step):
        done.report = report(study, done.out / "report", on_test=events.test_split)
    events.result(step, done.report)

    step = RunStep(7, "export", True)
    with events.step(step):
        done.best = export(study, "best", done.out / "best")[0]
    events.result(step, done.best)
    return finish()
