"""Tune once, cache forever: MetaSchedule tuning of one kernel task per (kernel, variant, shape, dtype, target).

Cache layout, under ``cache_dir()`` (``$SHIFTADD_CACHE`` or ``~/.cache/shiftadd-nas/tvm``)::

    <target fingerprint>/target.json            the target these kernels were compiled for
    <target fingerprint>/<task key>/tuning/     MetaSchedule's JSON database (workloads + tuning records) and logs
    <target fingerprint>/<task key>/kernel.so   the compiled library
    <target fingerprint>/<task key>/meta.json   written last: trials, tuned or not, tuning time, library checksum,
                                                and the schedule compiled (MetaSchedule's best, or a variant's
                                                hand-written one where that timed faster here; untuned: "default")

``meta.json`` is the commit marker: an entry without it, or whose library checksum does not match, was interrupted or
corrupted and is rebuilt (from the tuning database when that still loads, else by tuning again), never loaded; so is
one built from other code (its ``source`` fingerprint differs: a kernel definition or schedule changed since).
A second request for a task that is cached with at least as many trials loads the library and touches nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import target as targets
from .arguments import random_arguments
from .cache import cache_dir, file_lock, file_sha256
from .lazy import lazy_import
from .spec import KernelError, KernelResourceError, KernelSpec
from .tvm_import import import_tensor_intrinsics

tvm = lazy_import("tvm")
ms = lazy_import("tvm.s_tir.meta_schedule")
dlight = lazy_import("tvm.s_tir.dlight")
ir_utils = lazy_import("tvm.ir.utils")

DEFAULT_TRIALS = 64
log = logging.getLogger(__name__)


@dataclass
class CompiledKernel:
    """A compiled kernel, loaded and callable: ``kernel(*args)`` with TVM tensors or torch tensors (DLPack)."""

    spec: KernelSpec
    target: tvm.target.Target
    module: Any  # tvm.runtime.Module
    tuned: bool
    trials: int
    library: Path | None
    cache_hit: bool
    tuning_seconds: float = 0.0

    @property
    def function(self):
        return self.module["main"]

    def __call__(self, *args) -> None:
        try:
            self.function(*args)
        except (ValueError, TypeError) as e:  # TVM checks every argument; its message names the one at fault
            expected = ", ".join(f"{name}{list(shape)} {dtype}" for name, shape, dtype in self.spec.args())
            raise KernelError("arguments", f"kernel {self.spec.key} takes ({expected}): {str(e).splitlines()[0]}") from None


@dataclass(frozen=True)
class _Meta:
    trials: int
    tuned: bool
    tuning_seconds: float
    library_sha256: str | None
    source: str | None = None  # _source_hash of what was compiled: a kernel whose code has changed since is rebuilt

    @classmethod
    def read(cls, path: Path) -> "_Meta | None":
        try:
            data = json.loads(path.read_text())
            return cls(int(data["trials"]), bool(data["tuned"]), float(data["tuning_seconds"]), data["library_sha256"],
                       data.get("source"))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _quiet_tvm_logs() -> Iterator[None]:
    """MetaSchedule logs every iteration to the console at its logger's level; raise that level so the console
    stays clean. Its full DEBUG logs still go to ``tuning/logs/`` of the task.

    MetaSchedule also re-configures its logger by the names of the handlers it finds there, and fails
    (``'NoneType' object has no attribute 'format'``) on a handler without a name, such as one a logging capture
    (pytest's, an application's) attached; those are set aside while it tunes and put back after."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    old_level = logger.level
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for handler in unnamed:
        logger.removeHandler(handler)
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old_level)
        for handler in unnamed:
            logger.addHandler(handler)


def _irmodule(spec: KernelSpec) -> tvm.IRModule:
    return tvm.IRModule({"main": spec.prim_func()})


def _source_hash(spec: KernelSpec, target: tvm.target.Target) -> str:
    """A fingerprint of the task's code: its computation and its untuned schedule (a hand-written one included).
    A cache entry built from other code (an earlier version of the definition or the schedule) does not match and
    is rebuilt; a tuning database of the same computation still serves that rebuild."""
    return hashlib.sha256(default_schedule(spec, target).script().encode()).hexdigest()[:16]


def default_schedule(spec: KernelSpec, target: tvm.target.Target) -> tvm.IRModule:
    """The untuned schedule: on CPU the variant's hand-written schedule where it has one for this shape
    (``Definition.cpu_schedule``), else TVM's defaults; on CUDA, dlight's generic GPU rules (thread binding)."""
    mod = _irmodule(spec)
    if not targets.is_cuda(target) and spec.definition.cpu_schedule is not None:
        scheduled = spec.definition.cpu_schedule(mod, spec.M, spec.K, spec.N, target)
        if scheduled is not None:
            return scheduled
    if targets.is_cuda(target):
        with target:
            mod = dlight.ApplyDefaultSchedule(dlight.gpu.Fallback())(mod)
    return mod


def _tuned_schedule(spec: KernelSpec, target: tvm.target.Target, work_dir: Path) -> tvm.IRModule | None:
    """The best schedule recorded in the task's tuning database, or None when it has none or does not load."""

    if not _database_is_well_formed(work_dir):
        return None
    import_tensor_intrinsics()
    if spec.definition.tune_space is not None and not targets.is_cuda(target):
        spec.definition.tune_space(spec.M, spec.K, spec.N, target)  # registers what its records replay
    try:
        database = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=False)
        schedule = ms.tir_integration.compile_tir(database, _irmodule(spec), target)
    except (ValueError, RuntimeError) as e:  # TVM raises RuntimeError subclasses
        log.warning("tuning database of %s does not load (%s); it will be rebuilt", spec.key, e)
        return None
    return None if schedule is None else schedule.mod


def _database_is_well_formed(work_dir: Path) -> bool:
    """Every line of both database files parses as JSON. TVM's reader segfaults on a blank line in the records
    file (it cannot be caught), so a database is checked here before TVM opens it."""
    for name in ("database_workload.json", "database_tuning_record.json"):
        try:
            with (work_dir / name).open() as f:
                lines = f.read().split("\n")
        except OSError:
            return False
        if lines and lines[-1] == "":
            lines.pop()  # the final newline
        try:
            if not lines or any(not line.strip() or not isinstance(json.loads(line), list) for line in lines):
                return False
        except ValueError:
            return False
    return True


def _recorded_trials(work_dir: Path) -> int:
    """Tuning records in a task's database (one JSON line each)."""
    try:
        with (work_dir / "database_tuning_record.json").open() as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def _progress_callback(on_trials: Callable[[int], None]):
    @ir_utils.derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            on_trials(len(measure_candidates))

    return _Progress()


def _tune(
    spec: KernelSpec,
    target: tvm.target.Target,
    work_dir: Path,
    trials: int,
    seed: int,
    on_trials: Callable[[int], None] | None,
) -> None:
    import_tensor_intrinsics()
    work_dir.mkdir(parents=True, exist_ok=True)
    cores = max(1, targets.cpu_threads())
    callbacks = ms.measure_callback.MeasureCallback.create("default")
    if on_trials is not None:
        callbacks = [*callbacks, _progress_callback(on_trials)]
    space: Any = "post-order-apply"  # MetaSchedule's generic rules
    strategy = "evolutionary"
    if spec.definition.tune_space is not None and not targets.is_cuda(target):
        # the kernel's own space: its sampled choices are drawn afresh each trial (no mutators apply to them)
        space = ms.space_generator.ScheduleFn(spec.definition.tune_space(spec.M, spec.K, spec.N, target),
                                              sch_rules=[], postprocs=[], mutator_probs={})
        strategy = "replay-func"
    with _quiet_tvm_logs():
        ms.tune_tir(
            mod=_irmodule(spec),
            space=space,
            strategy=strategy,
            target=target,
            work_dir=str(work_dir),
            max_trials_global=trials,
            num_trials_per_iter=min(64, trials),
            num_tuning_cores=cores,
            seed=seed,
            # Workers import TVM's tensor intrinsics up front, through the fast path (see kernels.tvm_import);
            # the builder restarts its pool every iteration, so this saves tens of seconds per iteration.
            builder=ms.builder.LocalBuilder(max_workers=cores, initializer=import_tensor_intrinsics),
            runner=ms.runner.LocalRunner(initializer=import_tensor_intrinsics),
            database=ms.database.JSONDatabase(work_dir=str(work_dir)),
            measure_callbacks=callbacks,
        )


def _export(mod: tvm.IRModule, target: tvm.target.Target, path: Path) -> None:
    executable = tvm.compile(mod, target=target)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.so")
    executable.export_library(str(tmp))
    os.replace(tmp, path)


def _faster_of(spec: KernelSpec, target: tvm.target.Target, tuned: tvm.IRModule) -> tuple[tvm.IRModule, str]:
    """MetaSchedule's best, or the variant's hand-written CPU schedule where that one times faster here (at a
    few dozen trials MetaSchedule often does not find what the hand-written tile does: it was slower at 4 of the 7
    linear shapes of ``bench/results/kernel-schedules.md``); with the name of the one taken, for ``meta.json``."""
    if targets.is_cuda(target) or spec.definition.cpu_schedule is None:
        return tuned, "metaschedule"
    hand = spec.definition.cpu_schedule(_irmodule(spec), spec.M, spec.K, spec.N, target)
    if hand is None:
        return tuned, "metaschedule"
    device = tvm.cpu(0)
    _, args = random_arguments(spec, device)
    times = []
    for mod in (tuned, hand):
        executable = tvm.compile(mod, target=target)
        executable["main"](*args)  # warm-up
        evaluator = executable.mod.time_evaluator("main", device, number=1, repeat=5, min_repeat_ms=20)
        times.append(sorted(evaluator(*args).results)[2])
    return (hand, "hand") if times[1] < times[0] else (tuned, "metaschedule")


def task_dir(spec: KernelSpec, target: tvm.target.Target, root: Path | None = None) -> Path:
    """The cache folder of one task on one target."""
    return (root or cache_dir()) / targets.fingerprint(target) / spec.key


def get_kernel(
    spec: KernelSpec,
    target: str | dict | tvm.target.Target = "cpu",
    trials: int = DEFAULT_TRIALS,
    *,
    root: Path | None = None,
    seed: int = 0,
    on_trials: Callable[[int], None] | None = None,
) -> CompiledKernel:
    """The compiled kernel for a task: from the cache when it holds one with at least ``trials`` trials, else tuned
    (``trials`` > 0) or built with the default schedule (``trials`` == 0, marked untuned).

    Args:
        on_trials: called with the number of trials measured after each tuning iteration (for progress bars).
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 0:
        raise KernelError("trials", f"trials must be a non-negative integer, got {trials!r}")
    target = targets.resolve(target)
    if trials > 0 and targets.is_cuda(target) and not tvm.cuda().exist:
        raise KernelResourceError("trials", f"{spec.key}: tuning for CUDA needs a GPU on this machine; use trials=0 to "
                                             "compile only")
    folder = task_dir(spec, target, root)
    with file_lock(folder / ".lock"):  # one process at a time builds a task (others wait, then find it cached)
        meta_path, library = folder / "meta.json", folder / "kernel.so"
        work_dir = folder / "tuning"
        meta = _Meta.read(meta_path)
        source = _source_hash(spec, target)
        satisfied = (meta is not None and (meta.tuned or trials == 0) and meta.trials >= trials
                     and meta.source == source)
        if satisfied and library.exists() and meta.library_sha256 == file_sha256(library):
            return _load(spec, target, library, meta, cache_hit=True)

        # Not cached, or cached but interrupted/corrupted: rebuild from the tuning database if it still serves.
        _write_atomic(folder.parent / "target.json", json.dumps(targets.describe(target), indent=2) + "\n")
        meta_path.unlink(missing_ok=True)
        tuning_seconds = meta.tuning_seconds if meta else 0.0
        known = meta.trials if meta else _recorded_trials(work_dir)  # trials the database already holds
        mod = _tuned_schedule(spec, target, work_dir)
        if mod is None and work_dir.exists():
            shutil.rmtree(work_dir)  # a database that does not load is discarded, not half-trusted
            known = 0
        if trials > known or (mod is None and trials > 0):
            start = time.perf_counter()
            _tune(spec, target, work_dir, trials, seed, on_trials)
            tuning_seconds = time.perf_counter() - start
            mod, known = _tuned_schedule(spec, target, work_dir), trials
            if mod is None:
                raise KernelResourceError(str(work_dir / "logs"), f"{spec.key}: tuning produced no valid schedule")
        tuned = mod is not None
        schedule = "metaschedule"
        if mod is None:
            mod, schedule = default_schedule(spec, target), "default"
        else:
            mod, schedule = _faster_of(spec, target, mod)
        _export(mod, target, library)
        meta = _Meta(known if tuned else 0, tuned, tuning_seconds, file_sha256(library), source)
        record = {**meta.__dict__, "schedule": schedule, "spec": spec.to_dict(), "target": targets.describe(target),
                  "tvm": tvm.__version__}
        _write_atomic(meta_path, json.dumps(record, indent=2) + "\n")
        return _load(spec, target, library, meta, cache_hit=False)


def _load(spec: KernelSpec, target: tvm.target.Target, library: Path, meta: _Meta, cache_hit: bool) -> CompiledKernel:
    module = tvm.runtime.load_module(str(library))
    return CompiledKernel(spec, target, module, meta.tuned, meta.trials, library, cache_hit, meta.tuning_seconds)


def compile_untuned(spec: KernelSpec, target: str | dict | tvm.target.Target = "cpu"):
    """Compile a task with the default schedule, in memory, without the cache (for checks and CUDA source)."""
    target = targets.resolve(target)
    return tvm.compile(default_schedule(spec, target), target=target)


def cuda_source(spec: KernelSpec, arch: str = targets.DEFAULT_CUDA_ARCH) -> str:
    """The CUDA C source of a task's default-schedule kernel (generated without a GPU; TVM compiles it with NVRTC)."""
    executable = compile_untuned(spec, targets.cuda_target(arch))
    return "\n".join(module.inspect_source() for module in executable.mod.imports if module.kind == "cuda")
