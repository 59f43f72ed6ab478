"""Operation counts: what one forward pass of a part of a model executes, by operation and data type, and the bytes
it moves. The energy estimate (:mod:`latency_model.energy`) prices them with a unit-cost table.

An :class:`OpCounts` holds

- ``ops``: a count per key ``"<operation>.<type>"``, operations :data:`OPERATIONS` (``mult``, ``add``, ``shift``,
  ``logic`` for and/xor/or, ``cmp`` for comparisons and max, ``exp`` for a transcendental: exp, erf, a reciprocal
  square root), types :data:`TYPES` (``fp32`` ... ``int8``, ``bin`` for 1-bit codes);
- ``products``: how many of those ops are the multiply-accumulates of matrix products and convolutions, counted as
  ``torch.utils.flop_counter`` counts FLOPs (two per multiply-accumulate), so a dense model's figure can be checked
  against torch's count;
- ``weight_bytes``: parameters read, at their stored width (fp32 4 bytes, a shift weight its code bits, a binary code
  1 bit);
- ``activation_bytes``: activations read and written by each op, at their width.

Counts are per forward pass of the shapes given (the batch included). A product of ``[M, K]`` by ``[K, N]`` is
``M·K·N`` multiplications and ``M·K·N`` additions (a multiply-accumulate array adds every term into its
accumulator); a bias is ``M·N`` more additions, outside ``products``. The builders below are what every primitive's
count (``Primitive.counts`` in :mod:`search_spaces.registry`) is made of.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OPERATIONS = ("mult", "add", "shift", "logic", "cmp", "exp")
TYPES = ("fp32", "fp16", "bf16", "int32", "int16", "int8", "bin")
BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "int32": 32, "int16": 16, "int8": 8, "bin": 1}
FP32 = 4  # bytes of a float32 activation or weight


def key(operation: str, dtype: str) -> str:
    """The count key ``"<operation>.<type>"``; an unknown operation or type is a ValueError naming the known ones."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r} (choose from {', '.join(OPERATIONS)})")
    if dtype not in TYPES:
        raise ValueError(f"unknown data type {dtype!r} (choose from {', '.join(TYPES)})")
    return f"{operation}.{dtype}"


@dataclass(frozen=True)
class OpCounts:
    """Operations and bytes of one forward pass of a part (see the module docstring). Counts add up with ``+`` and
    scale with ``*`` (e.g. by the share of passes an MoE expert runs in)."""

    ops: Mapping[str, float] = field(default_factory=dict)
    products: float = 0.0
    weight_bytes: float = 0.0
    activation_bytes: float = 0.0

    def __add__(self, other: "OpCounts") -> "OpCounts":
        ops = dict(self.ops)
        for name, count in other.ops.items():
            ops[name] = ops.get(name, 0.0) + count
        return OpCounts(ops, self.products + other.products, self.weight_bytes + other.weight_bytes,
                        self.activation_bytes + other.activation_bytes)

    def __sub__(self, other: "OpCounts") -> "OpCounts":
        return self + other * -1.0

    def __mul__(self, factor: float) -> "OpCounts":
        return OpCounts({k: v * factor for k, v in self.ops.items()}, self.products * factor,
                        self.weight_bytes * factor, self.activation_bytes * factor)

    __rmul__ = __mul__

    @property
    def total_ops(self) -> float:
        return sum(self.ops.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the op counts by key (operation first, sorted), the products, the bytes."""
        return {"ops": {k: round(v, 3) for k, v in sorted(self.ops.items()) if v},
                "products": round(self.products, 3), "weight_bytes": round(self.weight_bytes, 3),
                "activation_bytes": round(self.activation_bytes, 3)}


NONE = OpCounts()


def total(parts) -> OpCounts:
    """The sum of several counts."""
    out = NONE
    for part in parts:
        out = out + part
    return out


def elementwise(elements: float, dtype: str = "fp32", inputs: int = 1, **per_element: float) -> OpCounts:
    """An op over ``elements`` values that reads ``inputs`` tensors of that size and writes one, executing
    ``per_element`` operations (``add=1, mult=2``) on each value."""
    width = BITS[dtype] / 8
    return OpCounts({key(op, dtype): elements * n for op, n in per_element.items() if n},
                    activation_bytes=elements * width * (inputs + 1))


def product(m: int, k: int, n: int, batch: int = 1, dtype: str = "fp32") -> OpCounts:
    """``batch`` products of two activations ``[M, K] x [K, N]`` (attention's products)."""
    macs = batch * m * k * n
    width = BITS[dtype] / 8
    return OpCounts({key("mult", dtype): macs, key("add", dtype): macs}, 2 * macs,
                    activation_bytes=batch * (m * k + k * n + m * n) * width)


def linear(m: int, k: int, n: int, bias: bool = True) -> OpCounts:
    """A dense fp32 linear layer on ``m`` rows, ``k -> n``."""
    macs = m * k * n
    return OpCounts({"mult.fp32": macs, "add.fp32": macs + (m * n if bias else 0)}, 2 * macs,
                    weight_bytes=(k * n + (n if bias else 0)) * FP32, activation_bytes=(m * k + m * n) * FP32)


def shift_linear(m: int, k: int, n: int, weight_bits: int, bias: bool = True) -> OpCounts:
    """A shift layer (:class:`~search_spaces.ops.shift.ShiftLinear`) on ``m`` rows, ``k -> n``: activations to int32
    fixed point (one scaling each), a shift and an accumulating addition per term (the sign is the adder's add or
    subtract), the sums back to floats (one scaling each) plus the bias. Weights are read at ``weight_bits``."""
    terms = m * k * n
    return OpCounts({"shift.int32": terms, "add.int32": terms, "mult.fp32": m * k + m * n,
                     "add.fp32": m * n if bias else 0}, 2 * terms,
                    weight_bytes=k * n * weight_bits / 8 + (n if bias else 0) * FP32,
                    activation_bytes=(m * k + m * n) * FP32)


def shift16_linear(m: int, k: int, n: int, weight_bits: int, bias: bool = True) -> OpCounts:
    """A shift16 layer (:class:`~search_spaces.ops.shift.Shift16Linear`) on ``m`` rows, ``k -> n``: each row's
    maximum (a comparison per activation) and its activations scaled to int16 mantissas (one scaling each), a shift
    of a 16-bit mantissa and an int32 accumulating addition per term, the sums back to floats (one scaling each) plus
    the bias. Weights are read at ``weight_bits``, activations at 16 bits, outputs written at 32."""
    terms = m * k * n
    return OpCounts({"shift.int16": terms, "add.int32": terms, "cmp.fp32": m * k, "mult.fp32": m * k + m * n,
                     "add.fp32": m * n if bias else 0}, 2 * terms,
                    weight_bytes=k * n * weight_bits / 8 + (n if bias else 0) * FP32,
                    activation_bytes=m * k * 2 + m * n * FP32)


def int8_linear(m: int, k: int, n: int, bias: bool = True) -> OpCounts:
    """An int8 layer (:class:`~search_spaces.ops.int8.Int8Linear`) on ``m`` rows, ``k -> n``: each row's maximum (a
    comparison per activation) and its activations scaled to int8 (one scaling each), an int8 multiplication and an
    int32 accumulating addition per term, each sum back to floats by its two scales (two scalings) plus the bias.
    Weights are read at 8 bits with one fp32 scale per output, activations at 8 bits, outputs written at 32."""
    terms = m * k * n
    return OpCounts({"mult.int8": terms, "add.int32": terms, "cmp.fp32": m * k, "mult.fp32": m * k + 2 * m * n,
                     "add.fp32": m * n if bias else 0}, 2 * terms,
                    weight_bytes=k * n + n * FP32 + (n if bias else 0) * FP32,
                    activation_bytes=m * k + m * n * FP32)


def binary_product(m: int, k: int, n: int, batch: int = 1) -> OpCounts:
    """``batch`` products of 1-bit codes ``[M, K]`` with real values ``[K, N]``: each output sums the value rows its
    code selects, one fp32 addition per term and no multiplication (additive attention)."""
    terms = batch * m * k * n
    return OpCounts({"add.fp32": terms}, terms,
                    activation_bytes=batch * (m * k / 8 + (k * n + m * n) * FP32))


def conv(positions: int, in_channels: int, out_channels: int, window: int, inputs: int, groups: int = 1,
         bias: bool = True) -> OpCounts:
    """A convolution to ``positions`` output positions (the batch's) from ``inputs`` input positions, ``window``
    kernel taps, ``groups`` channel groups (a depthwise conv: ``groups = in_channels``)."""
    macs = positions * out_channels * (in_channels // groups) * window
    return OpCounts({"mult.fp32": macs, "add.fp32": macs + (positions * out_channels if bias else 0)}, 2 * macs,
                    weight_bytes=(out_channels * (in_channels // groups) * window + (out_channels if bias else 0))
                    * FP32, activation_bytes=(inputs * in_channels + positions * out_channels) * FP32)


def layer_norm(rows: int, width: int) -> OpCounts:
    """LayerNorm over ``width``: the mean (additions), the variance (a subtraction, a square, an addition per value),
    a reciprocal square root per row, the normalization and the affine (a multiplication each, an addition)."""
    values = rows * width
    return (elementwise(values, add=3, mult=3) + OpCounts({"exp.fp32": rows}, weight_bytes=2 * width * FP32))


def gelu(elements: int) -> OpCounts:
    """GELU, ``0.5·x·(1 + erf(x/√2))``: an erf, three multiplications and an addition per value."""
    return elementwise(elements, exp=1, mult=3, add=1)


def softmax(rows: int, width: int) -> OpCounts:
    """Softmax over ``width``: the row's max (comparisons), a subtraction, an exp, the sum, a reciprocal per row and
    a multiplication per value."""
    return elementwise(rows * width, cmp=1, add=2, exp=1, mult=1) + OpCounts({"exp.fp32": rows})


def l2_normalize(rows: int, width: int) -> OpCounts:
    """``x / (‖x‖ + eps)`` over ``width``: squares and their sum, a square root and an addition per row, then a
    multiplication per value by the reciprocal."""
    return elementwise(rows * width, mult=2, add=1) + OpCounts({"exp.fp32": rows, "add.fp32": rows})


def weights_read(parameters: int, bits: int = 32) -> OpCounts:
    """Parameters read and nothing computed (a position embedding, a class token)."""
    return OpCounts(weight_bytes=parameters * bits / 8)


__all__ = ["BITS", "NONE", "OPERATIONS", "OpCounts", "TYPES", "binary_product", "conv", "elementwise", "gelu",
           "key", "l2_normalize", "layer_norm", "linear", "product", "shift_linear", "softmax", "total",
           "weights_read"]
