"""matmul: fp32 ``Y[M, N] = X[M, K] · W[N, K]ᵀ``, the baseline every speedup is measured against."""

from __future__ import annotations

import numpy as np

from .definition import Definition, register
from .lazy import lazy_import

te = lazy_import("tvm.te")


def _args(M, K, N, dtype):
    return [("X", (M, K), dtype), ("W", (N, K), dtype), ("Y", (M, N), dtype)]


def compute(M: int, K: int, N: int, dtype: str = "float32"):
    X = te.placeholder((M, K), dtype, name="X")
    W = te.placeholder((N, K), dtype, name="W")
    k = te.reduce_axis((0, K), name="k")
    Y = te.compute((M, N), lambda i, j: te.sum(X[i, k] * W[j, k], axis=k), name="Y")
    return te.create_prim_func([X, W, Y])


def reference(M, K, N, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) @ w.astype(np.float64).T).astype(x.dtype)


def random_inputs(M, K, N, dtype, rng):
    return [rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((N, K)).astype(dtype)]


FP32 = register(
    Definition(
        kernel="matmul",
        variant="fp32",
        dtypes=("float32",),
        args=_args,
        compute=compute,
        reference=reference,
        random_inputs=random_inputs,
        ops=lambda M, K, N: M * K * N,  # one fused multiply-add per term
        doc="dense fp32 product with the weight stored [N, K] as in nn.Linear",
    )
)
