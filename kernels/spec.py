"""KernelSpec: one kernel task, the unit that is defined, tuned, cached and measured.

A task is (kernel, variant, logical shape M, K, N, value dtype). Each kernel module (``matmul``, ``matshift``,
``matadd``, ``shiftlinear``, ``additive``) registers its variants (:mod:`kernels.definition`) with the TE definition,
a numpy reference and an input generator; this module imports them all. Those
modules import TVM's compiler (``tvm.te``) only inside the functions that define a kernel: specs, references and
inputs serve a machine that has the TVM runtime alone (:mod:`kernels.prebuilt`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search_spaces.errors import ConfigError, ResourceError

from .definition import REGISTRY, Definition

DEFAULT_CUDA_ARCH = "sm_80"  # of target "cuda" without an architecture


class KernelError(ConfigError):
    """A kernel request that cannot be served: unknown kernel or variant, bad shape, unsupported dtype, bad target.
    ``where`` names the argument (``kernel``, ``variant``, ``M``, ``dtype``, ``target``, ``trials``) as ``nas kernels``
    and the Python API call it."""


class KernelResourceError(ResourceError):
    """This machine cannot build or time a kernel: no such device here, an RPC tracker that does not answer."""


@dataclass(frozen=True)
class KernelSpec:
    """One kernel task: ``kernel`` (matmul, matshift, matadd, shiftlinear, additive), its ``variant``, the logical
    shape ``Y[M, N] = X[M, K] ∘ W[K, N]`` (a kernel that is not one product says what its M, K, N are), the value
    dtype, and ``batch`` independent products in one call (every argument then has a leading ``batch`` axis; only
    variants with a ``batched_compute`` take one; a ``whole_batch`` variant's batch is one problem)."""

    kernel: str
    variant: str
    M: int
    K: int
    N: int
    dtype: str = ""
    batch: int = 1
    definition: Definition = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        key = (self.kernel, self.variant)
        if key not in REGISTRY:
            kernels = sorted({k for k, _ in REGISTRY})
            if self.kernel not in kernels:
                raise KernelError("kernel", f"unknown kernel {self.kernel!r} (choose from {', '.join(kernels)})")
            variants = sorted(v for k, v in REGISTRY if k == self.kernel)
            raise KernelError("variant", f"{self.kernel}: unknown variant {self.variant!r} (choose from "
                                         f"{', '.join(variants)})")
        definition = REGISTRY[key]
        for name in ("M", "K", "N", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise KernelError(name, f"{self.kernel}: {name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        dtype = self.dtype or definition.dtypes[0]
        if dtype not in definition.dtypes:
            raise KernelError(
                "dtype", f"{self.kernel}/{self.variant}: unsupported dtype {dtype!r} (supported: {', '.join(definition.dtypes)})"
            )
        if self.batch > 1 and definition.batched_compute is None:
            raise KernelError("batch", f"{self.kernel}/{self.variant} computes one product per call, not a batch of "
                                       f"{self.batch}")
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "definition", definition)

    @property
    def key(self) -> str:
        """A file-name-safe unique name, e.g. ``matshift-select-int32-196x192x768``, or with a batch
        ``matadd-binary_real-float32-b24x64x197x64``."""
        batch = f"b{self.batch}x" if self.batch > 1 else ""
        return f"{self.kernel}-{self.variant}-{self.dtype}-{batch}{self.M}x{self.K}x{self.N}"

    @property
    def symbol(self) -> str:
        """The task's function name in a compiled library: its key with C-safe characters
        (``matshift_xor_int32_197x64x192``)."""
        return self.key.replace("-", "_")

    def args(self) -> list[tuple[str, tuple[int, ...], str]]:
        """``(name, shape, dtype)`` of each argument, inputs first, the output last."""
        if self.definition.whole_batch:
            return self.definition.args(self.M, self.K, self.N, self.dtype, batch=self.batch)
        lead = (self.batch,) if self.batch > 1 else ()
        return [(name, lead + tuple(shape), dtype)
                for name, shape, dtype in self.definition.args(self.M, self.K, self.N, self.dtype)]

    def prim_func(self):
        if self.batch > 1 or self.definition.whole_batch:
            return self.definition.batched_compute(self.batch, self.M, self.K, self.N, self.dtype)
        return self.definition.compute(self.M, self.K, self.N, self.dtype)

    def reference(self, *inputs: np.ndarray) -> np.ndarray:
        if self.batch > 1 and not self.definition.whole_batch:
            return np.stack([self.definition.reference(self.M, self.K, self.N, *(a[i] for a in inputs))
                             for i in range(self.batch)])
        return self.definition.reference(self.M, self.K, self.N, *inputs)

    def _inputs(self, generate, rng: np.random.Generator) -> list[np.ndarray]:
        if self.definition.whole_batch:
            return generate(self.M, self.K, self.N, self.dtype, rng, batch=self.batch)
        if self.batch > 1:
            draws = [generate(self.M, self.K, self.N, self.dtype, rng) for _ in range(self.batch)]
            return [np.ascontiguousarray(np.stack(parts)) for parts in zip(*draws)]
        return generate(self.M, self.K, self.N, self.dtype, rng)

    def random_inputs(self, rng: np.random.Generator) -> list[np.ndarray]:
        return self._inputs(self.definition.random_inputs, rng)

    def extreme_inputs(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Inputs at the ends of the value range (:attr:`Definition.extreme_inputs`); random ones where undefined."""
        return self._inputs(self.definition.extreme_inputs or self.definition.random_inputs, rng)

    def ops(self) -> int:
        return self.batch * self.definition.ops(self.M, self.K, self.N)

    def bytes_moved(self) -> int:
        """Bytes of every argument read or written once: the memory-traffic floor."""
        return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype in self.args())

    def to_dict(self) -> dict[str, Any]:
        shape = {"kernel": self.kernel, "variant": self.variant, "M": self.M, "K": self.K, "N": self.N, "dtype": self.dtype}
        return {**shape, "batch": self.batch} if self.batch > 1 else shape


def variants(kernel: str | None = None) -> list[tuple[str, str]]:
    return sorted(k for k in REGISTRY if kernel is None or k[0] == kernel)


# The kernel modules register their variants when imported (they import .definition, not this module).
from . import additive, matadd, matmul, matshift, shiftlinear  # noqa: E402, F401, I001
