"""Shift layers: linear layers whose weights are signed powers of two (DeepShift-Q training).

A weight is ``sign * 2**shift`` with an integer ``shift`` in ``[-(2**(b-1) - 2), 0]`` for ``b`` weight bits, so a
product with it is a bit shift and a conditional negation. Training keeps a latent real weight (initialised from the
dense weight) and quantizes it in every forward pass, ``sign(w) * 2**round(log2|w|)``, with a straight-through
estimator: the gradient reaches the latent weight unchanged, so it moves by about the learning rate per step and a
code changes as soon as the weight crosses a rounding boundary. (Keeping ``shift`` and ``sign`` themselves as
parameters, initialised on integers, froze every code under the product's recipes: AdamW at lr 1e-3 moves a parameter
about 1e-3 per step, far from the 0.5 a rounded shift needs; ``bench/results/shift-training.md``.)

Zero weights: ``sign(0) = 0``, so an exactly-zero latent weight is a zero weight (sign code 0, which the ``matshift``
kernel takes); its straight-through gradient lets training move it off zero like any other weight.

The integer inference arithmetic lives in :func:`shift_matmul_int` and nowhere else: the TVM ``matshift`` kernel
implements exactly this contract, and the float path is tested against it. :class:`Shift16Linear` runs the same
weights on int16 block-floating-point activations, :func:`shift16_matmul` (the fused ``shiftlinear`` kernel's
contract).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_WEIGHT_BITS = 5
DEFAULT_FRAC_BITS = 16  # fixed-point activations: 16 integer bits, 16 fraction bits, in int32


def shift_range(weight_bits: int) -> tuple[int, int]:
    """The smallest and largest shift a ``weight_bits``-bit shift weight can hold (DeepShift-PS convention)."""
    if weight_bits < 2:
        raise ValueError(f"weight_bits must be >= 2, got {weight_bits}")
    return -(2 ** (weight_bits - 1) - 2), 0


def quantize_codes(w: torch.Tensor, shift_min: int, shift_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The codes of real weights: ``shift = round(log2|w|)`` clamped to ``[shift_min, shift_max]`` and ``sign(w)``
    (float tensors holding integers)."""
    magnitude = w.abs().clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(torch.log2(magnitude)).clamp_(shift_min, shift_max), torch.sign(w)


def straight_through_shift(w: torch.Tensor, shift_min: int, shift_max: int) -> torch.Tensor:
    """``sign(w) * 2**round(log2|w|)`` (shifts clamped to the range) in the forward pass, the identity in the
    backward pass: how a latent real weight computes as a shift weight (DeepShift-Q)."""
    shift, sign = quantize_codes(w.detach(), shift_min, shift_max)
    return w + (sign * torch.exp2(shift) - w).detach()


def to_fixed_point(x: torch.Tensor, frac_bits: int = DEFAULT_FRAC_BITS) -> torch.Tensor:
    """Float activations to int32 fixed point with ``frac_bits`` fraction bits (round to nearest, saturating)."""
    info = torch.iinfo(torch.int32)
    scaled = torch.round(x.double() * (1 << frac_bits))
    return scaled.clamp(info.min, info.max).to(torch.int32)


def from_fixed_point(y_int: torch.Tensor, frac_bits: int, bias: torch.Tensor | None, dtype: torch.dtype
                     ) -> torch.Tensor:
    """The integer product back to floats (exact in float64), plus the bias: the common tail of every integer path."""
    y = y_int.to(torch.float64) / (1 << frac_bits)
    if bias is not None:
        y = y + bias.detach().double()
    return y.to(dtype)


def shift_matmul_int(
    x_int: torch.Tensor, shift: torch.Tensor, sign: torch.Tensor, chunk_bytes: int = 1 << 26
) -> torch.Tensor:
    """The integer shift product: ``y[i, j] = sum_k sign[j, k] * (x_int[i, k] >> -shift[j, k])``.

    ``x_int`` is int32 ``[M, K]``, ``shift`` (values <= 0) and ``sign`` (values in {-1, 0, 1}) are int8 ``[N, K]``.
    ``>>`` is an arithmetic shift (rounds toward minus infinity), accumulation is int32 with wrap-around, as in the
    TVM ``matshift`` kernel. Output columns are computed in chunks so the ``[M, n, K]`` intermediate stays small.
    """
    if x_int.dtype != torch.int32 or shift.dtype != torch.int8 or sign.dtype != torch.int8:
        raise TypeError(
            f"shift_matmul_int takes int32 activations and int8 shift/sign, got {x_int.dtype}, {shift.dtype}, {sign.dtype}"
        )
    if x_int.dim() != 2 or shift.shape != sign.shape or x_int.shape[1] != shift.shape[1]:
        raise ValueError(
            f"shift_matmul_int shapes do not match: x {tuple(x_int.shape)}, shift {tuple(shift.shape)}, "
            f"sign {tuple(sign.shape)} (want x [M, K], shift and sign [N, K])"
        )
    m, k = x_int.shape
    n = shift.shape[0]
    amount = (-shift.to(torch.int32)).clamp_(min=0)
    sgn = sign.to(torch.int32)
    out = torch.empty(m, n, dtype=torch.int32, device=x_int.device)
    step = max(1, chunk_bytes // max(1, m * k * 4))
    for j in range(0, n, step):
        shifted = torch.bitwise_right_shift(x_int[:, None, :], amount[None, j : j + step, :])
        # int32 sum keeps the kernel's wrap-around semantics (torch.sum would promote to int64)
        out[:, j : j + step] = (shifted * sgn[None, j : j + step, :]).sum(dim=-1, dtype=torch.int32)
    return out


# ---- shift16: the same weights on int16 block-floating-point activations (integer dot products) --------------------
WEIGHT_EXP16 = -14  # shift16's weights are int16 multiples of 2^-14 (shifts -14..0: shift weights of up to 5 bits)
MAX_ACTIVATION_BITS = 15  # int16 mantissas: |xq| <= 2^15 - 1
SCALE_RANGE = 60  # row maxima are clamped to [2^-60, 2^60], so every scale 2^e is a normal float32
_INT32_MAX = 2**31 - 1


def int16_weights(shift: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Shift codes ``[N, K]`` (shifts in ``[-14, 0]``) as the exact int16 weights ``sign · 2^(shift + 14)``."""
    shift = shift.to(torch.int32)
    if shift.numel() and (int(shift.min()) < WEIGHT_EXP16 or int(shift.max()) > 0):
        raise ValueError(f"shift16 takes shifts in [{WEIGHT_EXP16}, 0] (shift weights of up to 5 bits), got "
                         f"[{int(shift.min())}, {int(shift.max())}]")
    return (sign.to(torch.int32) << (shift - WEIGHT_EXP16)).to(torch.int16)


def activation_bits(weights: torch.Tensor) -> int:
    """The activation bits of a shift16 layer with int16 weights ``[N, K]``: the largest ``b <= 15`` for which
    ``(2^b - 1) · max_j Σ_k |w[j, k]|`` fits in int32, so no integer sum can overflow whatever the activations.
    (ViT layers get 13-15: a DeiT-Tiny fc2, 768 inputs of typical weights, about 13.)"""
    worst = int(weights.to(torch.int64).abs().sum(dim=1).max()) if weights.numel() else 0
    bits = MAX_ACTIVATION_BITS
    while bits > 1 and ((1 << bits) - 1) * worst > _INT32_MAX:
        bits -= 1
    if ((1 << bits) - 1) * worst > _INT32_MAX:
        raise ValueError(f"shift16: {weights.shape[1]} inputs of these weights overflow int32 even at 1-bit "
                         "activations")
    return bits


def weight_activation_bits(weight: torch.Tensor, shift_min: int, shift_max: int) -> int:
    """:func:`activation_bits` of a latent real weight, through its shift codes (what training computes with)."""
    return activation_bits(int16_weights(*quantize_codes(weight.detach(), shift_min, shift_max)))


def pow2(exponent: torch.Tensor) -> torch.Tensor:
    """``2^exponent`` as float32, built from its bits: exact, for exponents in the normal range."""
    return ((exponent.to(torch.int32) + 127) << 23).view(torch.float32)


def block_float(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of float32 ``x`` ``[M, K]`` in block floating point: int16 mantissas (as float32 holding integers) and
    one scale exponent ``e`` per row, ``x ≈ xq · 2^e``. ``e`` is the float exponent of the row's largest magnitude
    (clamped to ``2^±60``) less ``bits``, so ``|x · 2^-e| < 2^bits``: a scale by a power of two (exact), then
    rounding half to even, saturating at ``±(2^bits - 1)``."""
    peak = x.abs().amax(dim=1).clamp(2.0**-SCALE_RANGE, 2.0**SCALE_RANGE).to(torch.float32)
    e = ((peak.view(torch.int32) >> 23) & 255) - 126 - bits
    limit = float((1 << bits) - 1)
    return torch.round(x.to(torch.float32) * pow2(-e)[:, None]).clamp_(-limit, limit), e


def shift16_matmul(x: torch.Tensor, weights: torch.Tensor, bits: int, bias: torch.Tensor | None) -> torch.Tensor:
    """shift16's integer arithmetic, float32 ``[M, K]`` in, float32 ``[M, N]`` out: block-floating-point
    activations (:func:`block_float`) times the int16 ``weights`` ``[N, K]``, the exact integer sums rescaled by
    ``2^(e - 14)`` plus the bias. The ``shiftlinear`` kernel computes exactly this (tested bit for bit). The sums
    run in float64, where they are exact: ``bits`` keeps every one below 2^31."""
    xq, e = block_float(x, bits)
    acc = (xq.double() @ weights.double().T).to(torch.float32)  # exact integer, rounded once to float32 (as int->float)
    y = acc * pow2(e + WEIGHT_EXP16)[:, None]  # exact: a power of two
    return y if bias is None else y + bias.detach().to(torch.float32)


def block_float_ste(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` as shift16 computes with it, ``xq · 2^e`` per row, with a straight-through gradient (training)."""
    flat = x.detach().reshape(-1, x.shape[-1])
    xq, e = block_float(flat, bits)
    quantized = (xq * pow2(e)[:, None]).reshape(x.shape).to(x.dtype)
    return x + (quantized - x).detach()


class ShiftLinear(nn.Module):
    """A linear layer with weights ``sign * 2**shift``, trained through a latent real weight (DeepShift-Q).

    Args:
        in_features, out_features, bias: as :class:`torch.nn.Linear`.
        weight_bits: bits of the shift code; shifts lie in :func:`shift_range`.
        frac_bits: fraction bits of the fixed-point activations of the integer path.

    ``weight`` is the latent real weight the optimizer updates; :meth:`effective_weight` is what the layer computes
    with, and :meth:`quantized` the integer codes the kernel runs.

    Example:
        >>> layer = ShiftLinear.from_dense(torch.nn.Linear(8, 4))
        >>> layer(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_bits: int = DEFAULT_WEIGHT_BITS,
        frac_bits: int = DEFAULT_FRAC_BITS,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight_bits = weight_bits
        self.frac_bits = frac_bits
        self.shift_min, self.shift_max = shift_range(weight_bits)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)  # nn.Linear's default scale
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)

    @classmethod
    def from_dense(
        cls, linear: nn.Linear, weight_bits: int = DEFAULT_WEIGHT_BITS, frac_bits: int = DEFAULT_FRAC_BITS
    ) -> "ShiftLinear":
        """Convert a dense layer: the latent weight is the dense weight (so its codes are shift = round(log2|w|)
        clamped to the range, sign = sign(w)), the bias is kept."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, weight_bits, frac_bits)
        layer.to(device=linear.weight.device)
        with torch.no_grad():
            layer.weight.copy_(linear.weight.detach().float())
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        return layer

    def quantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The integer codes ``(shift, sign)`` as int8 ``[out, in]`` tensors, as the matshift kernel takes them."""
        shift, sign = quantize_codes(self.weight.detach(), self.shift_min, self.shift_max)
        return shift.to(torch.int8), sign.to(torch.int8)

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer computes with, ``sign * 2**shift``; its gradient flows straight to the latent
        weight."""
        return straight_through_shift(self.weight, self.shift_min, self.shift_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def forward_int(self, x: torch.Tensor) -> torch.Tensor:
        """Inference on the integer arithmetic of the matshift kernel: fixed-point activations, shifts, additions."""
        lead = x.shape[:-1]
        x_int = to_fixed_point(x.reshape(-1, self.in_features), self.frac_bits)
        shift, sign = self.quantized()
        y_int = shift_matmul_int(x_int, shift, sign)
        return from_fixed_point(y_int, self.frac_bits, self.bias, x.dtype).reshape(*lead, self.out_features)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        upgrade_legacy_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"weight_bits={self.weight_bits}, shift_range=[{self.shift_min}, {self.shift_max}]"
        )


class Shift16Linear(ShiftLinear):
    """:class:`ShiftLinear`'s weights on int16 activations: each token's activations in block floating point (int16
    mantissas, one power-of-two scale per token, :func:`block_float`), so the layer runs as integer dot products
    (AVX2 ``vpmaddwd``, AVX-512 VNNI ``vpdpwssd``) in one fused kernel, ``shiftlinear``, where :class:`ShiftLinear`
    runs 32-bit fixed-point shifts and additions (the paper's arithmetic). Training computes with the same
    quantized activations (straight-through), so what trains is what runs; :meth:`forward_int` is the kernel's
    contract. Weight bits: at most 5 (int16 holds shifts -14..0)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 weight_bits: int = DEFAULT_WEIGHT_BITS, frac_bits: int = DEFAULT_FRAC_BITS) -> None:
        super().__init__(in_features, out_features, bias, weight_bits, frac_bits)
        if self.shift_min < WEIGHT_EXP16:
            raise ValueError(f"shift16 holds shifts down to {WEIGHT_EXP16} (weight_bits <= 5), got weight_bits "
                             f"{weight_bits}")

    def quantized16(self) -> tuple[torch.Tensor, int]:
        """The int16 weights ``[out, in]`` and the activation bits, as the ``shiftlinear`` kernel takes them."""
        weights = int16_weights(*self.quantized())
        return weights, activation_bits(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = weight_activation_bits(self.weight, self.shift_min, self.shift_max)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(block_float_ste(x, bits), self.effective_weight().to(x.dtype), bias)

    @torch.no_grad()
    def forward_int(self, x: torch.Tensor) -> torch.Tensor:
        """Inference on the ``shiftlinear`` kernel's arithmetic (bit for bit)."""
        weights, bits = self.quantized16()
        y = shift16_matmul(x.reshape(-1, self.in_features), weights, bits, self.bias)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def upgrade_legacy_state(state: dict[str, torch.Tensor], prefix: str) -> bool:
    """Rewrite, in ``state``, a shift layer saved by earlier versions (parameters ``shift`` and ``sign``) as the
    latent weight with the same codes, ``sign * 2**shift``; True if it did. Checkpoints written before the latent
    weight keep loading."""
    shift, sign, weight = f"{prefix}shift", f"{prefix}sign", f"{prefix}weight"
    if shift not in state or sign not in state or weight in state:
        return False
    state[weight] = torch.sign(state.pop(sign)) * torch.exp2(torch.round(state.pop(shift)))
    return True
