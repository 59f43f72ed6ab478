"""Run a reparameterized model's multiplication-free layers on the compiled TVM kernels.

``to_kernels(model)`` returns an inference copy of ``model`` in which every :class:`ShiftLinear` runs the ``matshift``
kernel and every :class:`AdditiveAttention` runs its two binary products on the ``binary_real`` ``matadd`` kernel;
everything else stays in torch. MoE experts get their tokens padded up to a fixed grid of counts
(:func:`search_spaces.ops.moe.token_buckets`), so their kernels are compiled for a few shapes, not one per batch. Tensors cross into TVM through DLPack, without copies: the kernels read torch's
buffers and write their outputs into torch tensors allocated here.

Kernels are fetched per shape from the tuning cache (:func:`kernels.tuning.get_kernel`): a shape seen for the first
time is tuned (or, with ``trials=0``, compiled with the default schedule), later calls reuse it.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from search_spaces.ops.attention import AdditiveAttention
from search_spaces.ops.moe import MoEMlp
from search_spaces.ops.shift import ShiftLinear, from_fixed_point, to_fixed_point

from . import matshift
from . import target as targets
from .spec import KernelSpec
from .tuning import CompiledKernel, get_kernel


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous, 64-byte-aligned view or copy: TVM kernels assume 64-byte-aligned buffers and do not check
    (a misaligned pointer can crash the process). torch's allocator aligns; slices at odd offsets may not be."""
    t = t.contiguous()
    return t if t.data_ptr() % 64 == 0 else t.clone()


class KernelSet:
    """The compiled kernels of one target, fetched per task on first use and kept in memory."""

    def __init__(
        self,
        target: str | dict = "cpu",
        trials: int = 0,
        root: Path | None = None,
        matshift_variant: str = matshift.DEFAULT_VARIANT,
    ) -> None:
        self.target = targets.resolve(target)
        self.trials = trials
        self.root = root
        self.matshift_variant = matshift_variant
        self._loaded: dict[tuple, CompiledKernel] = {}

    def get(self, kernel: str, variant: str, m: int, k: int, n: int, dtype: str = "") -> CompiledKernel:
        """The kernel of a task; called on every forward, so a loaded one is a plain dict lookup (the KernelSpec is
        built and validated only the first time)."""
        key = (kernel, variant, m, k, n, dtype)
        loaded = self._loaded.get(key)
        if loaded is None:
            spec = KernelSpec(kernel, variant, m, k, n, dtype)
            loaded = self._loaded[key] = get_kernel(spec, self.target, self.trials, root=self.root)
        return loaded

    @property
    def specs(self) -> list[KernelSpec]:
        """Every task used so far (what a model run needed)."""
        return [kernel.spec for kernel in self._loaded.values()]


class KernelShiftLinear(nn.Module):
    """Inference-only :class:`ShiftLinear` on the ``matshift`` kernel (weights packed once, at construction)."""

    def __init__(self, layer: ShiftLinear, kernels: KernelSet) -> None:
        super().__init__()
        shift, sign = layer.quantized()
        self.in_features, self.out_features, self.frac_bits = layer.in_features, layer.out_features, layer.frac_bits
        self.register_buffer("amount", (-shift).contiguous())  # right-shift amounts, int8, >= 0
        self.register_buffer("sign", sign.contiguous())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.kernels = kernels

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x_int = _aligned(to_fixed_point(x.reshape(-1, self.in_features), self.frac_bits))
        m = x_int.shape[0]
        y_int = torch.empty(m, self.out_features, dtype=torch.int32, device=x.device)
        kernel = self.kernels.get("matshift", self.kernels.matshift_variant, m, self.in_features, self.out_features)
        kernel(x_int, self.amount, self.sign, y_int)
        return from_fixed_point(y_int, self.frac_bits, self.bias, x.dtype).reshape(*lead, self.out_features)


class KernelAdditiveAttention(nn.Module):
    """Inference-only :class:`AdditiveAttention` whose products ``K_bᵀV`` and ``Q_b(K_bᵀV)`` run on ``matadd``."""

    def __init__(self, attention: AdditiveAttention, kernels: KernelSet) -> None:
        super().__init__()
        self.attention = attention
        self.kernels = kernels
        attention.mix = self.mix  # the frame (projections, heads, norms) stays the module's own

    def _binary_real(self, codes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``codes @ values`` for each [batch, head]: codes {0,1} [.., M, K], values float32 [.., K, N]."""
        *lead, m, k = codes.shape
        n = values.shape[-1]
        kernel = self.kernels.get("matadd", "binary_real", m, k, n, "float32")
        b = codes.to(torch.int8).reshape(-1, m, k).contiguous()
        v = values.to(torch.float32).reshape(-1, k, n).contiguous()
        out = torch.empty(b.shape[0], m, n, dtype=torch.float32, device=values.device)
        for i in range(b.shape[0]):
            result = _aligned(out[i])
            kernel(_aligned(b[i]), _aligned(v[i]), result)
            if result.data_ptr() != out[i].data_ptr():
                out[i].copy_(result)
        return out.reshape(*lead, m, n).to(values.dtype)

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        att = self.attention
        q_b, k_b = att.codes(q, k)
        kv = self._binary_real(k_b.transpose(-2, -1), v)
        x = 0.5 * v + self._binary_real(q_b, kv) / math.pi
        x = x / (x.norm(dim=-1, keepdim=True) + att.eps)
        return x + att.dconv(v)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        return self.attention(x, attn_mask=attn_mask, is_causal=is_causal)


def _swap(module: nn.Module, kernels: KernelSet) -> None:
    for name, child in module.named_children():
        if isinstance(child, MoEMlp):
            child.pad_to_buckets = True  # experts see a few token counts, not one kernel shape per batch
            _swap(child, kernels)
        elif isinstance(child, ShiftLinear):
            setattr(module, name, KernelShiftLinear(child, kernels))
        elif isinstance(child, AdditiveAttention):
            _swap(child, kernels)  # its qkv/proj may be shift layers too
            setattr(module, name, KernelAdditiveAttention(child, kernels))
        else:
            _swap(child, kernels)


def to_kernels(model: nn.Module, kernels: KernelSet | None = None) -> nn.Module:
    """An inference (eval-mode) copy of ``model`` whose shift layers and additive attentions run on TVM kernels.

    Example:
        >>> fast = to_kernels(model, KernelSet("cpu", trials=64))   # doctest: +SKIP
        >>> fast(images)                                             # doctest: +SKIP
    """
    copied = copy.deepcopy(model).eval()
    _swap(copied, kernels or KernelSet())
    return copied
