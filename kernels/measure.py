"""Time one kernel on a target: locally, or on a remote device through TVM's RPC tracker.

Timing uses TVM's ``time_evaluator``: each repeat runs the kernel as many times as needed to last at least
``min_repeat_ms`` and reports the mean of that repeat, so a single slow call (a context switch on a busy machine)
moves one repeat a little instead of the result a lot; the median over repeats is the figure to use.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tvm

from . import target as targets
from .spec import KernelError, KernelSpec
from .tuning import DEFAULT_TRIALS, CompiledKernel, get_kernel

DEFAULT_REPEATS = 15
DEFAULT_MIN_REPEAT_MS = 40


@dataclass(frozen=True)
class Timing:
    """Per-call latency statistics in milliseconds over ``repeats`` repeats."""

    median_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    repeats: int

    @classmethod
    def from_seconds(cls, per_repeat_seconds: list[float]) -> "Timing":
        ms = [1e3 * s for s in per_repeat_seconds]
        return cls(
            median_ms=statistics.median(ms),
            min_ms=min(ms),
            max_ms=max(ms),
            std_ms=statistics.pstdev(ms) if len(ms) > 1 else 0.0,
            repeats=len(ms),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _device(target: tvm.target.Target, session=None):
    kind = "cuda" if targets.is_cuda(target) else "cpu"
    return getattr(session, kind)(0) if session is not None else getattr(tvm, kind)(0)


def random_arguments(spec: KernelSpec, device, seed: int = 0) -> tuple[list[np.ndarray], list]:
    """Random inputs of a task (numpy) and the kernel's arguments on ``device``: those inputs plus a zero output."""
    inputs = spec.random_inputs(np.random.default_rng(seed))
    _, shape, dtype = spec.args()[-1]
    args = [tvm.runtime.tensor(a, device) for a in inputs] + [tvm.runtime.tensor(np.zeros(shape, dtype), device)]
    return inputs, args


def _time(module, device, args, repeats: int, min_repeat_ms: int) -> Timing:
    if repeats < 1:
        raise KernelError(f"repeats must be >= 1, got {repeats}")
    module["main"](*args)  # warm-up: page in the code and the data
    evaluator = module.time_evaluator("main", device, number=1, repeat=repeats, min_repeat_ms=min_repeat_ms)
    return Timing.from_seconds(list(evaluator(*args).results))


def time_kernel(
    kernel: CompiledKernel, repeats: int = DEFAULT_REPEATS, min_repeat_ms: int = DEFAULT_MIN_REPEAT_MS
) -> Timing:
    """Time a compiled kernel on this machine, on random inputs of its shape."""
    device = _device(kernel.target)
    if not device.exist:
        raise KernelError(f"{kernel.spec.key}: no {device} on this machine to time it on")
    return _time(kernel.module, device, random_arguments(kernel.spec, device)[1], repeats, min_repeat_ms)


def parse_tracker(address: str) -> tuple[str, int]:
    """``HOST:PORT`` to ``(host, port)``, with a clear error."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise KernelError(f"--rpc-tracker must be HOST:PORT, got {address!r}")
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
    from tvm import rpc

    host, port = parse_tracker(tracker)
    try:
        session = rpc.connect_tracker(host, port).request(device_key, session_timeout=session_timeout)
    except (RuntimeError, OSError) as e:  # TVM raises RuntimeError subclasses
        raise KernelError(f"cannot get device {device_key!r} from the RPC tracker at {tracker}: {e}") from None
    with tempfile.TemporaryDirectory() as tmp:
        library = Path(tmp) / f"{kernel.spec.key}.so"
        if kernel.library is not None:
            library.write_bytes(kernel.library.read_bytes())
        else:
            raise KernelError(f"{kernel.spec.key}: only cached kernels (with a library file) can be timed remotely")
        session.upload(str(library))
        module = session.load_module(library.name)
    device = _device(kernel.target, session)
    return _time(module, device, random_arguments(kernel.spec, device)[1], repeats, min_repeat_ms)


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
        raise KernelError("--rpc-tracker and --device-key go together: give both or neither")
    kernel = get_kernel(spec, target, trials, **tuning)
    if tracker is not None:
        return kernel, time_remote(kernel, tracker, device_key, repeats)
    return kernel, time_kernel(kernel, repeats)
