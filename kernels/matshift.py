"""matshift: ShiftLinear's integer product, ``Y[i, j] = Σ_k sign[j, k] · (X[i, k] >> R[j, k])``.

``X`` is int32 fixed point, ``R = -shift`` (right-shift amounts, int8, >= 0) and ``sign`` (int8 in {-1, 0, 1}) are the
weights, packed offline from :meth:`ShiftLinear.quantized` (see :func:`pack`). Accumulation is int32 with wrap-around,
exactly :func:`search_spaces.ops.shift.shift_matmul_int`. Two forms of the sign:

- ``mul``: a multiply by the sign (one vector multiply per term);
- ``select``: a conditional negate (compare and blend, no multiply).
"""

from __future__ import annotations

import numpy as np
from tvm import te

from .spec import Definition, register

# The form compiled models use: with weights stored [N, K], MetaSchedule vectorizes the multiply form 2-4x better
# than the conditional negate on this CPU (bench/results/kernels-cpu.md).
DEFAULT_VARIANT = "mul"


def pack(shift: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ShiftLinear's int8 ``(shift, sign)`` codes as the kernel's weights ``(R, sign)`` with ``R = -shift``."""
    return np.ascontiguousarray(-shift.astype(np.int8)), np.ascontiguousarray(sign.astype(np.int8))


def _args(M, K, N, dtype):
    return [("X", (M, K), "int32"), ("R", (N, K), "int8"), ("S", (N, K), "int8"), ("Y", (M, N), "int32")]


def _compute(sign_form: str):
    def compute(M: int, K: int, N: int, dtype: str = "int32"):
        X = te.placeholder((M, K), "int32", name="X")
        R = te.placeholder((N, K), "int8", name="R")
        S = te.placeholder((N, K), "int8", name="S")
        k = te.reduce_axis((0, K), name="k")

        def term(i, j):
            shifted = X[i, k] >> R[j, k].astype("int32")
            if sign_form == "mul":
                return shifted * S[j, k].astype("int32")
            zero = te.const(0, "int32")
            return te.if_then_else(S[j, k] > 0, shifted, te.if_then_else(S[j, k] < 0, zero - shifted, zero))

        Y = te.compute((M, N), lambda i, j: te.sum(term(i, j), axis=k), name="Y")
        return te.create_prim_func([X, R, S, Y])

    return compute


def reference(M, K, N, x: np.ndarray, r: np.ndarray, s: np.ndarray) -> np.ndarray:
    shifted = x.astype(np.int64)[:, None, :] >> r.astype(np.int64)[None, :, :]
    total = (shifted * s.astype(np.int64)[None, :, :]).sum(-1)
    return total.astype(np.int32)  # int32 wrap-around, as the kernel accumulates


def random_inputs(M, K, N, dtype, rng):
    x = rng.integers(-(2**20), 2**20, (M, K), dtype=np.int32)  # |x| < 16 in 16.16 fixed point
    r = rng.integers(0, 15, (N, K), dtype=np.int8)
    s = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(N, K), p=[0.45, 0.1, 0.45])
    return [x, r, s]


for _form, _ops in (("mul", 2), ("select", 3)):
    register(
        Definition(
            kernel="matshift",
            variant=_form,
            dtypes=("int32",),
            args=_args,
            compute=_compute(_form),
            reference=reference,
            random_inputs=random_inputs,
            # per term: shift + (multiply | compare-and-blend) + add
            ops=lambda M, K, N, n=_ops: n * M * K * N,
            doc=f"shift-and-add product, sign as a {'multiply' if _form == 'mul' else 'conditional negate'}",
        )
    )
