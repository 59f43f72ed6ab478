"""Run a reparameterized model's multiplication-free layers on the compiled TVM kernels.

``to_kernels(model)`` returns an inference copy of ``model`` in which every primitive that declares how it runs on the
kernels (``run_on_kernels`` in :mod:`search_spaces.registry`) does: every :class:`ShiftLinear` runs the ``matshift``
kernel (:class:`KernelShiftLinear`) in the variant the device's measurements found fastest at its shape
(:mod:`kernels.dispatch`), every :class:`Shift16Linear` the fused ``shiftlinear`` kernel
(:class:`KernelShift16Linear`), every :class:`AdditiveAttention` runs its whole token mixing as one call of the fused
``additive`` kernel (:class:`KernelAdditiveAttention`; one with query/key norms or another conv size keeps its torch
mixing around the ``binary_real`` ``matadd`` products, :class:`KernelBinaryProduct`), every
:class:`~search_spaces.ops.int8.Int8Linear` its integer inference module (torch's int8 matmul: the CPU baseline needs
no TVM); everything else stays in torch.
MoE experts get their tokens padded up to a fixed grid of counts (:func:`search_spaces.ops.moe.token_buckets`), so
their kernels are compiled for a few shapes, not one per batch. Tensors cross into TVM through DLPack, without copies:
the kernels read torch's buffers and write their outputs into torch tensors allocated here.

Kernels are fetched per shape from the tuning cache (:func:`kernels.tuning.get_kernel`): a shape seen for the first
time is tuned (or, with ``trials=0``, compiled with the default schedule), later calls reuse it.
"""

from __future__ import annotations

import copy
import itertools
import math
import weakref
from pathlib import Path

import torch
from torch import nn

from search_spaces import registry
from search_spaces.ops.attention import BINARIZE_KINDS, AdditiveAttention
from search_spaces.ops.shift import Shift16Linear, ShiftLinear, from_fixed_point, to_fixed_point

from . import additive, matshift, shiftlinear
from . import target as targets
from .dispatch import Dispatch
from .prebuilt import PrebuiltKernel, PrebuiltKernels
from .spec import KernelSpec
from .tuning import CompiledKernel, get_kernel


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous, 64-byte-aligned view or copy: TVM kernels assume 64-byte-aligned buffers and do not check
    (a misaligned pointer can crash the process). torch's allocator aligns; slices at odd offsets may not be."""
    t = t.contiguous()
    return t if t.data_ptr() % 64 == 0 else t.clone()


class KernelSet:
    """The compiled kernels of one target, fetched per task on first use and kept in memory.

    ``dispatch`` (:class:`kernels.dispatch.Dispatch`, from this device's kernel timings) picks the matshift variant
    per shape; shapes it has no timing of run ``matshift_variant``. With ``prebuilt`` (:mod:`kernels.prebuilt`) the
    kernels come from a library compiled elsewhere, and nothing is compiled: the TVM runtime alone serves them."""

    def __init__(
        self,
        target: str | dict = "cpu",
        trials: int = 0,
        root: Path | None = None,
        matshift_variant: str = matshift.DEFAULT_VARIANT,
        dispatch: Dispatch | None = None,
        prebuilt: PrebuiltKernels | None = None,
    ) -> None:
        self.prebuilt = prebuilt
        self.target = None if prebuilt is not None else targets.resolve(target)
        self.trials = trials
        self.root = root
        self.matshift_variant = matshift_variant
        self.dispatch = dispatch or Dispatch()
        self._loaded: dict[tuple, CompiledKernel] = {}
        self.handle = _register(self)

    def __setstate__(self, state) -> None:  # a copy (copy.deepcopy, pickle) gets its own handle
        self.__dict__.update(state)
        self.handle = _register(self)

    def get(self, kernel: str, variant: str, m: int, k: int, n: int, dtype: str = "", batch: int = 1
            ) -> CompiledKernel | PrebuiltKernel:
        """The kernel of a task; called on every forward, so a loaded one is a plain dict lookup (the KernelSpec is
        built and validated only the first time)."""
        key = (kernel, variant, m, k, n, dtype, batch)
        loaded = self._loaded.get(key)
        if loaded is None:
            spec = KernelSpec(kernel, variant, m, k, n, dtype, batch=batch)
            loaded = self._loaded[key] = (self.prebuilt.kernel(spec) if self.prebuilt is not None
                                          else get_kernel(spec, self.target, self.trials, root=self.root))
        return loaded

    def matshift(self, m: int, k: int, n: int) -> str:
        """The matshift variant to run at this shape: the fastest measured here, else the default."""
        return self.dispatch.variant("matshift", m, k, n, "int32", self.matshift_variant)

    def binary_product(self, codes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``codes @ values`` on the ``binary_real`` ``matadd`` kernel: codes {0, 1} ``[..., M, K]``, values float32
        ``[..., K, N]``, every leading index (batch, head) in one kernel call."""
        *lead, m, k = codes.shape
        n = values.shape[-1]
        batch = math.prod(lead)
        kernel = self.get("matadd", "binary_real", m, k, n, "float32", batch=batch)
        b = _aligned(codes.to(torch.int8).reshape(batch, m, k))
        v = _aligned(values.to(torch.float32).reshape(batch, k, n))
        out = torch.empty(batch, m, n, dtype=torch.float32, device=values.device)
        kernel(b if batch > 1 else b[0], v if batch > 1 else v[0], out if batch > 1 else out[0])
        return out.reshape(*lead, m, n).to(values.dtype)

    def additive_attention(self, qkv: torch.Tensor, taps: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """Additive attention's token mixing on the fused ``additive`` kernel: the qkv projection's output
        ``[B, T, 3, H, D]``, the token conv's taps ``[H, 9]``, the binarization's index (int32 ``[1]``) ->
        ``[B, T, H, D]`` float32."""
        b, t, _, h, d = qkv.shape
        out = torch.empty(b, t, h, d, dtype=torch.float32, device=qkv.device)
        kernel = self.get("additive", "lut4", t, d, h, "float32", batch=b)
        kernel(_aligned(qkv.to(torch.float32)), _aligned(taps), _aligned(kind), out)
        return out

    @property
    def specs(self) -> list[KernelSpec]:
        """Every task used so far (what a model run needed)."""
        return [kernel.spec for kernel in self._loaded.values()]


# ---- the kernels as torch custom ops ---------------------------------------------------------------------------------
# torch.compile cannot trace into a TVM call; as custom ops (torch.library) the calls are opaque nodes of the graph, so
# what runs around them (fixed-point conversion, binarization, norms, routing, residuals) is compiled and fused. An op
# takes a handle to the Python object that runs it (a layer's weights, a KernelSet), not the object itself. Dynamo
# treats an integer attribute of a module as a constant and guards on it, so a per-layer integer would recompile the
# block's graph for every layer (and past torch's recompile limit, run the rest eagerly): a layer's handle is a buffer
# (an input of the graph), and the handle every additive attention shares is its KernelSet's.
_RUNNERS: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_handles = itertools.count()


def compiling() -> bool:
    """Whether torch.compile is tracing: the custom ops are what it needs; run eagerly, a call through torch's
    dispatcher costs tens of microseconds a layer for nothing, so the kernels are called directly."""
    return torch.compiler.is_compiling()


def _register(runner: object) -> int:
    handle = next(_handles)
    _RUNNERS[handle] = runner
    return handle


@torch.library.custom_op("shiftadd::matshift", mutates_args=())
def _matshift_op(x_int: torch.Tensor, handle: torch.Tensor, out_features: int) -> torch.Tensor:
    return _RUNNERS[int(handle)].run(x_int)


@_matshift_op.register_fake
def _(x_int: torch.Tensor, handle: torch.Tensor, out_features: int) -> torch.Tensor:
    return x_int.new_empty(x_int.shape[0], out_features)


@torch.library.custom_op("shiftadd::shift_linear16", mutates_args=())
def _shift_linear16_op(x: torch.Tensor, handle: torch.Tensor, out_features: int) -> torch.Tensor:
    return _RUNNERS[int(handle)].run(x)


@_shift_linear16_op.register_fake
def _(x: torch.Tensor, handle: torch.Tensor, out_features: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], out_features)


@torch.library.custom_op("shiftadd::binary_product", mutates_args=())
def _binary_product_op(codes: torch.Tensor, values: torch.Tensor, handle: int) -> torch.Tensor:
    return _RUNNERS[handle].binary_product(codes, values)


@_binary_product_op.register_fake
def _(codes: torch.Tensor, values: torch.Tensor, handle: int) -> torch.Tensor:
    return values.new_empty(*codes.shape[:-1], values.shape[-1])


@torch.library.custom_op("shiftadd::additive_attention", mutates_args=())
def _additive_attention_op(qkv: torch.Tensor, taps: torch.Tensor, kind: torch.Tensor, handle: int) -> torch.Tensor:
    return _RUNNERS[handle].additive_attention(qkv, taps, kind)


@_additive_attention_op.register_fake
def _(qkv: torch.Tensor, taps: torch.Tensor, kind: torch.Tensor, handle: int) -> torch.Tensor:
    b, t, _, h, d = qkv.shape
    return qkv.new_empty(b, t, h, d, dtype=torch.float32)


class KernelShiftLinear(nn.Module):
    """Inference-only :class:`ShiftLinear` on the ``matshift`` kernel. Its weights are packed for a variant the first
    time that variant runs it (the variant can differ with the number of rows, see :meth:`KernelSet.matshift`)."""

    def __init__(self, layer: ShiftLinear, kernels: KernelSet) -> None:
        super().__init__()
        shift, sign = layer.quantized()
        self.in_features, self.out_features, self.frac_bits = layer.in_features, layer.out_features, layer.frac_bits
        self.register_buffer("shift", shift.contiguous())  # int8 codes, <= 0
        self.register_buffer("sign", sign.contiguous())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.kernels = kernels
        self._packed: dict[str, tuple[torch.Tensor, ...]] = {}
        self.register_buffer("handle", torch.tensor(_register(self)), persistent=False)

    def __setstate__(self, state) -> None:  # a copy (copy.deepcopy, pickle) runs its own weights
        super().__setstate__(state)
        self.handle = torch.tensor(_register(self))

    def packed(self, variant: str) -> tuple[torch.Tensor, ...]:
        """The weights as ``variant`` takes them (:data:`kernels.matshift.PACKERS`)."""
        weights = self._packed.get(variant)
        if weights is None:
            arrays = matshift.PACKERS[variant](self.shift.cpu().numpy(), self.sign.cpu().numpy())
            weights = self._packed[variant] = tuple(_aligned(torch.from_numpy(a).to(self.shift.device))
                                                    for a in arrays)
        return weights

    def run(self, x_int: torch.Tensor) -> torch.Tensor:
        """The integer product ``[M, in] -> [M, out]`` int32 on the kernel of the variant chosen for ``M``."""
        x_int = _aligned(x_int)
        m = x_int.shape[0]
        y_int = torch.empty(m, self.out_features, dtype=torch.int32, device=x_int.device)
        variant = self.kernels.matshift(m, self.in_features, self.out_features)
        kernel = self.kernels.get("matshift", variant, m, self.in_features, self.out_features)
        kernel(x_int, *self.packed(variant), y_int)
        return y_int

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x_int = to_fixed_point(x.reshape(-1, self.in_features), self.frac_bits)
        y_int = (torch.ops.shiftadd.matshift(x_int, self.handle, self.out_features) if compiling()
                 else self.run(x_int))
        return from_fixed_point(y_int, self.frac_bits, self.bias, x.dtype).reshape(*lead, self.out_features)


class KernelShift16Linear(nn.Module):
    """Inference-only :class:`Shift16Linear` on the fused ``shiftlinear`` kernel: float32 activations in, float32
    outputs out, nothing around the call but a reshape (the custom op ``shiftadd::shift_linear16``)."""

    def __init__(self, layer: Shift16Linear, kernels: KernelSet) -> None:
        super().__init__()
        weights, bits = layer.quantized16()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.register_buffer("weights", _aligned(torch.from_numpy(shiftlinear.pack(weights.cpu().numpy()))
                                                 .to(layer.weight.device)))
        self.register_buffer("bits", torch.tensor([bits], dtype=torch.int32, device=layer.weight.device))
        bias = torch.zeros(layer.out_features) if layer.bias is None else layer.bias.detach().float()
        self.register_buffer("bias", _aligned(bias.clone().to(layer.weight.device)))
        self.kernels = kernels
        self.register_buffer("handle", torch.tensor(_register(self)), persistent=False)

    def __setstate__(self, state) -> None:  # a copy (copy.deepcopy, pickle) runs its own weights
        super().__setstate__(state)
        self.handle = torch.tensor(_register(self))

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, in]`` float32 -> ``[M, out]`` float32 on the kernel."""
        x = _aligned(x.to(torch.float32))
        m = x.shape[0]
        y = torch.empty(m, self.out_features, dtype=torch.float32, device=x.device)
        self.kernels.get("shiftlinear", "i16", m, self.in_features, self.out_features)(
            x, self.weights, self.bits, self.bias, y)
        return y

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.shiftadd.shift_linear16(rows, self.handle, self.out_features) if compiling() else self.run(rows)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class KernelBinaryProduct:
    """``codes @ values`` on the ``binary_real`` ``matadd`` kernel (:meth:`KernelSet.binary_product`), as the custom
    op ``shiftadd::binary_product``: what :class:`AdditiveAttention` runs its products with."""

    def __init__(self, kernels: KernelSet) -> None:
        self.kernels = kernels

    @torch.no_grad()
    def __call__(self, codes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        if compiling():
            return torch.ops.shiftadd.binary_product(codes, values, self.kernels.handle)
        return self.kernels.binary_product(codes, values)


class KernelAdditiveAttention(nn.Module):
    """Inference-only :class:`AdditiveAttention` whose token mixing is one call of the fused ``additive`` kernel
    (:mod:`kernels.additive`, the custom op ``shiftadd::additive_attention``) between its projections, which run as
    their own choices do (a shift16 ``qkv`` on its kernel). Made by :func:`to_kernels` for an attention the kernel
    takes (:meth:`fusable`); any other keeps its torch mixing around the ``binary_real`` products."""

    def __init__(self, attention: AdditiveAttention, kernels: KernelSet) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.attn_dim = attention.num_heads, attention.head_dim, attention.attn_dim
        self.qkv, self.norm, self.proj, self.proj_drop = attention.qkv, attention.norm, attention.proj, attention.proj_drop
        weight = attention.dconv.weight.detach()
        self.register_buffer("taps", _aligned(weight[:, 0, :, 0].to(torch.float32).clone()))
        self.register_buffer("kind", torch.tensor([BINARIZE_KINDS.index(attention.binarize)], dtype=torch.int32,
                                                  device=weight.device))
        self.kernels = kernels

    @staticmethod
    def fusable(attention: AdditiveAttention) -> bool:
        """Whether the kernel computes this attention: no query/key norms (timm's ``qk_norm``) and the kernel's
        9-tap token conv."""
        return (isinstance(attention.q_norm, nn.Identity) and isinstance(attention.k_norm, nn.Identity)
                and tuple(attention.dconv.weight.shape[1:]) == (1, additive.TAPS, 1))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, feat_size: tuple[int, int] | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("AdditiveAttention does not support attention masks")
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        y = (torch.ops.shiftadd.additive_attention(qkv, self.taps, self.kind, self.kernels.handle) if compiling()
             else self.kernels.additive_attention(qkv, self.taps, self.kind))
        y = self.norm(y.to(x.dtype).reshape(b, n, self.attn_dim))
        return self.proj_drop(self.proj(y))


def _shift_on_kernels(layer: nn.Module, kernels: KernelSet) -> nn.Module:
    return KernelShiftLinear(layer, kernels)


def _shift16_on_kernels(layer: nn.Module, kernels: KernelSet) -> nn.Module:
    return KernelShift16Linear(layer, kernels)


def _additive_on_kernels(attention: nn.Module, kernels: KernelSet) -> nn.Module:
    if KernelAdditiveAttention.fusable(attention):
        return KernelAdditiveAttention(attention, kernels)
    attention.binary_product = KernelBinaryProduct(kernels)
    return attention


# the built-in primitives' kernel execution lives here, beside the kernels (search_spaces never imports this layer)
registry.attach_kernel_runner("linear", "shift", _shift_on_kernels)
registry.attach_kernel_runner("linear", "shift16", _shift16_on_kernels)
registry.attach_kernel_runner("attention", "additive", _additive_on_kernels)


def _swap(module: nn.Module, kernels: KernelSet) -> None:
    """Bottom-up: a primitive's children (an attention's shift projections, an MoE's experts) first, then itself."""
    for name, child in module.named_children():
        _swap(child, kernels)
        run_on_kernels = registry.kernel_runner(child)
        if run_on_kernels is not None:
            replacement = run_on_kernels(child, kernels)
            if replacement is not child:
                setattr(module, name, replacement)


def to_kernels(model: nn.Module, kernels: KernelSet | None = None) -> nn.Module:
    """An inference (eval-mode) copy of ``model`` whose primitives run on the TVM kernels where they can.

    Example:
        >>> fast = to_kernels(model, KernelSet("cpu", trials=64))   # doctest: +SKIP
        >>> fast(images)                                             # doctest: +SKIP
    """
    copied = copy.deepcopy(model).eval()
    _swap(copied, kernels or KernelSet())
    return copied


# ---- the compiled runtime -------------------------------------------------------------------------------------------
RECOMPILE_LIMIT = 64  # graphs of one function: a 12-block model's experts, of two types, at each token bucket
def compiled(module: nn.Module) -> nn.Module:
    """``module`` under ``torch.compile``: inductor on the CPU fuses what runs between the kernels, which it sees as
    the custom ops ``shiftadd::matshift``, ``shiftadd::shift_linear16``, ``shiftadd::additive_attention`` and
    ``shiftadd::binary_product``. Compiled on the first call, per input shape (static first; a size seen to change,
    an MoE expert's tokens, is then compiled once as dynamic); inductor's cache on disk makes a later process's
    compile of the same graph quick."""
    # An MoE's routing is data-dependent, so its experts run between graph breaks as frames of their own: one graph
    # per expert type and token count, which in a deep model outnumber dynamo's default limit of recompiles of one
    # function (8), past which the rest would silently run eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    # Freezing (under no_grad: inference; with gradients it does nothing) folds the weights into the graph as
    # constants, so oneDNN runs the convolutions and linears on weights packed once: PVTv2-b0's compiled dense model
    # took 24.4 ms with it and 33.3 ms without (slower than eager) on an Intel Xeon (bench/results/compile-freezing.md)
    return torch.compile(module, backend="inductor", options={"freezing": True})
