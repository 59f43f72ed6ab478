"""Int8 linear layers: the CPU user's alternative to shift layers, plain int8 quantization of the dense layer.

Weights are int8 per output channel, activations int8 per token, both symmetric with float32 scales
(``scale = max|row| / 127``, values rounded half to even), and the product is an exact int32 sum, rescaled by the
two scales (:func:`int8_matmul`, the integer contract). Per-token scales make a token's result independent of the
others in its batch (dynamic per-tensor quantization, torch's ``quantize_dynamic``, does not).

:class:`Int8Linear` trains with the same quantized values (fake quantization with a straight-through gradient, a
float product of the dequantized operands: equal to the integer contract up to float32 rounding);
:meth:`Int8Linear.inference` gives the module that runs the contract on torch's int8 matrix product
(``torch._int_mm``), which is what the kernel runtime (:func:`kernels.runtime.to_kernels`) and the latency
measurements run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INT8_MAX = 127
_PEAK_FLOOR = 2.0**-100  # a row's peak is at least this, so 127 / peak stays finite


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of float32 ``x`` ``[M, K]`` as int8 values (float32 tensors holding integers in ``[-127, 127]``) and one
    scale per row ``[M, 1]``: ``x ≈ xq · scale``, ``scale = max|row| / 127``. Rows of zeros get a tiny scale
    (all codes 0)."""
    x = x.detach().to(torch.float32)
    # abs then amax: two passes, but torch's vector_norm(ord=inf) over rows is ten times slower on a CPU
    peak = x.abs().amax(dim=-1, keepdim=True).clamp_min_(_PEAK_FLOOR)
    # |x| · (127 / peak) is at most 127 times (1 + 2^-23), which rounds to 127: no clamp needed
    return (x * (INT8_MAX / peak)).round_(), peak / INT8_MAX


def int8_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A real weight ``[N, K]`` as int8 codes ``[N, K]`` and one float32 scale per output channel ``[N]``."""
    codes, scale = quantize_rows(weight)
    return codes.to(torch.int8), scale[:, 0]


def int8_matmul(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
    """The integer contract, float32 ``[M, K]`` in, float32 ``[M, N]`` out: ``x`` quantized per row
    (:func:`quantize_rows`), the exact int32 sums with the int8 ``codes`` ``[N, K]``, then
    ``(float(acc) · scale[n]) · x_scale[m] + bias[n]``, rounded to float32 after each step."""
    xq, x_scale = quantize_rows(x)
    acc = torch._int_mm(xq.to(torch.int8), codes.T)  # exact: 127² · K stays far below 2^31 for any layer here
    y = acc.to(torch.float32).mul_(scale).mul_(x_scale)  # in place: eagerly, each pass over [M, N] costs
    return y if bias is None else y.add_(bias.detach().to(torch.float32))


def fake_quant_ste(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the int8 layer computes with it, ``xq · scale`` per row, with a straight-through gradient."""
    codes, scale = quantize_rows(x)
    return x + ((codes * scale).to(x.dtype) - x).detach()


class Int8Linear(nn.Linear):
    """A linear layer that computes with int8 weights (per output channel) and int8 activations (per token):
    quantization-aware training of the dense layer. Its state dict is an ``nn.Linear``'s (the real weight);
    :meth:`codes` are what runs.

    Example:
        >>> layer = Int8Linear.from_dense(torch.nn.Linear(8, 4))
        >>> layer(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> "Int8Linear":
        """Convert a dense layer: its weight and bias, quantized in every forward pass."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device)
        with torch.no_grad():
            layer.weight.copy_(linear.weight.detach().float())
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        return layer

    def codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 weight codes ``[out, in]`` and their per-channel scales ``[out]``."""
        return int8_weights(self.weight)

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer computes with, its int8 codes times their scales (straight-through gradient)."""
        return fake_quant_ste(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(fake_quant_ste(x), self.effective_weight().to(x.dtype), bias)

    @torch.no_grad()
    def forward_int(self, x: torch.Tensor) -> torch.Tensor:
        """Inference on the integer contract (:func:`int8_matmul`)."""
        codes, scale = self.codes()
        y = int8_matmul(x.reshape(-1, self.in_features), codes, scale, self.bias)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def inference(self) -> "Int8Inference":
        """The inference module that runs this layer on the CPU's int8 dot products."""
        return Int8Inference(self)


class Int8Inference(nn.Module):
    """Inference-only :class:`Int8Linear`: the codes quantized once, each call :func:`int8_matmul` on them."""

    def __init__(self, layer: Int8Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        codes, scale = layer.codes()
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = int8_matmul(x.reshape(-1, self.in_features), self.codes, self.scale, self.bias)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
