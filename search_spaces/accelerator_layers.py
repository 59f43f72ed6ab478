"""A forward pass as the layers an accelerator model prices: the accelerator energy model
(:mod:`latency_model.accelerator`, ``energy: {model: accelerator}``) takes a model as a list of :class:`Layer`, the way
ShiftAddNAS / ShiftAddViT's released ``cal_energy.py`` records it with forward hooks on leaf modules:

- a linear layer, and an attention product (``Q Kᵀ``, ``P V``) as an ``FC`` layer: ``batch`` rows (tokens, or heads
  x tokens for a product) of ``in_channels -> out_channels``;
- a shift linear as a ``Shift`` layer, a binary-real product (additive attention) as an ``Add`` layer, of the same
  shape;
- a convolution as a ``Conv`` layer (a depthwise one as ``batch x channels`` one-channel convs, its kernel side the
  square root of its taps, as the released hook records it).

Norms, activations, softmax, pooling and residual additions are not layers: the released model prices none of them.
Each primitive declares its layers (``Primitive.accelerator``, :mod:`search_spaces.registry`) and each family its
frame's and its blocks' fixed layers (``Family.frame_layers`` ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

KINDS = ("FC", "Conv", "Shift", "Add")


@dataclass(frozen=True)
class Layer:
    """One layer record: ``batch`` inputs of ``in_channels`` channels on an ``in_size`` grid (height, width) to
    ``out_channels`` on ``out_size``, by a square ``kernel`` (its side) at ``stride``, its words ``bits`` wide.
    ``times``: how many times one forward pass runs it, in expectation (an MoE expert's layers run in the share of
    passes that route it a token)."""

    kind: str
    batch: int
    in_channels: int
    out_channels: int
    kernel: float = 1
    stride: int = 1
    in_size: tuple[int, int] = (1, 1)
    out_size: tuple[int, int] = (1, 1)
    bits: int = 32
    times: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r} (choose from {', '.join(KINDS)})")

    @property
    def shape(self) -> "Layer":
        """The layer run once: what its price depends on."""
        return replace(self, times=1.0) if self.times != 1.0 else self

    @property
    def macs(self) -> float:
        """Multiply-accumulates (or shift- or add-accumulates) of one run."""
        (e, f) = self.out_size
        return self.batch * e * f * self.out_channels * self.in_channels * self.kernel ** 2

    def describe(self) -> str:
        if self.kind == "Conv":
            return (f"Conv {self.batch}x{self.in_channels}x{self.in_size[0]}x{self.in_size[1]} -> {self.out_channels}"
                    f"x{self.out_size[0]}x{self.out_size[1]}, kernel {self.kernel:g} stride {self.stride}")
        return f"{self.kind} {self.batch} x {self.in_channels} -> {self.out_channels}" + (
            f" @{self.bits} bits" if self.bits != 32 else "")


def fc(rows: int, in_channels: int, out_channels: int, kind: str = "FC", bits: int = 32) -> Layer:
    """A linear layer (or a product, or a shift or add layer) on ``rows`` rows."""
    return Layer(kind, rows, in_channels, out_channels, bits=bits)


def linears(layers, kind: str = "FC", bits: int = 32) -> list[Layer]:
    """The ``(rows, in, out)`` linear layers of a slot (``Shapes.linear_layers``) as layers of one kind."""
    return [fc(m, k, n, kind, bits) for m, k, n in layers]


def conv(batch: int, in_channels: int, out_channels: int, kernel: tuple[int, int], stride: int,
         in_size: tuple[int, int], out_size: tuple[int, int], groups: int = 1) -> Layer:
    """A convolution as the released hook records it: a depthwise conv (``groups == in == out``) as ``batch x
    channels`` one-channel convs; the kernel's side is ``sqrt(kh * kw)`` (a 9 x 1 kernel is recorded as 3 x 3, the
    same multiply-accumulates)."""
    if groups == in_channels == out_channels and groups > 1:
        batch, in_channels, out_channels = batch * groups, 1, 1
    return Layer("Conv", batch, in_channels, out_channels, math.sqrt(kernel[0] * kernel[1]), stride, in_size, out_size)


def times(layers, factor: float) -> list[Layer]:
    """``layers`` run ``factor`` times as often."""
    return [replace(layer, times=layer.times * factor) for layer in layers]


__all__ = ["KINDS", "Layer", "conv", "fc", "linears", "times"]
