"""A kernel variant's definition (:class:`Definition`) and the registry the kernel modules (``matmul``, ``matshift``,
``matadd``, ``shiftlinear``, ``additive``) add theirs to when imported (:mod:`kernels.spec` imports them all).
Nothing here imports TVM."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Definition:
    """One variant of a kernel: how to build it and what it must compute."""

    kernel: str
    variant: str
    dtypes: tuple[str, ...]  # value dtypes it accepts; the first is the default
    args: Callable[[int, int, int, str], list[tuple[str, tuple[int, ...], str]]]  # inputs then output
    compute: Callable[[int, int, int, str], Any]  # -> tvm PrimFunc
    reference: Callable[..., np.ndarray]  # numpy: (M, K, N, *inputs) -> output
    random_inputs: Callable[[int, int, int, str, np.random.Generator], list[np.ndarray]]
    ops: Callable[[int, int, int], int]  # elementary operations in 32-bit vector lanes, for the compute floor
    doc: str = ""
    # the PrimFunc of a batch of independent products, (batch, M, K, N, dtype) -> PrimFunc; None: one product per call
    batched_compute: Callable[[int, int, int, int, str], Any] | None = None
    # a hand-written CPU schedule used untuned, (IRModule, M, K, N, target) -> IRModule, or None where it does not
    # apply; the target says which instructions the CPU has
    cpu_schedule: Callable[[Any, int, int, int, Any], Any] | None = None
    # inputs at the ends of the value range (saturation, wrap-around), for `nas kernels check`; None: random only
    extreme_inputs: Callable[[int, int, int, str, np.random.Generator], list[np.ndarray]] | None = None
    # float outputs that must equal the reference bit for bit (integer outputs always must)
    exact: bool = False
    # MetaSchedule's search space on CPU, (M, K, N, target) -> a function that schedules a tuning trial's
    # Schedule in place (sampling its choices); None: MetaSchedule's generic rules
    tune_space: Callable[[int, int, int, Any], Callable[[Any], None]] | None = None
    # the batch is one problem, not independent products (its items share a statistic: additive attention's mean
    # over every image): ``args``, ``reference`` and ``random_inputs`` take it (keyword ``batch``) and their arrays
    # carry its axis, at batch 1 too; ``batched_compute`` builds every batch size
    whole_batch: bool = False


REGISTRY: dict[tuple[str, str], Definition] = {}


def register(definition: Definition) -> Definition:
    REGISTRY[(definition.kernel, definition.variant)] = definition
    return definition


__all__ = ["Definition", "REGISTRY", "register"]
