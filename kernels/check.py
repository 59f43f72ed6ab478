"""Correctness of every kernel against its numpy reference, at shapes that are not multiples of any tile size."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import target as targets
from .arguments import arguments
from .lazy import lazy_import
from .spec import KernelSpec, variants
from .tuning import compile_untuned, get_kernel

tvm = lazy_import("tvm")

# the last one has a vectorizable N and an M that is not a multiple of any tile: hand-written schedules run there
AWKWARD_SHAPES = ((37, 70, 29), (1, 129, 65), (13, 64, 200), (37, 70, 48))


@dataclass(frozen=True)
class CheckResult:
    spec: KernelSpec
    status: str  # "exact", "close", "compiled" (no device to run it), or "FAILED"
    max_error: float | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "FAILED"


AWKWARD_BATCH = 3  # variants that take a batch are checked with one too


def all_specs(shapes=AWKWARD_SHAPES) -> Iterator[KernelSpec]:
    for kernel, variant in variants():
        definition = KernelSpec(kernel, variant, 1, 1, 1).definition
        batches = (1, AWKWARD_BATCH) if definition.batched_compute is not None else (1,)
        for dtype in definition.dtypes:
            for batch in batches:
                for m, k, n in shapes:
                    yield KernelSpec(kernel, variant, m, k, n, dtype, batch=batch)


def check(spec: KernelSpec, target="cpu", trials: int = 0, seed: int = 0, root=None) -> CheckResult:
    """Run one kernel on random inputs, and on inputs at the ends of the value range where its variant defines them
    (saturation, int32 wrap-around), and compare with the reference: bit-exact for integer outputs."""
    target = targets.resolve(target)
    device = tvm.cuda(0) if targets.is_cuda(target) else tvm.cpu(0)
    try:
        # both a cached CompiledKernel and an in-memory executable are called as kernel(*args)
        kernel = get_kernel(spec, target, trials, root=root) if trials > 0 else compile_untuned(spec, target)
    except Exception as e:  # report compile failures per task instead of stopping the check
        return CheckResult(spec, "FAILED", None, f"compile: {type(e).__name__}: {e}")
    if not device.exist:
        return CheckResult(spec, "compiled", None, f"no {device} here to run it")
    lacking = targets.missing_features(target)
    if lacking:
        return CheckResult(spec, "compiled", None, f"this CPU lacks {', '.join(lacking[:4])}"
                                                   f"{' ...' if len(lacking) > 4 else ''} to run it")
    return _run(spec, kernel, device, seed)


def check_prebuilt(prebuilt, spec: KernelSpec, seed: int = 0) -> CheckResult:
    """One task of a prebuilt library (:class:`kernels.prebuilt.PrebuiltKernels`) against its reference, on the
    library's device: what runs where the TVM runtime alone is installed."""
    return _run(spec, prebuilt.kernel(spec), prebuilt.device, seed)


def _run(spec: KernelSpec, kernel, device, seed: int) -> CheckResult:
    cases = [("random inputs", spec.random_inputs(np.random.default_rng(seed)))]
    if spec.definition.extreme_inputs is not None:
        cases.append(("extreme inputs", spec.extreme_inputs(np.random.default_rng(seed))))
    worst = None
    for name, inputs in cases:
        args = arguments(spec, device, inputs)
        kernel(*args)
        result = _compare(spec, args[-1].numpy(), spec.reference(*inputs), name)
        if not result.ok:
            return result
        worst = result if worst is None or result.max_error > worst.max_error else worst
    return worst


def _compare(spec: KernelSpec, got: np.ndarray, want: np.ndarray, inputs: str) -> CheckResult:
    if np.issubdtype(want.dtype, np.integer) or spec.definition.exact:
        exact = np.array_equal(got, want)
        error = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
        return CheckResult(spec, "exact" if exact else "FAILED", error,
                           "" if exact else f"output differs from the bit-exact reference on {inputs}")
    error = float(np.abs(got - want).max())
    scale = float(np.abs(want).max()) or 1.0
    ok = error <= 1e-5 * scale * max(1, spec.K) ** 0.5
    return CheckResult(spec, "close" if ok else "FAILED", error,
                       "" if ok else f"error {error:.3g} vs scale {scale:.3g} on {inputs}")
