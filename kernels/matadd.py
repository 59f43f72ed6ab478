"""matadd: the products of additive attention, where one operand is binary, so no multiplication is needed.

- ``binary_real``: ``Y[M, N] = B[M, K] · V[K, N]`` with ``B`` in {0, 1} (int8): each output row is the sum of the rows
  of ``V`` that ``B`` selects. Both attention products are of this form: ``K_bᵀ V`` (M = head dim, K = tokens) and
  ``Q_b (K_bᵀ V)`` (M = tokens, K = head dim). ``V`` is float32, or int32 fixed point (bit-exact).
- ``lut4``: the same product through lookup tables (the "four Russians" method): the rows of ``V`` are taken four at
  a time and all 16 subset sums of each group are built once (additions only); each output row is then the sum of
  one table row per group, picked by a 4-bit code of ``B`` (:func:`pack_nibbles`). ``K/4`` additions per output
  instead of ``K`` masked ones.
- ``packed_popcount``: binary × binary similarity on bit-packed codes, ``Y[i, j] = K − 2·popcount(Q[i] xor C[j])``
  (the ±1 dot product of the codes) with ``Q [M, ⌈K/64⌉]`` and ``C [N, ⌈K/64⌉]`` uint64 words (:func:`pack_bits`).
"""

from __future__ import annotations

import numpy as np

from .definition import Definition, register
from .lazy import lazy_import

tvm = lazy_import("tvm")
te = lazy_import("tvm.te")
s_tir = lazy_import("tvm.s_tir")

WORD_BITS = 64


def words(bits: int) -> int:
    return -(-bits // WORD_BITS)


def _zero_padded(codes: np.ndarray, group: int) -> np.ndarray:
    """{0, 1} codes ``[R, K]`` as uint8 0/1, zero-padded to a multiple of ``group`` columns."""
    rows, bits = codes.shape
    padded = np.zeros((rows, -(-bits // group) * group), dtype=np.uint8)
    padded[:, :bits] = codes != 0
    return padded


def pack_bits(codes: np.ndarray) -> np.ndarray:
    """{0, 1} codes ``[R, K]`` to uint64 words ``[R, ⌈K/64⌉]``, bit ``k % 64`` of word ``k // 64``; padding is zero."""
    rows = codes.shape[0]
    padded = _zero_padded(codes, WORD_BITS)
    little = np.packbits(padded.reshape(rows, -1, 8), axis=-1, bitorder="little")  # [R, words * 8] bytes
    return np.ascontiguousarray(little.reshape(rows, -1)).view(np.uint64)


# ---- binary x real ---------------------------------------------------------------------------------------------
def _binary_real_args(M, K, N, dtype):
    return [("B", (M, K), "int8"), ("V", (K, N), dtype), ("Y", (M, N), dtype)]


def _binary_real(M: int, K: int, N: int, dtype: str = "float32"):
    B = te.placeholder((M, K), "int8", name="B")
    V = te.placeholder((K, N), dtype, name="V")
    k = te.reduce_axis((0, K), name="k")
    zero = te.const(0, dtype)
    Y = te.compute((M, N), lambda i, j: te.sum(tvm.tirx.Select(B[i, k] != 0, V[k, j], zero), axis=k), name="Y")
    return te.create_prim_func([B, V, Y])


def _binary_real_batched(batch: int, M: int, K: int, N: int, dtype: str = "float32"):
    """``batch`` independent products in one call: every (image, head) of an additive attention at once."""
    B = te.placeholder((batch, M, K), "int8", name="B")
    V = te.placeholder((batch, K, N), dtype, name="V")
    k = te.reduce_axis((0, K), name="k")
    zero = te.const(0, dtype)
    Y = te.compute((batch, M, N), lambda b, i, j: te.sum(tvm.tirx.Select(B[b, i, k] != 0, V[b, k, j], zero), axis=k),
                   name="Y")
    return te.create_prim_func([B, V, Y])


def _binary_real_cpu_schedule(mod, M: int, K: int, N: int, target=None):
    """A register-tiled schedule for ``binary_real`` (one product or a batch): a tile of ``rows x cols`` outputs
    accumulated in registers over all of ``k``, the ``cols`` outputs vectorized (the code ``B[i, k]`` broadcast as
    a blend mask against a contiguous row of ``V``), tiles of every product of the batch spread over the cores. Each
    output still sums its terms in order of ``k``, so the result is the default schedule's, bit for bit. Used
    untuned (TVM's default runs the loop nest serially: 2-3 ms of a DeiT-Tiny additive attention's 3.8); None when
    ``N`` has no multiple-of-8 tile. The computation selects with ``Select``, not ``if_then_else``: LLVM turns the
    latter into a branch per code, which random codes mispredict half the time (3-10x slower at large batches)."""

    cols = next((c for c in (64, 32, 16, 8) if N % c == 0), None)
    if cols is None:
        return None
    rows = min(M, max(1, 256 // cols))  # up to 16 accumulators of 16 lanes
    sch = s_tir.Schedule(mod)
    y = sch.get_sblock("Y")
    *batch, i, j, k = sch.get_loops(y)
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, cols])
    sch.reorder(*batch, io, jo, k, ii, ji)
    local = sch.cache_write(y, 0, "local")
    sch.reverse_compute_at(local, jo)
    sch.vectorize(ji)
    sch.unroll(ii)
    sch.vectorize(sch.get_loops(local)[-1])
    sch.parallel(sch.fuse(*batch, io, jo))
    sch.decompose_reduction(y, k)
    return sch.mod


def _binary_real_reference(M, K, N, b: np.ndarray, v: np.ndarray) -> np.ndarray:
    if v.dtype == np.int32:
        return ((b != 0).astype(np.int64) @ v.astype(np.int64)).astype(np.int32)
    return ((b != 0).astype(np.float64) @ v.astype(np.float64)).astype(v.dtype)


def _binary_real_inputs(M, K, N, dtype, rng):
    b = (rng.random((M, K)) < 0.5).astype(np.int8)
    if dtype == "int32":
        return [b, rng.integers(-(2**20), 2**20, (K, N), dtype=np.int32)]
    return [b, rng.standard_normal((K, N)).astype(dtype)]


register(
    Definition(
        kernel="matadd",
        variant="binary_real",
        dtypes=("float32", "int32"),
        args=_binary_real_args,
        compute=_binary_real,
        batched_compute=_binary_real_batched,
        reference=_binary_real_reference,
        random_inputs=_binary_real_inputs,
        cpu_schedule=_binary_real_cpu_schedule,
        ops=lambda M, K, N: 2 * M * K * N,  # blend + add per term
        doc="binary {0,1} x real: masked row sums",
    )
)


# ---- binary x real through 4-bit lookup tables ------------------------------------------------------------------
NIBBLE = 4


def nibbles(bits: int) -> int:
    return -(-bits // NIBBLE)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """{0, 1} codes ``[R, K]`` to uint8 ``[R, ⌈K/4⌉]``: bit ``b`` of entry ``g`` is code ``4g + b``; padding is zero."""
    padded = _zero_padded(codes, NIBBLE)
    bits = padded.reshape(codes.shape[0], -1, NIBBLE) << np.arange(NIBBLE, dtype=np.uint8)
    return np.bitwise_or.reduce(bits, axis=-1).astype(np.uint8)


def _lut_args(M, K, N, dtype):
    return [("C", (M, nibbles(K)), "uint8"), ("V", (K, N), dtype), ("Y", (M, N), dtype)]


def _lut4(M: int, K: int, N: int, dtype: str = "float32"):
    groups = nibbles(K)
    C = te.placeholder((M, groups), "uint8", name="C")
    V = te.placeholder((K, N), dtype, name="V")
    zero = te.const(0, dtype)

    def row_if_set(g, c, j, b):
        k = NIBBLE * g + b
        selected = tvm.tirx.all(((c >> b) & 1) == 1, k < K)
        return te.if_then_else(selected, V[tvm.tirx.min(k, K - 1), j], zero)

    # T[g, c, :] = sum of the rows of group g whose bits are set in c: 16 subset sums per group, additions only
    T = te.compute((groups, 1 << NIBBLE, N),
                   lambda g, c, j: sum(row_if_set(g, c, j, b) for b in range(NIBBLE)), name="T")
    r = te.reduce_axis((0, groups), name="g")
    Y = te.compute((M, N), lambda i, j: te.sum(T[r, C[i, r].astype("int32"), j], axis=r), name="Y")
    return te.create_prim_func([C, V, Y])


def _unpack_nibbles(c: np.ndarray, bits: int) -> np.ndarray:
    unpacked = (c[:, :, None] >> np.arange(NIBBLE, dtype=np.uint8)) & 1
    return unpacked.reshape(c.shape[0], -1)[:, :bits]


def _lut_reference(M, K, N, c: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _binary_real_reference(M, K, N, _unpack_nibbles(c, K), v)


def _lut_inputs(M, K, N, dtype, rng):
    b, v = _binary_real_inputs(M, K, N, dtype, rng)
    return [pack_nibbles(b), v]


register(
    Definition(
        kernel="matadd",
        variant="lut4",
        dtypes=("float32", "int32"),
        args=_lut_args,
        compute=_lut4,
        reference=_lut_reference,
        random_inputs=_lut_inputs,
        # tables: 16 entries x (4 blends + 3 adds) per group and column; outputs: one add per group
        ops=lambda M, K, N: nibbles(K) * N * ((1 << NIBBLE) * 7 + M),
        doc="binary {0,1} x real through 4-bit subset-sum tables",
    )
)


# ---- binary x binary, bit-packed ---------------------------------------------------------------------------------
def _packed_args(M, K, N, dtype):
    w = words(K)
    return [("Q", (M, w), "uint64"), ("C", (N, w), "uint64"), ("Y", (M, N), "int32")]


def _packed_popcount(M: int, K: int, N: int, dtype: str = "uint64"):
    w = words(K)
    Q = te.placeholder((M, w), "uint64", name="Q")
    C = te.placeholder((N, w), "uint64", name="C")
    r = te.reduce_axis((0, w), name="r")
    hamming = te.compute(
        (M, N), lambda i, j: te.sum(te.popcount(Q[i, r] ^ C[j, r]).astype("int32"), axis=r), name="H"
    )
    Y = te.compute((M, N), lambda i, j: te.const(K, "int32") - 2 * hamming[i, j], name="Y")
    return te.create_prim_func([Q, C, Y])


def _popcount_u64(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8), axis=-1).reshape(*x.shape, 64).sum(-1)


def packed_reference(M, K, N, q: np.ndarray, c: np.ndarray) -> np.ndarray:
    hamming = _popcount_u64(q[:, None, :] ^ c[None, :, :]).sum(-1)
    return (K - 2 * hamming).astype(np.int32)


def _packed_inputs(M, K, N, dtype, rng):
    q = pack_bits((rng.random((M, K)) < 0.5).astype(np.uint8))
    c = pack_bits((rng.random((N, K)) < 0.5).astype(np.uint8))
    return [q, c]


register(
    Definition(
        kernel="matadd",
        variant="packed_popcount",
        dtypes=("uint64",),
        args=_packed_args,
        compute=_packed_popcount,
        reference=packed_reference,
        random_inputs=_packed_inputs,
        ops=lambda M, K, N: 2 * 3 * M * N * words(K),  # xor + popcount + add per 64-bit word = two 32-bit lanes
        doc="binary x binary similarity on bit-packed codes: K - 2 popcount(q xor c)",
    )
)
