"""additive: additive attention's whole token mixing in one kernel, from the qkv projection's output to the heads'.

The ``additive`` attention primitive (:class:`search_spaces.ops.attention.AdditiveAttention`, whose torch code,
:func:`~search_spaces.ops.attention.angular_codes` and :func:`~search_spaces.ops.attention.angular_mix`, is the
reference). Per image ``b`` and head ``h``, with ``q, k, v`` the head's ``[T, D]`` slices of ``QKV[b, :, 0|1|2, h]``:

    q_b = binarize(q / (|q| + eps)),  k_b = binarize(k / (|k| + eps))       codes in {0, 1}
    y   = 0.5 · v + (1/π) · q_b (k_bᵀ v)                                    two binary × real products
    out = y / (|y| + eps) + dwconv(v)                                       9 taps per head, over tokens

``binarize`` compares with the mean of every normalized value of all images and heads (``kind`` 0, ``tensor``) or
with each token's own mean over its head (``kind`` 1, ``token``): ``kind`` is an input, so one compiled kernel serves
both. The products are sums of selected rows, computed through 4-bit lookup tables (the "four Russians" method, as
``matadd``'s ``lut4``): for each group of four rows of the real operand, its 16 subset sums, built with additions
only; each output row then adds one table row per group, the one its four codes pick as a nibble. ``k_bᵀ v`` takes
``T/4`` additions per output instead of ``T`` selected ones, ``q_b (k_bᵀ v)`` ``D/4`` instead of ``D``.

One call replaces what the unfused attention does in torch around two ``matadd`` kernels (two L2 norms, the
binarization, the crossings into TVM with int8 copies of transposed codes, the scaled sum, the norm, the conv) and
reads ``QKV`` in the layout the projection writes it (``[B, T, 3, H, D]``), writing ``[B, T, H, D]``, which the
output projection reads as ``[B, T, C]``: no transposes.

As a task: M is the tokens ``T``, K the head dimension ``D``, N the heads ``H``, ``batch`` the images ``B`` (one
problem: the ``tensor`` mean spans them). The result equals the torch attention within float32 rounding (a code
whose normalized value lies within a rounding of its threshold may differ).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from search_spaces.ops.attention import BINARIZE_KINDS, EPS, TOKEN_CONV_TAPS, angular_codes, angular_mix

from .definition import Definition, register
from .lazy import lazy_import

te = lazy_import("tvm.te")
tirx = lazy_import("tvm.tirx")
s_tir = lazy_import("tvm.s_tir")

TAPS = TOKEN_CONV_TAPS  # the depthwise conv's taps the kernel takes (other sizes run unfused)


def _args(M, K, N, dtype, batch=1):
    return [("QKV", (batch, M, 3, N, K), "float32"), ("taps", (N, TAPS), "float32"), ("kind", (1,), "int32"),
            ("Y", (batch, M, N, K), "float32")]


def _compute(B: int, T: int, D: int, H: int, dtype: str = "float32"):
    QKV = te.placeholder((B, T, 3, H, D), "float32", name="QKV")
    W = te.placeholder((H, TAPS), "float32", name="taps")
    kind = te.placeholder((1,), "int32", name="kind")

    def f32(value):
        return tirx.const(value, "float32")

    d = te.reduce_axis((0, D), name="d")
    # per row of q (s = 0) and k (s = 1): its sum of squares (w = 0) and its sum (w = 1), in one pass
    stats = te.compute((B, T, 2, H, 2), lambda b, t, s, h, w: te.sum(
        tirx.Select(w == 0, QKV[b, t, s, h, d], f32(1.0)) * QKV[b, t, s, h, d], axis=d), name="stats")
    inv = te.compute((B, T, 2, H), lambda b, t, s, h: f32(1.0) / (te.sqrt(stats[b, t, s, h, 0]) + f32(EPS)),
                     name="inv")
    rb, rt, rh = te.reduce_axis((0, B), name="rb"), te.reduce_axis((0, T), name="rt"), te.reduce_axis((0, H), name="rh")
    total = te.compute((2,), lambda s: te.sum(stats[rb, rt, s, rh, 1] * inv[rb, rt, s, rh], axis=[rb, rt, rh]),
                       name="total")
    thr = te.compute((B, T, 2, H), lambda b, t, s, h: tirx.Select(
        kind[0] == 0, total[s] / f32(float(B * T * H * D)), stats[b, t, s, h, 1] * inv[b, t, s, h] / f32(float(D))),
        name="thr")

    def code(b, t, s, h, i):
        return (QKV[b, t, s, h, i] * inv[b, t, s, h] > thr[b, t, s, h]).astype("int32")

    # the products through 4-bit lookup tables ("four Russians", as matadd's lut4): per group of four rows of the
    # real operand, its 16 subset sums (additions only); each output row then adds one table row per group, picked
    # by the four codes as a nibble. Rows past the end repeat the last one in the tables; their code bits are 0, so
    # no nibble picks them.
    skip = f32(-0.0)  # x + -0.0 is x for every x: a select of it folds into the add

    def table(rows, count, b, h, g, c, j):
        subset_sum = None
        for bit in range(4):
            term = tirx.Select(((c >> bit) & 1) != 0, rows(b, h, tirx.min(4 * g + bit, count - 1), j), skip)
            subset_sum = term if subset_sum is None else subset_sum + term
        return subset_sum

    def nibble(bits, count, g):
        out = tirx.const(0, "int32")
        for bit in range(4):
            at = 4 * g + bit
            out = out | (tirx.Select(at < count, bits(tirx.min(at, count - 1)), 0) << bit)
        return out

    groups_t, groups_d = -(-T // 4), -(-D // 4)
    tv = te.compute((B, H, groups_t, 16, D), lambda b, h, g, c, j: table(
        lambda b, h, t, j: QKV[b, t, 2, h, j], T, b, h, g, c, j), name="tv")
    nib_k = te.compute((B, H, groups_t, D), lambda b, h, g, i: nibble(lambda t: code(b, t, 1, h, i), T, g),
                       name="nib_k")
    g1 = te.reduce_axis((0, groups_t), name="g1")
    kv = te.compute((B, H, D, D), lambda b, h, i, j: te.sum(tv[b, h, g1, nib_k[b, h, g1, i], j], axis=g1), name="kv")
    tk = te.compute((B, H, groups_d, 16, D), lambda b, h, g, c, j: table(
        lambda b, h, i, j: kv[b, h, i, j], D, b, h, g, c, j), name="tk")
    nib_q = te.compute((B, T, H, groups_d), lambda b, t, h, g: nibble(lambda i: code(b, t, 0, h, i), D, g),
                       name="nib_q")
    g2 = te.reduce_axis((0, groups_d), name="g2")
    qkv = te.compute((B, T, H, D), lambda b, t, h, j: te.sum(tk[b, h, g2, nib_q[b, t, h, g2], j], axis=g2),
                     name="qkv")
    mixed = te.compute((B, T, H, D), lambda b, t, h, j: f32(0.5) * QKV[b, t, 2, h, j] + qkv[b, t, h, j]
                       * f32(1 / math.pi), name="mixed")
    d3 = te.reduce_axis((0, D), name="d3")
    ysq = te.compute((B, T, H), lambda b, t, h: te.sum(mixed[b, t, h, d3] * mixed[b, t, h, d3], axis=d3), name="ysq")
    yinv = te.compute((B, T, H), lambda b, t, h: f32(1.0) / (te.sqrt(ysq[b, t, h]) + f32(EPS)), name="yinv")
    r = te.reduce_axis((0, TAPS), name="r")

    def tap(b, t, h, j):
        src = t + r - TAPS // 2  # zero padding: a tap outside the tokens weighs 0
        inside = tirx.all(src >= 0, src < T)
        return te.sum(tirx.Select(inside, W[h, r], f32(0.0)) * QKV[b, tirx.min(tirx.max(src, 0), T - 1), 2, h, j],
                      axis=r)

    conv = te.compute((B, T, H, D), tap, name="conv")
    Y = te.compute((B, T, H, D), lambda b, t, h, j: mixed[b, t, h, j] * yinv[b, t, h] + conv[b, t, h, j], name="Y")
    return te.create_prim_func([QKV, W, kind, Y])


def _lanes(D: int) -> int:
    return next(v for v in (16, 8, 4, 2, 1) if D % v == 0)


def _cols(D: int) -> int:
    """Outputs of a register tile's row: a divisor of ``D`` up to 64 (four 512-bit vectors)."""
    return next((c for c in (64, 32, 16, 8) if D % c == 0), min(D, 64))


def _schedule(sch, D: int, kv_rows) -> None:
    """Four parallel loops: per (image, token), the rows' statistics (sums in vector lanes); per (image, head, group of
    four tokens), the table of ``v``; ``k_bᵀ v`` in register tiles of ``kv_rows`` × up to 64 outputs, each tile
    computing its own nibbles of the key codes; per (image, head, group of four dims), the table of ``k_bᵀ v``; per
    (image, token): the nibbles of its query codes, its product row, the norm, the conv and the output, vectorized
    over the head dimension. ``kv_rows`` is an integer, or a tuning trial's sampled value."""
    lanes, cols = _lanes(D), _cols(D)

    def row_sum_in_lanes(block) -> str:  # partial sums per vector lane (rfactor), then across them
        if lanes == 1:
            return sch.get(block).name_hint
        k = sch.get_loops(block)[-1]
        partial = sch.rfactor(sch.split(k, [None, lanes])[1], factor_axis=0)
        sch.vectorize(sch.get_loops(partial)[-1])
        return sch.get(partial).name_hint

    def table(name) -> None:  # 16 subset sums per group: unrolled, each a constant subset of four rows
        b, h, g, c, j = sch.get_loops(sch.get_sblock(name))
        sch.unroll(c)
        sch.vectorize(j)
        sch.parallel(sch.fuse(b, h, g))

    stats = row_sum_in_lanes(sch.get_sblock("stats"))
    b, t, *_ = sch.get_loops(sch.get_sblock(stats))
    row = sch.fuse(b, t)
    for name in ("stats", "inv") if stats != "stats" else ("inv",):  # after the partial sums, when there are any
        sch.reverse_compute_at(sch.get_sblock(name), row)
    sch.parallel(row)
    sch.compute_inline(sch.get_sblock("thr"))
    table("tv")
    kv = sch.get_sblock("kv")
    *outer, i, j, k = sch.get_loops(kv)
    io, ii = sch.split(i, [None, kv_rows])
    jo, ji = sch.split(j, [None, cols])
    sch.reorder(*outer, io, jo, k, ii, ji)
    local = sch.cache_write(kv, 0, "local")
    sch.reverse_compute_at(local, jo)
    sch.vectorize(ji)
    sch.unroll(ii)
    sch.vectorize(sch.get_loops(local)[-1])
    tile = sch.fuse(*outer, io, jo)
    sch.parallel(tile)
    sch.compute_at(sch.get_sblock("nib_k"), tile)
    sch.decompose_reduction(kv, k)
    table("tk")
    sch.compute_inline(sch.get_sblock("mixed"))
    ysq = row_sum_in_lanes(sch.get_sblock("ysq"))
    b, t, h, j = sch.get_loops(sch.get_sblock("Y"))
    token = sch.fuse(b, t)
    sch.vectorize(j)
    for name in dict.fromkeys(("conv", "yinv", "ysq", ysq, "qkv", "nib_q")):
        sch.compute_at(sch.get_sblock(name), token, preserve_unit_loops=True)
    for name in ("qkv", "conv"):  # the reduction outside, the head dimension in vector lanes
        block = sch.get_sblock(name)
        h, j, k = sch.get_loops(block)[-3:]
        sch.reorder(h, k, j)
        sch.vectorize(j)
    sch.parallel(token)
    for name in ("qkv", "conv"):
        block = sch.get_sblock(name)
        sch.decompose_reduction(block, sch.get_loops(block)[-2])


def _kv_rows(D: int) -> int:
    return min(D, 16, max(1, 256 // _cols(D)))  # up to 16 accumulators of 16 lanes


def _cpu_schedule(mod, M: int, K: int, N: int, target=None):
    sch = s_tir.Schedule(mod)
    _schedule(sch, K, _kv_rows(K))
    return sch.mod


def _tune_space(M: int, K: int, N: int, target):
    """MetaSchedule's space for this kernel (its generic rules do not schedule a multi-stage workload like this
    well): the hand schedule with the register tile's rows of ``k_bᵀ v`` drawn per trial."""
    options = sorted({r for r in (1, 2, 4, 8, 16) if r <= K} | {_kv_rows(K)})

    def space(sch) -> None:
        _schedule(sch, K, sch.sample_categorical(options, [1 / len(options)] * len(options)))

    return space


def _ops(T: int, D: int, H: int) -> int:
    """Per image, in 32-bit lanes: each product's tables (17 additions per 16 entries of a group, per output) and
    one addition per group per output; norms, codes, output and the 9-tap conv per element."""
    groups_t, groups_d = -(-T // 4), -(-D // 4)
    products = (groups_t * 17 * D + D * groups_t * D) + (groups_d * 17 * D + T * groups_d * D)
    return H * products + (12 + 2 * TAPS) * H * T * D


def reference(M, K, N, qkv: np.ndarray, taps: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """The torch attention's mixing (:func:`~search_spaces.ops.attention.angular_mix`) on the kernel's layout."""
    x = torch.from_numpy(qkv)
    q, k, v = x.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, T, D] each
    with torch.no_grad():
        q_b, k_b = angular_codes(q, k, BINARIZE_KINDS[int(kind[0])])
        out = angular_mix(q_b, k_b, v, torch.from_numpy(taps)[:, None, :, None])
    return out.transpose(1, 2).contiguous().numpy()


def random_inputs(M, K, N, dtype, rng, batch=1):
    qkv = rng.standard_normal((batch, M, 3, N, K)).astype(np.float32)
    return [qkv, (0.1 * rng.standard_normal((N, TAPS))).astype(np.float32), np.array([rng.integers(0, 2)], np.int32)]


register(
    Definition(
        kernel="additive",
        variant="lut4",
        dtypes=("float32",),
        args=_args,
        compute=lambda M, K, N, dtype="float32": _compute(1, M, K, N, dtype),
        batched_compute=_compute,
        whole_batch=True,
        reference=reference,
        random_inputs=random_inputs,
        cpu_schedule=_cpu_schedule,
        tune_space=_tune_space,
        ops=_ops,
        doc="additive attention's whole token mixing, qkv in, heads out: codes, two products through 4-bit tables, "
            "norm, conv",
    )
)
