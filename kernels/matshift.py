"""matshift: ShiftLinear's integer product, ``Y[i, j] = Σ_k sign[j, k] · (X[i, k] >> R[j, k])``.

``X`` is int32 fixed point; the weights are a right-shift amount ``R = -shift`` (>= 0) and a ``sign`` in {-1, 0, 1}
per weight, from :meth:`ShiftLinear.quantized`, packed offline by the variant's :data:`PACKERS` entry. Accumulation is
int32 with wrap-around, exactly :func:`search_spaces.ops.shift.shift_matmul_int`. Three forms of the sign:

- ``xor`` (the default): no multiply. The weights are stored ``[K, N]`` (a row of outputs is contiguous, so the
  kernel vectorizes over outputs) as the shift, a keep mask (0 for a zero weight, else -1) and a flip mask (-1 for
  a negative weight), all int8 (:func:`pack_xor`). A negative term is ``-t = (t xor -1) + 1``; the ``+ 1`` of
  every negative weight of a column is one per-column constant ``C`` (an int32 input, packed with the weights), so
  the inner loop is a shift, an and, an xor and an add per term;
- ``mul``: a multiply by the sign, with ``R`` and ``sign`` as two int8 arrays;
- ``select``: a conditional negate (compare and blend), same arrays as ``mul``.

All three are bit-exact to the same reference, wrap-around included (two's complement: ``xor -1`` then ``+ 1`` is
the negation modulo 2³², also of -2³¹).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .definition import Definition, register
from .lazy import lazy_import

te = lazy_import("tvm.te")
s_tir = lazy_import("tvm.s_tir")

# The form compiled models use unless a measurement picks another per shape (bench/results/kernels-cpu.md).
DEFAULT_VARIANT = "xor"

def pack(shift: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ShiftLinear's int8 ``(shift, sign)`` codes as the ``mul``/``select`` kernels' weights ``(R, sign)``, ``R = -shift``."""
    return np.ascontiguousarray(-shift.astype(np.int8)), np.ascontiguousarray(sign.astype(np.int8))


def pack_xor(shift: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ShiftLinear's int8 ``(shift, sign)`` ``[N, K]`` as the ``xor`` kernel's weights: ``R``, ``keep`` and
    ``flip`` ``[K, N]`` int8, and ``C[N]`` int32, the number of negative weights of each output."""
    sign = sign.astype(np.int8)
    amount = -shift.astype(np.int8)
    keep = np.where(sign != 0, -1, 0).astype(np.int8)
    flip = np.where(sign < 0, -1, 0).astype(np.int8)
    negatives = (sign < 0).sum(axis=1).astype(np.int32)
    return (np.ascontiguousarray(amount.T), np.ascontiguousarray(keep.T), np.ascontiguousarray(flip.T),
            np.ascontiguousarray(negatives))


def unpack_xor(r: np.ndarray, keep: np.ndarray, flip: np.ndarray, negatives=None) -> tuple[np.ndarray, np.ndarray]:
    """The ``xor`` kernel's weights back to ``(R, sign)`` ``[N, K]``."""
    sign = np.where(keep == 0, 0, np.where(flip != 0, -1, 1)).astype(np.int8)
    return np.ascontiguousarray(r.T), np.ascontiguousarray(sign.T)


# variant -> (shift, sign) -> the kernel's weight arrays, in argument order after X
PACKERS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, ...]]] = {
    "mul": pack, "select": pack, "xor": pack_xor}


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


def _xor_args(M, K, N, dtype):
    return [("X", (M, K), "int32"), ("R", (K, N), "int8"), ("keep", (K, N), "int8"), ("flip", (K, N), "int8"),
            ("C", (N,), "int32"), ("Y", (M, N), "int32")]


def _xor_compute(M: int, K: int, N: int, dtype: str = "int32"):
    X = te.placeholder((M, K), "int32", name="X")
    R = te.placeholder((K, N), "int8", name="R")
    keep = te.placeholder((K, N), "int8", name="keep")
    flip = te.placeholder((K, N), "int8", name="flip")
    C = te.placeholder((N,), "int32", name="C")
    k = te.reduce_axis((0, K), name="k")

    def term(i, j):
        shifted = X[i, k] >> R[k, j].astype("int32")
        return (shifted & keep[k, j].astype("int32")) ^ flip[k, j].astype("int32")

    acc = te.compute((M, N), lambda i, j: te.sum(term(i, j), axis=k), name="acc")
    Y = te.compute((M, N), lambda i, j: acc[i, j] + C[j], name="Y")
    return te.create_prim_func([X, R, keep, flip, C, Y])


def _xor_cpu_schedule(mod, M: int, K: int, N: int, target=None):
    """A register-tiled schedule for ``xor``: a tile of ``rows x cols`` outputs accumulated in registers over all
    of ``k``, the ``cols`` outputs vectorized (one broadcast of ``X[i, k]`` against contiguous weights), tiles spread
    over the cores, the per-output constant added as the tile is written back. Used untuned; None when ``N`` has no
    multiple-of-16 tile (TVM's default schedule then). Untuned, it runs 15-40x faster than TVM's default schedule
    and within about 0.7-1.6x of MetaSchedule's best after 32 trials (``bench/results/kernel-schedules.md``)."""

    cols = next((c for c in (64, 32, 16) if N % c == 0), None)
    if cols is None:
        return None
    rows = max(1, 256 // cols)  # 4 x 64, 8 x 32 or 16 x 16: 16 accumulators of 16 lanes
    sch = s_tir.Schedule(mod)
    acc = sch.get_sblock("acc")
    i, j, k = sch.get_loops(acc)
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, cols])
    sch.reorder(io, jo, k, ii, ji)
    local = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(local, jo)
    out = sch.get_sblock("Y")
    sch.reverse_compute_at(out, jo)
    sch.vectorize(ji)
    sch.unroll(ii)
    sch.vectorize(sch.get_loops(local)[-1])
    sch.vectorize(sch.get_loops(out)[-1])
    sch.parallel(sch.fuse(io, jo))
    sch.decompose_reduction(acc, k)
    return sch.mod


def reference(M, K, N, x: np.ndarray, r: np.ndarray, s: np.ndarray) -> np.ndarray:
    shifted = x.astype(np.int64)[:, None, :] >> r.astype(np.int64)[None, :, :]
    total = (shifted * s.astype(np.int64)[None, :, :]).sum(-1)
    return total.astype(np.int32)  # int32 wrap-around, as the kernel accumulates


def _xor_reference(M, K, N, x: np.ndarray, r, keep, flip, negatives) -> np.ndarray:
    return reference(M, K, N, x, *unpack_xor(r, keep, flip))


def random_inputs(M, K, N, dtype, rng):
    x = rng.integers(-(2**20), 2**20, (M, K), dtype=np.int32)  # |x| < 16 in 16.16 fixed point
    r = rng.integers(0, 15, (N, K), dtype=np.int8)
    s = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(N, K), p=[0.45, 0.1, 0.45])
    return [x, r, s]


def extreme_inputs(M, K, N, dtype, rng):
    """Saturation and wrap-around: activations at the ends of int32 (-2³¹ included), shifts of 0 and 31, so the
    int32 sums overflow and must wrap exactly as the reference's."""
    x = rng.choice(np.array([-(2**31), -(2**31) + 1, -1, 0, 1, 2**31 - 1], dtype=np.int64), size=(M, K))
    r = rng.choice(np.array([0, 0, 1, 31], dtype=np.int8), size=(N, K))
    s = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(N, K), p=[0.45, 0.1, 0.45])
    return [x.astype(np.int32), r, s]


def _xor_inputs(generate):
    def inputs(M, K, N, dtype, rng):
        x, r, s = generate(M, K, N, dtype, rng)
        return [x, *pack_xor(-r, s)]
    return inputs


for _form, _ops, _doc in (("mul", 3, "sign as a multiply"), ("select", 4, "sign as a conditional negate")):
    register(
        Definition(
            kernel="matshift",
            variant=_form,
            dtypes=("int32",),
            args=_args,
            compute=_compute(_form),
            reference=reference,
            random_inputs=random_inputs,
            extreme_inputs=extreme_inputs,
            # 32-bit lane operations per term: shift, multiply, add | shift, negate, compare-and-blend, add
            ops=lambda M, K, N, n=_ops: n * M * K * N,
            doc=f"shift-and-add product, {_doc}",
        )
    )

register(
    Definition(
        kernel="matshift",
        variant="xor",
        dtypes=("int32",),
        args=_xor_args,
        compute=_xor_compute,
        reference=_xor_reference,
        random_inputs=_xor_inputs(random_inputs),
        extreme_inputs=_xor_inputs(extreme_inputs),
        cpu_schedule=_xor_cpu_schedule,
        # 32-bit lane operations per term: shift, and-then-xor (one vpternlogd on AVX-512), add
        ops=lambda M, K, N: 3 * M * K * N,
        doc="shift-and-add product with no multiply: the sign as an xor with a mask, weights stored [K, N]",
    )
)
