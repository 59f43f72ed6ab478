"""Time one kernel on a target: locally, or on a remote device through TVM's RPC tracker.

Timing uses TVM's ``time_evaluator``: each repeat runs the kernel as many times as needed to last at least
``min_repeat_ms`` and reports the mean of that repeat, so a single slow call (a context switch on a busy machine)
moves one repeat a little instead of the result a lot; the median over repeats is the figure to use.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil

from . import target as targets
from .arguments import random_arguments
from .lazy import lazy_import
from .spec import KernelError, KernelResourceError, KernelSpec
from .tuning import DEFAULT_TRIALS, CompiledKernel, get_kernel

tvm = lazy_import("tvm")
rpc = lazy_import("tvm.rpc")

DEFAULT_REPEATS = 15
DEFAULT_MIN_REPEAT_MS = 40


@dataclass(frozen=True)
class Timing:
    """Per-call latency statistics in milliseconds over ``repeats`` repeats, and how trustworthy they are.

    ``spread`` is the interquartile range of the repeats over their median; ``contention`` the share of the machine's
    CPU time that other processes used while the timing ran (see :class:`CpuContention`). A timing with either too
    high is noisy: :func:`latency_model.profile.profile` re-times it, and marks it if it stays noisy.
    """

    median_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    repeats: int
    spread: float = 0.0
    contention: float = 0.0

    @classmethod
    def from_seconds(cls, per_repeat_seconds: list[float]) -> "Timing":
        ms = [1e3 * s for s in per_repeat_seconds]
        median = statistics.median(ms)
        if len(ms) >= 4:
            q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
        else:
            q1, q3 = min(ms), max(ms)
        return cls(
            median_ms=median,
            min_ms=min(ms),
            max_ms=max(ms),
            std_ms=statistics.pstdev(ms) if len(ms) > 1 else 0.0,
            repeats=len(ms),
            spread=(q3 - q1) / median if median > 0 else 0.0,
        )

    def with_contention(self, share: float) -> "Timing":
        return replace(self, contention=share)

    def to_dict(self) -> dict:
        return asdict(self)


class CpuContention:
    """Measures, around a block of code, the share of the machine's CPU time that *other* processes used:
    ``(busy CPU time of the machine - this process's CPU time) / (wall time x CPUs)``, from the kernel's counters
    (``/proc/stat`` and this process's own times, through psutil). Time the hypervisor gave to other guests (steal)
    counts as used by others. 0 on a quiet machine; a process spinning on one of two cores gives about 0.5 while it
    runs. Resolution is the kernel's clock tick (10 ms), so windows of a few hundred milliseconds are needed.

    Example:
        >>> with CpuContention() as contention:
        ...     run_timing()                                             # doctest: +SKIP
        >>> contention.share                                              # doctest: +SKIP
        0.01
    """

    share: float = 0.0

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        # guest time is already inside user time on Linux: not added again
        return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))

    @staticmethod
    def _own() -> float:
        t = psutil.Process().cpu_times()
        return t.user + t.system

    def __enter__(self) -> "CpuContention":
        self._start = (time.perf_counter(), self._busy(), self._own())
        return self

    def __exit__(self, *exc) -> None:
        wall0, busy0, own0 = self._start
        wall = time.perf_counter() - wall0
        others = (self._busy() - busy0) - (self._own() - own0)
        cpus = psutil.cpu_count() or os.cpu_count() or 1
        self.share = min(1.0, max(0.0, others / (wall * cpus))) if wall > 0 else 0.0


def _device(target: tvm.target.Target, session=None):
    kind = "cuda" if targets.is_cuda(target) else "cpu"
    return getattr(session, kind)(0) if session is not None else getattr(tvm, kind)(0)


def _time(module, device, args, repeats: int, min_repeat_ms: int, local: bool = True, entry: str = "main"
          ) -> Timing:
    if repeats < 1:
        raise KernelError("repeats", f"must be >= 1, got {repeats}")
    module[entry](*args)  # warm-up: page in the code and the data
    evaluator = module.time_evaluator(entry, device, number=1, repeat=repeats, min_repeat_ms=min_repeat_ms)
    if not local:  # this machine's CPU says nothing of a remote device's: the spread is the check there
        return Timing.from_seconds(list(evaluator(*args).results))
    with CpuContention() as contention:
        results = list(evaluator(*args).results)
    return Timing.from_seconds(results).with_contention(contention.share)


def time_kernel(
    kernel: CompiledKernel, repeats: int = DEFAULT_REPEATS, min_repeat_ms: int = DEFAULT_MIN_REPEAT_MS
) -> Timing:
    """Time a compiled kernel on this machine, on random inputs of its shape."""
    device = _device(kernel.target)
    if not device.exist:
        raise KernelResourceError("target", f"{kernel.spec.key}: no {device} on this machine to time it on")
    return _time(kernel.module, device, random_arguments(kernel.spec, device)[1], repeats, min_repeat_ms)


def time_prebuilt(prebuilt, spec: KernelSpec, repeats: int = DEFAULT_REPEATS,
                  min_repeat_ms: int = DEFAULT_MIN_REPEAT_MS) -> Timing:
    """Time one task of a prebuilt library (:class:`kernels.prebuilt.PrebuiltKernels`) on its device, on random
    inputs of its shape, with the TVM runtime alone (the evaluator synchronises a GPU after each repeat)."""
    prebuilt.kernel(spec)  # a task the library lacks is refused by name
    return _time(prebuilt.module, prebuilt.device, random_arguments(spec, prebuilt.device)[1], repeats,
                 min_repeat_ms, entry=spec.symbol)


def parse_tracker(address: str) -> tuple[str, int]:
    """``HOST:PORT`` to ``(host, port)``, with a clear error."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise KernelError("--rpc-tracker", f"must be HOST:PORT, got {address!r}")
    return host, int(port)


def time_remote(
    kernel: CompiledKernel,
    tracker: str,
    device_key: str,
    repeats: int = DEFAULT_REPEATS,
    min_repeat_ms: int = DEFAULT_MIN_REPEAT_MS,
    session_timeout: int = 60,
) -> Timing:
    """Time a compiled kernel on a device registered with an RPC tracker under ``device_key``.

    The kernel must have been compiled for that device's target. Its library is uploaded, loaded remotely and timed
    there; inputs are created on the remote device.
    """

    host, port = parse_tracker(tracker)
    try:
        session = rpc.connect_tracker(host, port).request(device_key, session_timeout=session_timeout)
    except (RuntimeError, OSError) as e:  # TVM raises RuntimeError subclasses
        raise KernelResourceError("--rpc-tracker", f"cannot get device {device_key!r} from the RPC tracker at "
                                                     f"{tracker}: {e}") from None
    with tempfile.TemporaryDirectory() as tmp:
        library = Path(tmp) / f"{kernel.spec.key}.so"
        if kernel.library is not None:
            library.write_bytes(kernel.library.read_bytes())
        else:
            raise KernelError("--rpc-tracker", f"{kernel.spec.key}: only cached kernels (with a library file) can be "
                                               "timed remotely")
        session.upload(str(library))
        module = session.load_module(library.name)
    device = _device(kernel.target, session)
    return _time(module, device, random_arguments(kernel.spec, device)[1], repeats, min_repeat_ms, local=False)


def measure(
    spec: KernelSpec,
    target: str | dict | tvm.target.Target = "cpu",
    trials: int = DEFAULT_TRIALS,
    repeats: int = DEFAULT_REPEATS,
    tracker: str | None = None,
    device_key: str | None = None,
    **tuning,
) -> tuple[CompiledKernel, Timing]:
    """Get (tune or load) a task's kernel and time it, locally or through ``tracker`` + ``device_key``."""
    if (tracker is None) != (device_key is None):
        raise KernelError("--device-key", "--rpc-tracker and --device-key go together: give both or neither")
    kernel = get_kernel(spec, target, trials, **tuning)
    if tracker is not None:
        return kernel, time_remote(kernel, tracker, device_key, repeats)
    return kernel, time_kernel(kernel, repeats)
