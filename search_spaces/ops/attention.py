"""Attention variants that replace timm's ``Attention`` while keeping its ``qkv``/``proj`` weights and heads.

- ``msa`` stays timm's own softmax attention (see :mod:`search_spaces.reparam`); only its projections may change.
- :class:`LinearAttention`: kernelized attention with the positive feature map ``elu + 1``, O(N) in tokens.
- :class:`AdditiveAttention`: ShiftAddViT's binary linear-angular attention. Queries and keys are L2-normalized per
  head and binarized to {0, 1} codes, then ``out = normalize(0.5·v + (1/π)·Q_b (K_bᵀ V)) + dwconv(v)``. The two
  products with a binary operand are sums of selected rows: no multiplications. They run through the module's
  ``binary_product`` (torch's matmul by default); on the kernel runtime (:mod:`kernels.runtime`) the whole mixing
  (:func:`angular_codes`, :func:`angular_mix`) is one fused kernel.

Binarization (:data:`BINARIZE_KINDS`, the ``binarize`` option of an additive block):

- ``tensor`` (default, as the released ShiftAddViT code): ``q > mean(q)`` with the mean over the whole Q (or K)
  tensor of the batch; straight-through gradient of ``clamp(q, 0, 1)``, i.e. passed where ``0 <= q <= 1``.
- ``token``: ``q > mean(q)`` with the mean over each token's head dimension; straight-through gradient of the
  centred value clipped to ``[-1, 1]``. Independent of the batch, so a token's codes do not depend on the other
  images it is batched with.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

BINARIZE_KINDS = ("tensor", "token")
TOKEN_CONV_TAPS = 9  # AdditiveAttention's depthwise conv over tokens: its default kernel size
EPS = 1e-6  # of the L2 normalizations: x / (|x| + EPS)


def binarize(x: torch.Tensor, kind: str = "tensor") -> torch.Tensor:
    """{0, 1} codes of ``x`` (as ``x``'s dtype) by ``kind`` (see the module docstring), without a gradient: what
    inference computes."""
    if kind == "tensor":
        return (x > x.mean()).to(x.dtype)
    if kind == "token":
        return (x - x.mean(dim=-1, keepdim=True) > 0).to(x.dtype)
    raise ValueError(f"unknown binarization {kind!r} (choose from {', '.join(BINARIZE_KINDS)})")


def binarize_ste(x: torch.Tensor, kind: str = "tensor") -> torch.Tensor:
    """:func:`binarize`'s codes with a straight-through gradient (see the module docstring). Its value is the codes
    exactly (``s + (c - s)`` is ``c`` in float for a code ``c`` in {0, 1} and ``s`` within ``[-1, 1]`` on the code's
    side of its threshold), so inference computes the codes alone (:meth:`AdditiveAttention.codes`)."""
    codes = binarize(x, kind)
    surrogate = x.clamp(0.0, 1.0) if kind == "tensor" else (x - x.mean(dim=-1, keepdim=True)).clamp(-1.0, 1.0)
    return surrogate + (codes - surrogate).detach()


class ProjectedAttention(nn.Module):
    """Shared frame of the replacement attentions: timm's projections, heads and norms around a token mixer. A new
    attention primitive subclasses it and implements :meth:`mix` (see :mod:`search_spaces.registry`)."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        if getattr(source, "gate", None) is not None:
            raise ValueError("gated attention (timm `gated=True`) cannot be reparameterized yet")
        self.num_heads = source.num_heads
        self.head_dim = source.head_dim
        self.attn_dim = getattr(source, "attn_dim", source.num_heads * source.head_dim)
        self.qkv = source.qkv
        self.q_norm = source.q_norm
        self.k_norm = source.k_norm
        self.norm = getattr(source, "norm", nn.Identity())
        self.proj = source.proj
        self.proj_drop = source.proj_drop

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Token mixing on ``[B, H, N, D]`` tensors."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int] | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        """``x`` is ``[B, N, C]``. ``feat_size``, the token grid a pyramid family's blocks pass (PVTv2), is not needed:
        the mixers attend over the token sequence."""
        if attn_mask is not None or is_causal:
            raise ValueError(f"{type(self).__name__} does not support attention masks")
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = self.mix(q, k, v)
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
        x = self.norm(x)
        return self.proj_drop(self.proj(x))


class LinearAttention(ProjectedAttention):
    """Linear attention ``φ(Q)(φ(K)ᵀV) / (φ(Q)·Σφ(K))`` with ``φ = elu + 1`` (Katharopoulos et al., 2020)."""

    eps = 1e-6

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        kv = k.transpose(-2, -1) @ v  # [B, H, D, D]: cost linear in N
        normalizer = q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1)  # [B, H, N, 1]
        return (q @ kv) / (normalizer + self.eps)


def token_conv(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The depthwise convolution over tokens of :class:`AdditiveAttention` (``nn.Conv2d(H, H, (k, 1), groups=H)``
    on ``v [B, H, T, D]``, zero padding), as a depthwise ``conv1d`` over the ``H·D`` channels of ``v`` laid out
    ``[B, H·D, T]`` (each head's ``k`` taps repeated over its ``D`` channels): the same function as the conv (within
    fp32 rounding) and its gradient. oneDNN's depthwise conv2d in the ``[B, H, T, D]`` layout took 13 ms at 784 tokens
    and batch 8; ``k`` shifted, weighted sums of ``v`` took 0.6 ms there, this 0.35 ms, and 0.23 ms where the sums
    took 1.8 at the quick-start's 65 tokens and batch 64 (forward and backward: 2.0 ms against 3.1)."""
    b, h, tokens, d = v.shape
    k = weight.shape[2]
    channels = v.permute(0, 1, 3, 2).reshape(b, h * d, tokens)
    taps = weight[:, 0, :, 0].repeat_interleave(d, dim=0)[:, None, :]  # [H·D, 1, k]
    out = F.conv1d(channels, taps.to(v.dtype), padding=k // 2, groups=h * d)
    return out.reshape(b, h, d, tokens).permute(0, 1, 3, 2)


def angular_codes(q: torch.Tensor, k: torch.Tensor, kind: str = "tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """The binary {0, 1} codes of L2-normalized queries and keys ``[B, H, T, D]`` (binarized by ``kind``; with
    straight-through gradients where gradients are recorded)."""
    q = q / (q.norm(dim=-1, keepdim=True) + EPS)
    k = k / (k.norm(dim=-1, keepdim=True) + EPS)
    codes = binarize_ste if torch.is_grad_enabled() else binarize
    return codes(q, kind), codes(k, kind)


def angular_mix(q_b: torch.Tensor, k_b: torch.Tensor, v: torch.Tensor, conv_weight: torch.Tensor,
                binary_product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.matmul) -> torch.Tensor:
    """Additive attention's token mixing from the codes: ``normalize(0.5·v + (1/π)·Q_b (K_bᵀ V)) + dwconv(v)``,
    on ``[B, H, T, D]`` tensors, the two products with a binary operand through ``binary_product``."""
    kv = binary_product(k_b.transpose(-2, -1), v)  # binary x real: masked row sums
    x = 0.5 * v + binary_product(q_b, kv) / math.pi  # binary x real again
    x = x / (x.norm(dim=-1, keepdim=True) + EPS)
    return x + token_conv(v, conv_weight)


class AdditiveAttention(ProjectedAttention):
    """ShiftAddViT's additive (binary linear-angular) attention.

    The depthwise convolution over tokens (kernel ``res_kernel_size`` per head, as in Castling-ViT) starts at zero,
    so the converted layer begins as the pure angular-kernel attention and learns the residual during fine-tuning.
    """

    def __init__(self, source: nn.Module, res_kernel_size: int = TOKEN_CONV_TAPS, binarize: str = "tensor") -> None:
        super().__init__(source)
        if binarize not in BINARIZE_KINDS:
            raise ValueError(f"unknown binarization {binarize!r} (choose from {', '.join(BINARIZE_KINDS)})")
        self.binarize = binarize
        self.dconv = nn.Conv2d(
            self.num_heads,
            self.num_heads,
            kernel_size=(res_kernel_size, 1),
            padding=(res_kernel_size // 2, 0),
            groups=self.num_heads,
            bias=False,
        )
        nn.init.zeros_(self.dconv.weight)
        self.dconv.to(next(source.parameters()).device)
        self.last_codes: tuple[torch.Tensor, torch.Tensor] | None = None
        # codes {0, 1} [..., M, K] x values [..., K, N] -> [..., M, N]; an implementation without multiplications
        # (kernels.runtime.KernelBinaryProduct) is given by the kernel runtime
        self.binary_product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.matmul

    def extra_repr(self) -> str:
        return f"binarize={self.binarize}"

    def codes(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary {0, 1} query and key codes (with straight-through gradients where gradients are recorded)."""
        return angular_codes(q, k, self.binarize)

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q_b, k_b = self.codes(q, k)
        self.last_codes = (q_b.detach(), k_b.detach())
        return angular_mix(q_b, k_b, v, self.dconv.weight, self.binary_product)
