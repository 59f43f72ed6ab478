"""The built-in primitives: each choice of each slot declared once (:func:`search_spaces.registry.register`), with
how it is built, runs on the kernels, is priced in latency and energy. Importing :mod:`search_spaces` registers
them; a plugin registers its own the same way."""

from __future__ import annotations

import copy

from torch import nn

from . import accelerator_layers as al
from . import counts as oc
from . import registry
from .accelerator_layers import Layer
from .ops.attention import TOKEN_CONV_TAPS, AdditiveAttention, LinearAttention
from .ops.int8 import Int8Linear
from .ops.moe import EXPERT_KINDS, MoEMlp
from .ops.shift import DEFAULT_WEIGHT_BITS, Shift16Linear, ShiftLinear
from .registry import KernelTask, Primitive, Shapes


def _matmul(shapes: Shapes, layers) -> list[KernelTask]:
    return [("matmul", "fp32", m, k, n) for m, k, n in layers]


def _matshift(shapes: Shapes, layers) -> list[KernelTask]:
    return [("matshift", None, m, k, n) for m, k, n in layers]


def _shiftlinear(shapes: Shapes, layers) -> list[KernelTask]:
    return [("shiftlinear", "i16", m, k, n) for m, k, n in layers]


def _dense_layers(shapes: Shapes, layers) -> oc.OpCounts:
    return oc.total(oc.linear(m, k, n) for m, k, n in layers)


def _shift_counts(layer_counts):
    """The counts of shift layers of one arithmetic (``counts.shift_linear`` or ``counts.shift16_linear``), at the
    default weight bits."""
    def counts(shapes: Shapes, layers) -> oc.OpCounts:
        return oc.total(layer_counts(m, k, n, DEFAULT_WEIGHT_BITS) for m, k, n in layers)
    return counts


_shift_layers = _shift_counts(oc.shift_linear)
_shift16_layers = _shift_counts(oc.shift16_linear)


def _int8_layers(shapes: Shapes, layers) -> oc.OpCounts:
    return oc.total(oc.int8_linear(m, k, n) for m, k, n in layers)


def _mlp_counts(layer_counts):
    """An MLP: its two layers and the GELU between them (a family's extra layout, PVTv2's depthwise conv, is the
    family's to count)."""
    def counts(shapes: Shapes, layers) -> oc.OpCounts:
        return layer_counts(shapes, layers) + oc.gelu(shapes.rows * shapes.hidden)
    return counts


def _msa_counts(s: Shapes, layers=()) -> oc.OpCounts:
    """Softmax attention per (image, head): queries scaled, ``Q Kᵀ``, the softmax over the attended tokens, ``P V``."""
    t, kv, d, heads = s.tokens, s.attended, s.head_dim, s.batch * s.heads
    return (oc.elementwise(heads * t * d, mult=1) + oc.product(t, d, kv, heads) + oc.softmax(heads * t, kv)
            + oc.product(t, kv, d, heads))


def _linear_attention_counts(s: Shapes, layers=()) -> oc.OpCounts:
    """``φ = elu + 1`` on Q and K, ``Kᵀ V``, the normalizer ``Q · Σ K``, ``Q (Kᵀ V)`` and the division."""
    t, kv, d, heads = s.tokens, s.attended, s.head_dim, s.batch * s.heads
    feature_map = oc.elementwise(heads * (t + kv) * d, cmp=1, exp=1, add=1)  # elu: a compare, an exp, then + 1
    key_sum = oc.elementwise(heads * kv * d, add=1)
    return (feature_map + oc.product(d, kv, d, heads) + key_sum + oc.product(t, d, 1, heads)
            + oc.product(t, d, d, heads) + oc.elementwise(heads * t * d, inputs=2, add=1, mult=1)
            + oc.OpCounts({"exp.fp32": heads * t}))  # one reciprocal per query


def _additive_attention_counts(s: Shapes, layers=()) -> oc.OpCounts:
    """:class:`~search_spaces.ops.attention.AdditiveAttention`: Q and K normalized and binarized (a mean, a
    comparison), ``K_bᵀ V`` and ``Q_b (K_bᵀ V)`` as sums of selected rows, ``0.5·V + (1/π)·...`` normalized, plus the
    depthwise conv over tokens (9 TOKEN_CONV_TAPS)."""
    t, d, heads = s.tokens, s.head_dim, s.batch * s.heads
    codes = oc.l2_normalize(2 * heads * t, d) + oc.elementwise(2 * heads * t * d, add=1, cmp=1)
    mix = oc.elementwise(heads * t * d, inputs=2, mult=2, add=1) + oc.l2_normalize(heads * t, d)
    token_conv = oc.elementwise(heads * t * d, mult=TOKEN_CONV_TAPS, add=TOKEN_CONV_TAPS) + oc.weights_read(s.heads * TOKEN_CONV_TAPS)
    return (codes + oc.binary_product(d, t, d, heads) + oc.binary_product(t, d, d, heads) + mix + token_conv
            + oc.elementwise(heads * t * d, inputs=2, add=1))


def _additive_mixing(s: Shapes, layers=()) -> list[KernelTask]:
    """Additive attention's token mixing as one fused kernel over the batch (``kernels.additive``): M tokens (keys
    and values over every token, a pyramid family's too), K the head dimension, N the heads."""
    return [("additive", "lut4", s.tokens, s.head_dim, s.heads, s.batch)]


def _router_counts(s: Shapes, layers=()) -> oc.OpCounts:
    """An MoE's router on every token (``C -> E`` logits, their softmax, the top-k by comparisons, the chosen gates
    renormalized) and each expert's output weighted by its gate and added into the result. Counted at top-1 and two
    experts unless ``layers`` gives ``((rows, experts, top_k),)``."""
    rows, experts, top_k = layers[0] if layers else (s.rows, 2, 1)
    assignments = rows * top_k
    return (oc.linear(rows, s.channels, experts) + oc.softmax(rows, experts)
            + oc.elementwise(rows * experts * top_k, cmp=1) + oc.elementwise(assignments, add=1, mult=1)
            + oc.elementwise(assignments * s.channels, inputs=2, mult=1, add=1))


def _layers_of(kind: str, bits: int = 32):
    """A linear or MLP choice's accelerator layers: each of its linear layers as one ``kind`` layer (an MLP's
    activation is not priced)."""
    def layers(shapes: Shapes, linear_layers) -> list[Layer]:
        return al.linears(linear_layers, kind, bits)
    return layers


def _msa_layers(s: Shapes, layers=()) -> list[Layer]:
    """``Q Kᵀ`` and ``P V``, each an FC layer over every (image, head, query) row."""
    rows, kv, d = s.batch * s.heads * s.tokens, s.attended, s.head_dim
    return [al.fc(rows, d, kv), al.fc(rows, kv, d)]


def _linear_attention_layers(s: Shapes, layers=()) -> list[Layer]:
    """``Kᵀ V`` (rows: the heads' dimensions), the normalizer ``Q · Σ K`` and ``Q (Kᵀ V)`` as FC layers."""
    heads, t, kv, d = s.batch * s.heads, s.tokens, s.attended, s.head_dim
    return [al.fc(heads * d, kv, d), al.fc(heads * t, d, 1), al.fc(heads * t, d, d)]


def _additive_attention_layers(s: Shapes, layers=()) -> list[Layer]:
    """``K_bᵀ V`` and ``Q_b (K_bᵀ V)`` as Add layers (the released hook's ``MatAdd``), and the depthwise token conv
    (``TOKEN_CONV_TAPS x 1`` over the tokens of each head's ``[T, D]``) as a conv."""
    heads, t, d = s.batch * s.heads, s.tokens, s.head_dim
    return [al.fc(heads * d, t, d, "Add"), al.fc(heads * t, d, d, "Add"),
            al.conv(s.batch, s.heads, s.heads, (TOKEN_CONV_TAPS, 1), 1, (t, d), (t, d), groups=s.heads)]


def _router_layers(s: Shapes, layers=()) -> list[Layer]:
    """An MoE's router: one FC layer ``C -> E`` over every token (``layers``: ``((rows, experts, top_k),)``)."""
    rows, experts, _ = layers[0] if layers else (s.rows, 2, 1)
    return [al.fc(rows, s.channels, experts)]


def _shift_linear(linear: nn.Module, block=None) -> nn.Module:
    return ShiftLinear.from_dense(linear)


def _shift16_linear(linear: nn.Module, block=None) -> nn.Module:
    return Shift16Linear.from_dense(linear)


def _int8_linear(linear: nn.Module, block=None) -> nn.Module:
    return Int8Linear.from_dense(linear)


def _int8_inference(layer: nn.Module, kernels=None) -> nn.Module:
    return layer.inference()


def _linear_attention(attn: nn.Module, block) -> nn.Module:
    return LinearAttention(attn)


def _additive_attention(attn: nn.Module, block) -> nn.Module:
    return AdditiveAttention(attn, binarize=block.binarize)


def _mlp_of(convert):
    """An MLP choice that converts both of the dense MLP's layers with ``convert`` (in place)."""
    def build(mlp: nn.Module, block=None) -> nn.Module:
        mlp.fc1 = convert(mlp.fc1)
        mlp.fc2 = convert(mlp.fc2)
        return mlp
    return build


_shift_mlp = _mlp_of(_shift_linear)
_shift16_mlp = _mlp_of(_shift16_linear)
_int8_mlp = _mlp_of(_int8_linear)


def moe_from_dense(mlp: nn.Module, kinds: tuple[str, ...] = EXPERT_KINDS, top_k: int = 1) -> MoEMlp:
    """An MoE whose experts are initialized from the dense timm ``Mlp`` it replaces, each by its ``expert`` primitive
    (a dense copy, or a copy converted to shift layers)."""
    moe = MoEMlp(experts_of(mlp, kinds), list(kinds), mlp.fc1.in_features, top_k=top_k)
    return moe.to(mlp.fc1.weight.device)


def _moe(mlp: nn.Module, block) -> nn.Module:
    return moe_from_dense(mlp, block.moe.experts, block.moe.top_k)


def experts_of(mlp: nn.Module, kinds) -> list[nn.Module]:
    """The experts of an MoE built from a dense MLP, one per kind, each by its ``expert`` primitive."""
    return [registry.get("expert", kind).build(mlp, None) for kind in kinds]


def _moe_on_kernels(moe: nn.Module, kernels) -> nn.Module:
    moe.pad_to_buckets = True  # experts see a few token counts, not one kernel shape per batch
    return moe


def _expert_of(build_mlp):
    """An expert choice: a copy of the dense MLP, converted by the MLP choice ``build_mlp``."""
    def build(mlp: nn.Module, block=None) -> nn.Module:
        return build_mlp(copy.deepcopy(mlp))
    return build


_dense_expert = _expert_of(lambda mlp: mlp)
_shift_expert = _expert_of(_shift_mlp)
_shift16_expert = _expert_of(_shift16_mlp)
_int8_expert = _expert_of(_int8_mlp)


def _register() -> None:
    def products(kernel: str, variant: str, linear_in_tokens: bool):
        """The two products of an attention per (image, head)."""
        def tasks(s: Shapes, layers) -> list[KernelTask]:
            t, kv, d = s.tokens, s.attended, s.head_dim
            if linear_in_tokens:  # K^T V then Q (K^T V): D x T x D and T x D x D
                return [(kernel, variant, d, kv, d), (kernel, variant, t, d, d)]
            return [(kernel, variant, t, d, kv), (kernel, variant, t, kv, d)]  # softmax: Q K^T, then P V
        return tasks

    for primitive in (
        Primitive("attention", "msa", kernel_tasks=products("matmul", "fp32", False), counts=_msa_counts,
                  accelerator=_msa_layers,
                  description="timm's softmax attention (its projections may still be shift layers)"),
        Primitive("attention", "linear", _linear_attention, LinearAttention,
                  kernel_tasks=products("matmul", "fp32", True), counts=_linear_attention_counts,
                  accelerator=_linear_attention_layers,
                  description="kernelized linear attention, elu + 1 feature map, linear in tokens"),
        Primitive("attention", "additive", _additive_attention, AdditiveAttention, None, _additive_mixing,
                  _additive_attention_counts, on_kernels=True, accelerator=_additive_attention_layers,
                  description="ShiftAddViT's binary linear-angular attention: its products are additions"),
        Primitive("linear", "dense", kernel_tasks=_matmul, counts=_dense_layers, accelerator=_layers_of("FC"),
                  description="the dense linear layer"),
        Primitive("linear", "shift", _shift_linear, ShiftLinear, None, _matshift, _shift_layers,
                  on_kernels=True, accelerator=_layers_of("Shift"),
                  description="weights as signed powers of two: products are bit shifts (the paper's 32-bit fixed "
                              "point)"),
        Primitive("linear", "shift16", _shift16_linear, Shift16Linear, None, _shiftlinear, _shift16_layers,
                  on_kernels=True, accelerator=_layers_of("Shift"),
                  description="shift weights on int16 activations (one power-of-two scale per token): one fused "
                              "kernel of integer dot products"),
        Primitive("linear", "int8", _int8_linear, Int8Linear, _int8_inference, counts=_int8_layers,
                  accelerator=_layers_of("FC", 8),
                  description="int8 quantization of the dense layer (weights per channel, activations per token): "
                              "the CPU's int8 dot products, the baseline shift layers compete with"),
        Primitive("mlp", "dense", kernel_tasks=_matmul, counts=_mlp_counts(_dense_layers), accelerator=_layers_of("FC"),
                  description="the dense MLP"),
        Primitive("mlp", "shift", _shift_mlp, kernel_tasks=_matshift, counts=_mlp_counts(_shift_layers),
                  on_kernels=True, accelerator=_layers_of("Shift"),
                  description="the MLP with both layers as shift layers"),
        Primitive("mlp", "shift16", _shift16_mlp, kernel_tasks=_shiftlinear, counts=_mlp_counts(_shift16_layers),
                  on_kernels=True, accelerator=_layers_of("Shift"),
                  description="the MLP with both layers as shift16 layers"),
        Primitive("mlp", "int8", _int8_mlp, counts=_mlp_counts(_int8_layers), accelerator=_layers_of("FC", 8),
                  description="the MLP with both layers as int8 layers"),
        Primitive("mlp", "moe", _moe, MoEMlp, _moe_on_kernels, counts=_router_counts, routed=True,
                  accelerator=_router_layers,
                  description="a mixture of experts (space.moe.experts), routed by a latency-aware balance loss"),
        Primitive("expert", "dense", _dense_expert, kernel_tasks=_matmul, counts=_mlp_counts(_dense_layers),
                  accelerator=_layers_of("FC"),
                  description="a copy of the dense MLP"),
        Primitive("expert", "shift", _shift_expert, kernel_tasks=_matshift, counts=_mlp_counts(_shift_layers),
                  on_kernels=True, accelerator=_layers_of("Shift"),
                  description="a copy of the MLP with shift layers"),
        Primitive("expert", "shift16", _shift16_expert, kernel_tasks=_shiftlinear,
                  counts=_mlp_counts(_shift16_layers), on_kernels=True, accelerator=_layers_of("Shift"),
                  description="a copy of the MLP with shift16 layers"),
        Primitive("expert", "int8", _int8_expert, counts=_mlp_counts(_int8_layers), accelerator=_layers_of("FC", 8),
                  description="a copy of the MLP with int8 layers"),
    ):
        registry.register(primitive)


_register()


__all__ = ["experts_of", "moe_from_dense"]
