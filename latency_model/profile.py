"""``nas profile``: measure every op and kernel shape a study's search space can produce, once.

Kernel tasks (TVM) are tuned through the cache and timed; module ops (:mod:`latency_model.decomposition`) are timed as the
modules run here; a few whole models (``calibration`` per batch size, drawn with a fixed seed) are timed so the
predictor can learn how module times compose when run back to back, and (eager) each block's attention and MLP is
timed inside them, so each choice is priced as a model runs it. Everything already in the table for this device
is skipped, every measurement is committed as soon as it is taken (an interrupted profile keeps what it measured),
and a failure on one shape is reported and skipped so the others still get measured.

Noise: every timing records its spread and the share of the CPU other processes took meanwhile
(:class:`kernels.measure.CpuContention`). A noisy timing (``latency.max_spread`` / ``max_contention``) is taken again
up to ``latency.retimes`` times, a pause between tries; the best try is stored, marked ``noisy`` if none was clean.
``remeasure="noisy"`` re-times the rows marked noisy (and the whole models), ``"all"`` everything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.exc import SQLAlchemyError

from kernels import target as targets
from kernels.dispatch import Dispatch
from kernels.measure import CpuContention, Timing, measure, time_kernel, time_prebuilt, time_remote
from kernels.prebuilt import PrebuiltKernels
from kernels.runtime import KernelSet, to_kernels
from kernels.spec import KernelSpec
from kernels.tuning import task_dir
from search_spaces import ArchConfig, SearchSpace, build_model
from search_spaces.config import BlockConfig
from search_spaces.registry import get as primitive

from . import db
from .decomposition import ModelDims, Op, kernel_tasks, space_ops
from .keys import KERNEL_PREFIX, is_kernel_op, kernel_op, kernel_shape, measurement_key, model_key
from .predictor import router_loads
from .settings import LatencySettings
from .timing import time_model, time_op, time_parts


@dataclass(frozen=True)
class Calibration:
    """A whole model to time: how the ops of one architecture compose when run back to back."""

    config: ArchConfig
    batch: int


@dataclass
class Job:
    """One thing to measure: a kernel task, a module op or a whole model."""

    item: KernelSpec | Op | Calibration

    @property
    def label(self) -> str:
        if isinstance(self.item, Calibration):
            return f"model {self.item.config.id} at batch {self.item.batch}"
        if isinstance(self.item, KernelSpec):
            return self.item.key
        dims = ",".join(f"{k}={v}" for k, v in self.item.shape)
        return f"{self.item.op}[{self.item.variant}]({dims})"

    @property
    def row_key(self) -> tuple:
        if isinstance(self.item, Calibration):
            return model_key(self.item.config.to_json(), self.item.batch)
        if isinstance(self.item, KernelSpec):
            s = self.item
            return measurement_key(kernel_op(s.kernel), s.variant, kernel_shape(s), s.dtype)
        return measurement_key(self.item.op, self.item.variant, self.item.dims, self.item.dtype)


@dataclass
class Summary:
    measured: list[str] = field(default_factory=list)
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    retimed: list[str] = field(default_factory=list)  # noisy at first, taken again
    noisy: list[tuple[str, Timing]] = field(default_factory=list)  # still noisy after every try: marked in the table
    start_contention: float = 0.0  # share of the CPU other processes used just before the profile started
    load_average: float = 0.0
    dispatch: str = ""  # which variant each dispatched kernel runs at how many shapes (Dispatch.describe)
    first_calls_s: float = 0.0  # the first call of every module and model timed: in the compiled runtime, compiling


REMEASURE = ("noisy", "all")
RETIME_PAUSE_S = 1.0  # between tries of a noisy timing: a burst of other work may be over


def competition(sample_s: float = 0.5) -> tuple[float, float]:
    """(share of the CPU other processes use now, 1-minute load average): is the machine quiet enough to time?"""
    with CpuContention() as contention:
        time.sleep(sample_s)
    return contention.share, os.getloadavg()[0]


def plan(space: SearchSpace, settings: LatencySettings, modules: bool = True) -> list[Job]:
    """Every job of the space, kernels first (tuning) so module timings find their kernels cached."""
    jobs = [Job(spec) for spec in kernel_tasks(space, settings.batch_sizes, every_candidate=True)]
    if modules:
        jobs += [Job(op) for op in space_ops(space, settings.batch_sizes)]
        configs = calibration_configs(space, settings.calibration)
        jobs += [Job(Calibration(c, b)) for b in settings.batch_sizes for c in configs]
    return jobs


def _in_torch(slot: str, options: tuple[str, ...], current: str) -> str:
    """The first option of a slot that runs in torch and needs no settings of its own, else ``current``."""
    return next((o for o in options if not (primitive(slot, o).on_kernels or primitive(slot, o).routed)), current)


def calibration_configs(space: SearchSpace, count: int, seed: int = 0) -> list[ArchConfig]:
    """Whole models for the composition calibration, spread over 0..depth blocks on the kernels (the fewest first),
    so the fit can tell its per-kernel-block cost from its constant; architectures drawn uniformly nearly all have
    every block on the kernels, and the all-dense model would then be an extrapolation. Fixed seed: the same models
    every run, so a re-run skips them."""
    rng = np.random.default_rng(seed)
    configs: list[ArchConfig] = []
    for _ in range(100 * count):
        if len(configs) == count:
            break
        config = space.sample(rng)
        target = len(configs) % (space.depth + 1)  # blocks to leave on the kernels
        blocks = list(config.blocks)
        for j in rng.permutation(space.depth):
            if sum(b.on_kernels for b in blocks) <= target:
                break
            if blocks[j].on_kernels:
                choices, block = space.blocks[j], blocks[j]
                mlp = _in_torch("mlp", choices.mlp, block.mlp)
                attention = _in_torch("attention", choices.attention, block.attention)
                blocks[j] = BlockConfig(attention, _in_torch("linear", choices.qkv, block.qkv),
                                        _in_torch("linear", choices.proj, block.proj), mlp,
                                        block.moe if mlp == block.mlp else None,
                                        block.binarize if attention == block.attention else None)
        candidate = ArchConfig(config.model, tuple(blocks))
        if candidate in configs:  # a small space has few ways to leave blocks off the kernels: take the draw
            candidate = config
        if candidate not in configs:
            configs.append(candidate)
    return configs


def profile(
    space: SearchSpace,
    settings: LatencySettings,
    *,
    kernel_root: Path | None = None,
    tracker: str | None = None,
    device_key: str | None = None,
    remeasure: str | None = None,
    on_start: Callable[[Job, int, int], None] | None = None,
    on_done: Callable[[Job, float], None] | None = None,
    on_noisy: Callable[[Job, Timing, int], None] | None = None,
) -> Summary:
    """Measure what is missing for ``settings.device``. With an RPC tracker, only kernels are measured (module
    timings need torch on the device). ``remeasure``: ``"noisy"`` also re-times the rows marked noisy and the whole
    models, ``"all"`` every row. ``on_noisy(job, timing, attempt)`` hears of each noisy try."""
    if remeasure not in (None, *REMEASURE):
        raise ValueError(f"remeasure must be one of {REMEASURE} or None, got {remeasure!r}")
    kernels = kernel_set(settings, kernel_root=kernel_root)
    described = kernels.prebuilt.manifest.target if kernels.prebuilt else targets.describe(kernels.target)
    if described.get("kind") == "cuda":  # which GPU the rows were timed on, beside the target
        described = {**described, "gpu": gpu_description()}
    engine = db.connect(settings.db)
    device_id = db.get_or_create_device(engine, settings.device, described, **db.host_description())
    done = db.measured_keys(engine, settings.device) | {
        ("model", row.config, row.batch) for row in db.model_rows(engine, settings.device)}
    if remeasure == "all":
        done = set()
    elif remeasure == "noisy":
        done = {key for key in done if key[0] != "model"} - db.noisy_keys(engine, settings.device)
    remote = tracker is not None
    jobs = plan(space, settings, modules=not remote)
    if kernels.prebuilt is not None:
        kernels.prebuilt.require(job.item for job in jobs if isinstance(job.item, KernelSpec))
    todo = [job for job in jobs if job.row_key not in done]
    summary = Summary(skipped=len(jobs) - len(todo))
    if todo:  # a profile with nothing to measure has no timing to worry about
        summary.start_contention, summary.load_average = competition()
    torch.set_num_threads(max(1, targets.cpu_threads()))
    start = time.perf_counter()
    for index, job in enumerate(todo):
        if not isinstance(job.item, KernelSpec) and not kernels.dispatch:
            # the kernels are timed first: modules and whole models run the variant that measured fastest
            kernels.dispatch = table_dispatch(engine, settings.device)
        if on_start:
            on_start(job, index, len(todo))
        job_start = time.perf_counter()
        try:
            _measure(job, space, settings, engine, device_id, kernels, kernel_root, tracker, device_key, summary,
                     on_noisy)
            summary.measured.append(job.label)
        except Exception as e:  # one shape's failure must not stop the profile; it is reported and recorded
            reason = f"{type(e).__name__}: {e}"
            summary.failed.append((job.label, reason))
            try:
                db.add_failure(engine, device_id, job.label, reason[:4000], settings.trials)
            except SQLAlchemyError as write_error:  # the table itself takes no writes (disk full, read-only)
                raise db.LatencyDBError(
                    "latency.db",
                    f"cannot write to the measurement table {db.redact(settings.db)} "
                    f"({type(write_error).__name__}: {str(write_error).splitlines()[0]}); stopped after "
                    f"{len(summary.measured)} new measurement(s), which are kept; the failed job was {job.label}: "
                    f"{reason[:300]}") from None
        if on_done:
            on_done(job, time.perf_counter() - job_start)
    summary.seconds = time.perf_counter() - start
    summary.dispatch = table_dispatch(engine, settings.device).describe()
    return summary


def table_dispatch(engine, device: str) -> Dispatch:
    """Per kernel shape, the variant that measured fastest in ``device``'s kernel rows (noisy rows left out)."""
    rows = db.latest(engine, device)
    return Dispatch.from_timings(
        (r.op.removeprefix(KERNEL_PREFIX), r.variant, r.shape["M"], r.shape["K"], r.shape["N"], r.dtype, r.median_ms)
        for r in rows if is_kernel_op(r.op) and "B" not in r.shape and not r.noisy)


def kernel_set(settings: LatencySettings, trials: int | None = None, kernel_root: Path | None = None,
               dispatch: Dispatch | None = None) -> KernelSet:
    """The study's kernels: from its ``latency.prebuilt`` library (the TVM runtime alone), else compiled for its
    target, tuned with ``trials`` (default: the study's)."""
    if settings.prebuilt:
        return KernelSet(prebuilt=PrebuiltKernels.load(Path(settings.prebuilt)), dispatch=dispatch)
    return KernelSet(settings.target, settings.trials if trials is None else trials, kernel_root, dispatch=dispatch)


def table_kernels(settings: LatencySettings, trials: int | None = None, kernel_root: Path | None = None) -> KernelSet:
    """The kernels a study's models run on (:func:`kernel_set`), each shape on the variant its measurement table
    found fastest (:func:`table_dispatch`): the models its predictor priced."""
    return kernel_set(settings, trials, kernel_root, table_dispatch(db.connect(settings.db), settings.device))


def torch_device(kernels: KernelSet) -> torch.device:
    """Where the models that run on ``kernels`` run: the GPU for CUDA kernels, else the CPU."""
    kind = kernels.prebuilt.manifest.kind if kernels.prebuilt else kernels.target.kind.name
    return torch.device("cuda" if kind == "cuda" else "cpu")


def gpu_description() -> dict[str, object]:
    """The first CUDA GPU: name, memory, compute capability, driver and clocks (``nvidia-smi``, where installed)."""

    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    described: dict[str, object] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                                    "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    if shutil.which("nvidia-smi"):
        query = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
        try:
            out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader", "-i", "0"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            described.update(zip(query.split(","), (v.strip() for v in out.split(","))))
        except (OSError, subprocess.SubprocessError):
            pass
    return described


def _timed(job: Job, space, settings, kernels: KernelSet, kernel_root, tracker, device_key, summary: Summary):
    """The first timing of a job and a function that takes it again, plus what the row records besides."""

    def first_call(seconds: float) -> None:
        summary.first_calls_s += seconds

    device = torch_device(kernels)
    if isinstance(job.item, Calibration):
        model = to_kernels(build_model(job.item.config), kernels).to(device)
        dense = to_kernels(build_model(ArchConfig.dense(space.model, space.depth)), kernels).to(device)
        img = ModelDims.of(space.model).img
        references: dict[int, float] = {}  # id of a timing -> the dense model's time around it

        def timed(each) -> Timing:
            return time_model(each, job.item.batch, img, repeats=settings.repeats, compiled=settings.compiled,
                              on_first_call=first_call, device=device)

        def again() -> Timing:  # the dense model before and after: the machine's speed while the model ran
            before, timing, after = timed(dense), timed(model), timed(dense)
            references[id(timing)] = (before.median_ms + after.median_ms) / 2
            return timing

        def parts() -> dict[str, float] | None:  # eager on the CPU only: a compiled block runs as one graph, and
            if settings.compiled or device.type != "cpu":  # a GPU's parts run after the host's hooks return
                return None
            return time_parts(model, job.item.batch, img, forwards=3 * settings.repeats)

        return again(), again, {"moe_routing": {b: load.to_json() for b, load in router_loads(model).items()},
                                "references": references, "parts": parts}
    if isinstance(job.item, KernelSpec) and kernels.prebuilt is not None:
        def again() -> Timing:
            return time_prebuilt(kernels.prebuilt, job.item, settings.repeats)

        return again(), again, {"tuned": False, "trials": 0, "tuning_record": str(kernels.prebuilt.folder)}
    if isinstance(job.item, KernelSpec):
        kernel, timing = measure(job.item, kernels.target, settings.trials, settings.repeats, tracker, device_key,
                                 root=kernel_root)

        def again() -> Timing:
            if tracker is not None:
                return time_remote(kernel, tracker, device_key, settings.repeats)
            return time_kernel(kernel, settings.repeats)

        record = str(task_dir(job.item, kernels.target, kernel_root))
        return timing, again, {"tuned": kernel.tuned, "trials": kernel.trials, "tuning_record": record}

    def again() -> Timing:
        return time_op(job.item, space.model, kernels, repeats=settings.repeats, compiled=settings.compiled,
                       on_first_call=first_call, device=device)

    return again(), again, {"tuned": settings.trials > 0, "trials": settings.trials}


def _measure(job: Job, space, settings, engine, device_id, kernels: KernelSet, kernel_root, tracker, device_key,
             summary: Summary, on_noisy=None) -> None:
    timing, again, extra = _timed(job, space, settings, kernels, kernel_root, tracker, device_key, summary)
    attempts = 1
    while settings.is_noisy(timing) and attempts <= settings.retimes:
        if on_noisy:
            on_noisy(job, timing, attempts)
        if attempts == 1:
            summary.retimed.append(job.label)
        time.sleep(RETIME_PAUSE_S)
        retry = again()
        attempts += 1
        # keep a clean try if there is one, else the fastest (the least disturbed)
        timing = min(timing, retry, key=lambda t: (settings.is_noisy(t), t.median_ms))
    noisy = settings.is_noisy(timing)
    if noisy:
        if on_noisy:
            on_noisy(job, timing, attempts)
        summary.noisy.append((job.label, timing))
    if isinstance(job.item, Calibration):
        db.add_model_measurement(engine, device_id, job.item.config.to_json(), job.item.batch, extra["moe_routing"],
                                 timing, attempts=attempts, noisy=noisy,
                                 reference_ms=extra["references"].get(id(timing)), parts_ms=extra["parts"]())
        return
    op, variant, shape_text, dtype = job.row_key
    db.add_measurement(engine, device_id, op, variant, json.loads(shape_text), dtype=dtype, timing=timing,
                       attempts=attempts, noisy=noisy, **extra)
