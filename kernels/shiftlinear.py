"""shiftlinear: a whole shift layer in one kernel, float activations in, float outputs out, on integer dot products.

The ``shift16`` primitive's arithmetic (:class:`search_spaces.ops.shift.Shift16Linear`, whose torch integer path
is the same contract). A power-of-two weight ``sign · 2^shift`` with ``shift`` in ``[-14, 0]`` is the exact int16
``w = sign · 2^(shift + 14)`` times ``2^-14``, so the layer is an integer matrix product once its activations are
integers. Each row (token) of ``X`` is put in block floating point: one power-of-two scale ``2^e`` per row, chosen
from the row's largest magnitude so that every ``|x · 2^-e| < 2^b``, and rounded to int16 mantissas. ``b`` (at most
15) is the layer's activation bits, the widest for which no int32 sum can overflow with these weights
(:func:`~search_spaces.ops.shift.activation_bits`), an input of the kernel. Then

    Y[i, j] = float(Σ_k xq[i, k] · w[j, k]) · 2^(e_i - 14) + bias[j]

Every step but the last rounding is exact: scaling by a power of two, rounding half to even, the int32 sum; the
final ``float · 2^n + bias`` rounds once whether or not the compiler fuses it into an FMA, so the kernel equals
:func:`reference` bit for bit.

One kernel call does it all: the row maxima and exponents, the int16 mantissas (into a small padded buffer), the
product, and the rescale and bias as each output tile leaves the registers. The product runs the CPU's integer dot
product: pairs of int16 products summed into int32 lanes (AVX2 ``vpmaddwd`` on 8 lanes, AVX-512 ``vpmaddwd`` on 16,
which LLVM fuses with the accumulation into VNNI's ``vpdpwssd`` where the CPU has it), two terms per lane per
instruction where the ``matshift`` kernel does one term in three. Weights are packed offline as
``[⌈N/16⌉, ⌈K/2⌉, 16, 2]`` int16 (:func:`pack`): 16 outputs by 2 terms, the operand of one 512-bit dot product.
"""

from __future__ import annotations

import numpy as np
import torch

from search_spaces.ops.shift import SCALE_RANGE, WEIGHT_EXP16, activation_bits, int16_weights, shift16_matmul

from .definition import Definition, register
from .lazy import lazy_import

te = lazy_import("tvm.te")
tirx = lazy_import("tvm.tirx")
codegen = lazy_import("tvm.target.codegen")
s_tir = lazy_import("tvm.s_tir")
T = lazy_import("tvm.script.tirx")

LANES = 16  # outputs per weight tile: one 512-bit vector of int32 (two 256-bit ones on AVX2)
PAIR = 2  # terms per int32 lane of one dot-product instruction


def pack(weights: np.ndarray) -> np.ndarray:
    """Int16 weights ``[N, K]`` (:func:`~search_spaces.ops.shift.int16_weights`) as the kernel's
    ``[⌈N/16⌉, ⌈K/2⌉, 16, 2]`` tiles, zero-padded."""
    n, k = weights.shape
    tiles, pairs = -(-n // LANES), -(-k // PAIR)
    padded = np.zeros((tiles * LANES, pairs * PAIR), dtype=np.int16)
    padded[:n, :k] = weights
    return np.ascontiguousarray(padded.reshape(tiles, LANES, pairs, PAIR).transpose(0, 2, 1, 3))


def unpack(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    tiles, pairs = packed.shape[:2]
    return np.ascontiguousarray(packed.transpose(0, 2, 1, 3).reshape(tiles * LANES, pairs * PAIR)[:n, :k])


def reference(M, K, N, x: np.ndarray, packed: np.ndarray, bits: np.ndarray, bias: np.ndarray) -> np.ndarray:
    weights = torch.from_numpy(unpack(packed, N, K))
    return shift16_matmul(torch.from_numpy(x), weights, int(bits[0]), torch.from_numpy(bias)).numpy()


def _args(M, K, N, dtype):
    tiles, pairs = -(-N // LANES), -(-K // PAIR)
    return [("X", (M, K), "float32"), ("W", (tiles, pairs, LANES, PAIR), "int16"), ("bits", (1,), "int32"),
            ("bias", (N,), "float32"), ("Y", (M, N), "float32")]


def row_tile(M: int) -> int:
    """Rows of one register tile (the mantissa buffer is padded to a multiple of it)."""
    return 4 if M >= 4 else 1


def _compute(M: int, K: int, N: int, dtype: str = "float32"):
    tiles, pairs = -(-N // LANES), -(-K // PAIR)
    rows = -(-M // row_tile(M)) * row_tile(M)
    X = te.placeholder((M, K), "float32", name="X")
    W = te.placeholder((tiles, pairs, LANES, PAIR), "int16", name="W")
    bits = te.placeholder((1,), "int32", name="bits")
    bias = te.placeholder((N,), "float32", name="bias")

    def pow2(exponent):
        return tirx.reinterpret("float32", (exponent + 127) << 23)

    # padding rows repeat the last row (their sums are never written out), so no loop over rows branches; only an
    # odd K pads a column, which must be zero
    k = te.reduce_axis((0, K), name="k")
    peak = te.compute((rows,), lambda i: te.max(te.abs(X[tirx.min(i, M - 1), k]), axis=k), name="peak")
    lo, hi = tirx.const(2.0**-SCALE_RANGE, "float32"), tirx.const(2.0**SCALE_RANGE, "float32")
    e = te.compute((rows,), lambda i: ((tirx.reinterpret("int32", te.min(te.max(peak[i], lo), hi)) >> 23) & 255)
                   - 126 - bits[0], name="e")

    def mantissa(i, kk):
        limit = ((tirx.const(1, "int32") << bits[0]) - 1).astype("float32")
        value = te.min(te.max(te.round(X[tirx.min(i, M - 1), kk] * pow2(-e[i])), -limit), limit).astype("int16")
        return value if K % PAIR == 0 else tirx.if_then_else(kk < K, value, tirx.const(0, "int16"))

    xq = te.compute((rows, pairs * PAIR), mantissa, name="xq")
    r = te.reduce_axis((0, pairs * PAIR), name="r")
    acc = te.compute((rows, tiles * LANES), lambda i, j: te.sum(
        xq[i, r].astype("int32") * W[j // LANES, r // PAIR, j % LANES, r % PAIR].astype("int32"), axis=r),
        name="acc")
    Y = te.compute((M, N), lambda i, j: acc[i, j].astype("float32") * pow2(e[i] + WEIGHT_EXP16) + bias[j], name="Y")
    return te.create_prim_func([X, W, bits, bias, Y])


def _intrinsic(target) -> str | None:
    """The tensor intrinsic of one 16-output × 2-term dot product for this CPU (registered on first use), or None
    where it has neither AVX2 nor AVX-512BW (TVM's vectorizer then does what it can)."""

    if target is None or target.kind.name != "llvm":
        return None
    if codegen.target_has_features("avx512bw", target):
        return _register_intrinsic("avx512")
    if codegen.target_has_features("avx2", target):
        return _register_intrinsic("avx2")
    return None


_INTRINSICS: dict[str, str] = {}


def _register_intrinsic(isa: str) -> str:
    if isa in _INTRINSICS:
        return _INTRINSICS[isa]

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((PAIR,), "int16", offset_factor=1), B: T.Buffer((LANES, PAIR), "int16", offset_factor=1),
             C: T.Buffer((LANES,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:PAIR], B[0:LANES, 0:PAIR])
            T.writes(C[0:LANES])
            for i in T.serial(0, LANES):
                for k in T.serial(0, PAIR):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    if isa == "avx512":
        @T.prim_func(s_tir=True)
        def impl(A: T.Buffer((PAIR,), "int16", offset_factor=1), B: T.Buffer((LANES, PAIR), "int16", offset_factor=1),
                 C: T.Buffer((LANES,), "int32", offset_factor=1, scope="local")) -> None:
            with T.sblock("root"):
                T.reads(C[0:LANES], A[0:PAIR], B[0:LANES, 0:PAIR])
                T.writes(C[0:LANES])
                pair = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 16),
                                     dtype="int16x32")
                C[T.ramp(T.int32(0), 1, 16)] += T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddw.d.512"), pair,
                    B.vload([0, 0], dtype="int16x32"), dtype="int32x16")
    else:
        @T.prim_func(s_tir=True)
        def impl(A: T.Buffer((PAIR,), "int16", offset_factor=1), B: T.Buffer((LANES, PAIR), "int16", offset_factor=1),
                 C: T.Buffer((LANES,), "int32", offset_factor=1, scope="local")) -> None:
            with T.sblock("root"):
                T.reads(C[0:LANES], A[0:PAIR], B[0:LANES, 0:PAIR])
                T.writes(C[0:LANES])
                pair = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 8),
                                     dtype="int16x16")
                C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pair,
                    B.vload([0, 0], dtype="int16x16"), dtype="int32x8")
                C[T.ramp(T.int32(8), 1, 8)] += T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pair,
                    B.vload([8, 0], dtype="int16x16"), dtype="int32x8")

    name = f"shiftadd_dot_{LANES}x{PAIR}_i16_{isa}"
    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    _INTRINSICS[isa] = name
    return name


def _cpu_schedule(mod, M: int, K: int, N: int, target=None):
    """One parallel loop over tiles of 4 rows: each tile's maxima and mantissas, its product in register tiles of
    4 rows × up to 64 outputs accumulated over all of ``K`` with the CPU's dot-product instruction, then its rescale
    and bias. A tile's mantissas and sums stay in L1; the weights (``K · N`` int16: a few hundred KiB at ViT sizes)
    in L2."""

    sch = s_tir.Schedule(mod)
    tiles = -(-N // LANES)
    _schedule(sch, K, row_tile(M), next(v for v in (4, 2, 1) if tiles % v == 0), target)
    return sch.mod


def _tune_space(M: int, K: int, N: int, target):
    """MetaSchedule's space for this kernel (its generic rules cannot schedule it): the hand-written schedule with
    its rows per tile (1, 2 or 4) and output vectors per register tile (those of 1, 2, 3, 4, 6 that divide
    ``⌈N/16⌉``) drawn per trial, so tuning measures which tile is fastest here (4 rows × 6 vectors, 24 accumulators,
    measured up to 10-20 % faster than the default's 4 × 4 on an Intel Xeon with AVX-512; on AVX2's 16 registers it
    spills, and tuning measures that too)."""
    tiles = -(-N // LANES)
    row_options = [r for r in (1, 2, 4) if r <= row_tile(M)]
    # 3 and 6 after the first three: a stored trace's choice is an index into this list, which keeps its meaning
    vec_options = [v for v in (1, 2, 4, 3, 6) if tiles % v == 0]
    _intrinsic(target)  # registered here too: a tuning record names it, and is replayed in a later process

    def space(sch) -> None:
        rows = sch.sample_categorical(row_options, [1 / len(row_options)] * len(row_options))
        vecs = sch.sample_categorical(vec_options, [1 / len(vec_options)] * len(vec_options))
        _schedule(sch, K, rows, vecs, target)

    return space


def _schedule(sch, K: int, rows, vecs, target) -> None:
    """The schedule with ``rows`` per tile and ``vecs`` 16-output vectors per register tile (integers, or a
    tuning trace's sampled values). Built outward from the maxima, since each later stage reads what the tile
    computed before it."""
    peak, xq, acc, out = (sch.get_sblock(name) for name in ("peak", "xq", "acc", "Y"))
    sch.compute_inline(sch.get_sblock("e"))
    tile, _, k = sch.split(sch.get_loops(peak)[0], [None, rows]) + sch.get_loops(peak)[-1:]
    for block in (xq, acc, out):
        sch.reverse_compute_at(block, tile, preserve_unit_loops=True)
    lanes = next((v for v in (16, 8, 4, 2) if K % v == 0), None)
    if lanes is not None:  # each row's maximum in vector lanes (partial maxima, then across them)
        partial = sch.rfactor(sch.split(k, [None, lanes])[1], factor_axis=0)
        sch.vectorize(sch.get_loops(partial)[-1])
    sch.vectorize(sch.get_loops(xq)[-1])
    sch.vectorize(sch.get_loops(out)[-1])

    i, j, r = sch.get_loops(acc)[1:]
    jo, jt, ji = sch.split(j, [None, vecs, LANES])
    ro, ri = sch.split(r, [None, PAIR])
    intrinsic = _intrinsic(target)
    # with a dot-product instruction (ji, ri) is one of them; without, the lanes are the outputs
    sch.reorder(jo, ro, i, jt, ji, ri) if intrinsic is not None else sch.reorder(jo, ro, ri, i, jt, ji)
    local = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(local, jo)
    sch.vectorize(sch.get_loops(local)[-1])
    sch.unroll(i)
    sch.unroll(jt)
    if intrinsic is None:
        sch.vectorize(ji)
    sch.parallel(tile)
    sch.decompose_reduction(acc, ro)
    if intrinsic is not None:
        sch.tensorize(ji, intrinsic)


def _layer(shift: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The packed weights and activation bits of shift codes ``[N, K]``."""
    weights = int16_weights(torch.from_numpy(shift), torch.from_numpy(sign))
    return pack(weights.numpy()), np.array([activation_bits(weights)], np.int32)


def random_inputs(M, K, N, dtype, rng):
    x = (rng.standard_normal((M, K)) * rng.uniform(0.01, 100, (M, 1))).astype(np.float32)
    shift = rng.integers(WEIGHT_EXP16, 1, (N, K)).astype(np.int8)
    sign = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(N, K), p=[0.45, 0.1, 0.45])
    return [x, *_layer(shift, sign), rng.standard_normal(N).astype(np.float32)]


def extreme_inputs(M, K, N, dtype, rng):
    """A row of zeros, values past the clamped scale range (saturating) and below it, ties at half a mantissa step,
    and every weight at the largest magnitude (the fewest activation bits)."""
    x = rng.choice(np.array([0.0, 2.0**70, -(2.0**70), 2.0**-70, 1.5, -2.5, 0.5, 1.0], dtype=np.float32), (M, K))
    x[0] = 0.0
    sign = rng.choice(np.array([-1, 1], dtype=np.int8), (N, K))
    return [x, *_layer(np.zeros((N, K), np.int8), sign), np.zeros(N, np.float32)]


register(
    Definition(
        kernel="shiftlinear",
        variant="i16",
        dtypes=("float32",),
        args=_args,
        compute=_compute,
        reference=reference,
        random_inputs=random_inputs,
        extreme_inputs=extreme_inputs,
        cpu_schedule=_cpu_schedule,
        tune_space=_tune_space,
        exact=True,
        # 32-bit lanes: a dot-product instruction does two terms per lane (the product and the sum)
        ops=lambda M, K, N: M * K * N // 2 + 4 * M * K + 2 * M * N,
        doc="a whole shift layer, float in and out: int16 block-floating-point activations, int16 dot products",
    )
)
