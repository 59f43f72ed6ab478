"""A kernel task's arguments on a device: its inputs (random, or given) and a zero output, as TVM tensors; what
tuning, timing and checking a kernel all call it with."""

from __future__ import annotations

import numpy as np

from .lazy import lazy_import
from .spec import KernelSpec

tvm = lazy_import("tvm")


def random_arguments(spec: KernelSpec, device, seed: int = 0) -> tuple[list[np.ndarray], list]:
    """Random inputs of a task (numpy) and the kernel's arguments on ``device``: those inputs plus a zero output."""
    inputs = spec.random_inputs(np.random.default_rng(seed))
    return inputs, arguments(spec, device, inputs)


def arguments(spec: KernelSpec, device, inputs: list[np.ndarray]) -> list:
    """The kernel's arguments on ``device``: ``inputs`` plus a zero output."""
    _, shape, dtype = spec.args()[-1]
    return [tvm.runtime.tensor(a, device) for a in inputs] + [tvm.runtime.tensor(np.zeros(shape, dtype), device)]


__all__ = ["arguments", "random_arguments"]
