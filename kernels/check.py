"""Correctness of every kernel against its numpy reference, at shapes that are not multiples of any tile size."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tvm

from . import target as targets
from .measure import random_arguments
from .spec import KernelSpec, variants
from .tuning import compile_untuned, get_kernel

AWKWARD_SHAPES = ((37, 70, 29), (1, 129, 65), (13, 64, 200))


@dataclass(frozen=True)
class CheckResult:
    spec: KernelSpec
    status: str  # "exact", "close", "compiled" (no device to run it), or "FAILED"
    max_error: float | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "FAILED"


def all_specs(shapes=AWKWARD_SHAPES) -> Iterator[KernelSpec]:
    for kernel, variant in variants():
        for dtype in KernelSpec(kernel, variant, 1, 1, 1).definition.dtypes:
            for m, k, n in shapes:
                yield KernelSpec(kernel, variant, m, k, n, dtype)


def check(spec: KernelSpec, target="cpu", trials: int = 0, seed: int = 0, root=None) -> CheckResult:
    """Run one kernel on random inputs and compare with the reference: bit-exact for integer outputs."""
    target = targets.resolve(target)
    device = tvm.cuda(0) if targets.is_cuda(target) else tvm.cpu(0)
    try:
        # both a cached CompiledKernel and an in-memory executable are called as kernel(*args)
        kernel = get_kernel(spec, target, trials, root=root) if trials > 0 else compile_untuned(spec, target)
    except Exception as e:  # report compile failures per task instead of stopping the check
        return CheckResult(spec, "FAILED", None, f"compile: {type(e).__name__}: {e}")
    if not device.exist:
        return CheckResult(spec, "compiled", None, f"no {device} here to run it")
    inputs, args = random_arguments(spec, device, seed)
    kernel(*args)
    got, want = args[-1].numpy(), spec.reference(*inputs)
    if np.issubdtype(want.dtype, np.integer):
        exact = np.array_equal(got, want)
        error = float(np.abs(got.astype(np.int64) - want.astype(np.int64)).max())
        return CheckResult(spec, "exact" if exact else "FAILED", error, "" if exact else "integer output differs")
    error = float(np.abs(got - want).max())
    scale = float(np.abs(want).max()) or 1.0
    ok = error <= 1e-5 * scale * max(1, spec.K) ** 0.5
    return CheckResult(spec, "close" if ok else "FAILED", error, "" if ok else f"error {error:.3g} vs scale {scale:.3g}")
