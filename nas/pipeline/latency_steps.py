"""The latency steps: profile the kernels and modules into the measurement table, fit the predictor on it, and
price (and measure) one architecture as ``nas latency`` does."""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernels.cache import cache_dir, file_lock, lock_dir
from kernels.runtime import to_kernels
from latency_model import db
from latency_model.db import DEFAULT_URL
from latency_model.decomposition import ModelDims
from latency_model.energy import MODELS, EnergySettings, estimate
from latency_model.gate import PredictorRefused, check
from latency_model.predictor import Predictor, PredictorError, router_loads
from latency_model.profile import profile as measure_missing
from latency_model.profile import table_dispatch, table_kernels, torch_device
from latency_model.settings import LatencySettings
from latency_model.timing import time_model
from search_spaces import ArchConfig, build_model
from search_spaces.errors import ConfigError, StateError

from ..disk import ensure_database_writable, ensure_writable
from ..search.dashboard import publish_stored_study
from ..study import Study
from ..study_latency import profiled_trials

if TYPE_CHECKING:
    from latency_model.energy import EnergyEstimate
    from latency_model.prediction import Accuracy, Prediction
    from latency_model.profile import Summary as ProfileSummary



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
