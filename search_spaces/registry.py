"""The primitives: one declaration per choice of each slot of a block, with what every stage needs of it.

A block has four slots, each with its choices:

- ``attention``: the token mixer, built from the dense timm ``Attention`` (``msa``, ``linear``, ``additive``);
- ``linear``: a projection of the attention (``qkv``, ``proj``) or of a dense MLP (``dense``, ``shift``,
  ``shift16``, ``int8``);
- ``mlp``: the MLP, built from the dense timm ``Mlp`` (``dense``, ``shift``, ``shift16``, ``int8``, ``moe``);
- ``expert``: one expert of an MoE MLP, built from the dense ``Mlp`` (``dense``, ``shift``, ``shift16``, ``int8``).

A :class:`Primitive` says how to build it from the dense module (``reparam.apply``), whether and how it runs on the
compiled TVM kernels (``kernels.runtime.to_kernels``), the kernel shapes it needs (``nas profile`` tunes and times
them) and how the latency model prices it (one op of its slot, or, ``routed``, a router plus its experts).
:class:`~search_spaces.config.BlockConfig` validates against the registry and a search space offers every
registered choice unless a study narrows it.

A new primitive is its module plus one :func:`register` call, e.g. in a module a study names under ``plugins:``
(imported by every process that reads the study, search workers and Ray trials included)::

    from search_spaces import registry

    registry.register(registry.Primitive(
        "attention", "pooling", build=lambda attn, block: PoolingAttention(attn), module=PoolingAttention,
        description="average pooling over tokens"))
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from torch import nn

from . import accelerator_layers as al
from . import counts as oc
from .accelerator_layers import Layer
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import BlockConfig

SLOTS = ("attention", "linear", "mlp", "expert")

# A kernel shape a primitive needs: (kernel, variant or None for the kernel's default variant, M, K, N), and
# optionally a sixth item, the batch of independent products one call computes (1 if absent).
KernelTask = tuple[str, "str | None", int, int, int] | tuple[str, "str | None", int, int, int, int]


@dataclass(frozen=True)
class Shapes:
    """The sizes one block runs at, for one batch size: what a primitive's kernel shapes are made of."""

    batch: int
    tokens: int  # per image
    channels: int
    heads: int
    hidden: int  # MLP hidden width
    # Tokens keys and values are projected from, apart from the queries (PVTv2's spatial-reduction attention);
    # None: one fused qkv over every token.
    kv_tokens: int | None = None

    @property
    def rows(self) -> int:
        """Tokens of the whole batch: the M of the block's linear layers."""
        return self.batch * self.tokens

    @property
    def head_dim(self) -> int:
        return self.channels // self.heads

    @property
    def attended(self) -> int:
        """Tokens each query attends over."""
        return self.tokens if self.kv_tokens is None else self.kv_tokens

    def linear_layers(self, slot: str) -> tuple[tuple[int, int, int], ...]:
        """``(rows, in, out)`` of the linear layers a slot holds: the attention's qkv (or q and kv) and proj, the
        MLP's fc1 and fc2."""
        m, c, hd = self.rows, self.channels, self.hidden
        if slot == "qkv":
            return ((m, c, 3 * c),) if self.kv_tokens is None else ((m, c, c), (self.batch * self.kv_tokens, c, 2 * c))
        return {"proj": ((m, c, c),), "mlp": ((m, c, hd), (m, hd, c))}[slot]


@dataclass(frozen=True)
class Primitive:
    """One choice of one slot.

    Attributes:
        slot: one of :data:`SLOTS`.
        name: the choice's name in configs and study files.
        build: ``build(dense_module, block) -> module``: the replacement, made from the slot's dense module (it may
            convert that module in place and return it). None: the dense module stays, bit-identical.
        module: the class ``build`` makes; the kernel runtime finds the primitive's modules by it (needed with
            ``run_on_kernels``).
        run_on_kernels: ``run_on_kernels(module, kernels) -> module``: the inference module that runs it on the
            compiled kernels (a ``kernels.runtime.KernelSet``), called after its children are converted. None:
            nothing of its own changes (its children may still run on the kernels).
        on_kernels: part of its work runs on the TVM kernels (itself or its children): the latency model counts
            such blocks, which pay the cost of crossing into TVM.
        kernel_tasks: ``kernel_tasks(shapes, layers) -> [KernelTask]``: the kernel shapes it needs; ``layers`` are
            the ``(rows, in, out)`` of the linear layers it stands for (linear and MLP slots).
        counts: ``counts(shapes, layers) -> OpCounts``: what one forward pass at ``shapes`` executes
            (:mod:`search_spaces.counts`), for the energy estimate: an attention's token mixing (its projections are
            the ``linear`` slot's), a linear choice's ``layers``, an MLP's layers and activation (a routed MLP: its
            router and the weighting of its experts' outputs; each expert counts itself at the rows it runs). An
            expert's counts must be affine in its rows (an MoE is priced at the expected rows of each expert). None:
            the primitive cannot be priced in energy, and a study with ``energy_uj`` refuses a space that offers it.
        routed: an MLP that routes each token to some of its experts (priced as its router plus each expert at the
            token counts it runs at).
        families: the model families (``Family.key``: ``vit``, ``pvt_v2``) whose blocks it can take; None: every
            family. A search space leaves it out of the others' default choices and refuses it where named, and
            ``reparam.apply`` refuses a config that puts it on a block of another family.
        accelerator: ``accelerator(shapes, layers) -> [Layer]``: the layers the accelerator energy model prices
            (:mod:`search_spaces.accelerator_layers`), with the same scope as ``counts`` (an MoE: its router). None:
            a study with ``energy: {model: accelerator}`` refuses a space that offers it.
        description: one line for ``--help`` and the docs.
    """

    slot: str
    name: str
    build: Callable[[nn.Module, "BlockConfig"], nn.Module] | None = None
    module: type[nn.Module] | None = None
    run_on_kernels: Callable[[nn.Module, Any], nn.Module] | None = None
    kernel_tasks: Callable[[Shapes, tuple[tuple[int, int, int], ...]], list[KernelTask]] | None = None
    counts: Callable[[Shapes, tuple[tuple[int, int, int], ...]], oc.OpCounts] | None = None
    on_kernels: bool = False
    routed: bool = False
    families: tuple[str, ...] | None = None
    accelerator: Callable[[Shapes, tuple[tuple[int, int, int], ...]], list[Layer]] | None = None
    description: str = ""

    @property
    def keeps_dense(self) -> bool:
        """It keeps the slot's dense module (its projections may still change): what a family's dense layout
        (PVTv2's spatial reduction) is kept for."""
        return self.build is None

    def takes(self, family: str) -> bool:
        """Whether it can take a block of the model family ``family``."""
        return self.families is None or family in self.families

    def tasks(self, shapes: Shapes, layers: tuple[tuple[int, int, int], ...] = ()) -> list[KernelTask]:
        return self.kernel_tasks(shapes, layers) if self.kernel_tasks is not None else []

    def op_counts(self, shapes: Shapes, layers: tuple[tuple[int, int, int], ...] = ()) -> oc.OpCounts:
        """What one forward pass at ``shapes`` executes; a primitive that declares no counts is a ConfigError."""
        if self.counts is None:
            raise ConfigError(f"{self.slot} {self.name!r}", "declares no operation counts (Primitive.counts), so "
                                                            "energy_uj cannot price it")
        return self.counts(shapes, layers)

    def accelerator_layers(self, shapes: Shapes, layers: tuple[tuple[int, int, int], ...] = ()) -> list[Layer]:
        """The layers the accelerator energy model prices; a primitive that declares none is a ConfigError."""
        if self.accelerator is None:
            raise ConfigError(f"{self.slot} {self.name!r}", "declares no accelerator layers (Primitive.accelerator), "
                                                            "so energy model 'accelerator' cannot price it")
        return self.accelerator(shapes, layers)


_REGISTRY: dict[tuple[str, str], Primitive] = {}


def register(primitive: Primitive) -> Primitive:
    """Add a primitive (a second registration of the same slot and name replaces the first: re-importing a plugin
    module is harmless)."""
    if primitive.slot not in SLOTS:
        raise ValueError(f"unknown slot {primitive.slot!r} (choose from {', '.join(SLOTS)})")
    if not primitive.name or not primitive.name.replace("_", "").isalnum():
        raise ValueError(f"a primitive's name is letters, digits and '_', got {primitive.name!r}")
    if primitive.run_on_kernels is not None and primitive.module is None:
        raise ValueError(f"{primitive.slot} {primitive.name!r}: give the module class its build makes, so the kernel "
                         "runtime can find its modules")
    _REGISTRY[(primitive.slot, primitive.name)] = primitive
    return primitive


def attach_kernel_runner(slot: str, name: str, run_on_kernels: Callable[[nn.Module, Any], nn.Module]) -> None:
    """Give a registered primitive its ``run_on_kernels`` from the layer that owns the kernels (:mod:`kernels.runtime`
    attaches the built-in ones when it is imported, so this package never imports it)."""
    primitive = get(slot, name)
    register(replace(primitive, run_on_kernels=run_on_kernels))


def unregister(slot: str, name: str) -> None:
    """Remove a primitive (tests that register one remove it again)."""
    _REGISTRY.pop((slot, name), None)


def names(slot: str) -> tuple[str, ...]:
    """The choices of a slot, in registration order (built-in ones first)."""
    return tuple(name for s, name in _REGISTRY if s == slot)


def get(slot: str, name: str, where: str = "") -> Primitive:
    """The primitive of a slot's choice; an unknown one is a :class:`ConfigError` at ``where``."""
    try:
        return _REGISTRY[(slot, name)]
    except KeyError:
        raise ConfigError(where or slot, f"unknown {slot} option {name!r} (choose from {', '.join(names(slot))})") \
            from None


def primitives() -> Iterator[Primitive]:
    yield from _REGISTRY.values()


def kernel_runner(module: nn.Module) -> Callable[[nn.Module, Any], nn.Module] | None:
    """How ``module`` runs on the kernels, if it is a primitive's module that does (matched by exact class)."""
    for primitive in _REGISTRY.values():
        if primitive.run_on_kernels is not None and primitive.module is type(module):
            return primitive.run_on_kernels
    return None


def block_primitives(block: "BlockConfig") -> list[Primitive]:
    """Every primitive a block's choices use: attention, qkv, proj, MLP and, for a routed MLP, its experts."""
    used = [get("attention", block.attention), get("linear", block.qkv), get("linear", block.proj),
            get("mlp", block.mlp)]
    if block.moe is not None:
        used += [get("expert", kind) for kind in block.moe.experts]
    return used


# A block's keys and the slot whose primitives each names.
BLOCK_KEYS = {"attention": "attention", "qkv": "linear", "proj": "linear", "mlp": "mlp"}


def refusal(slot: str, name: str, family: str) -> str | None:
    """Why a block of ``family`` cannot take the choice ``name`` of ``slot`` (None: it can)."""
    primitive = get(slot, name)
    if primitive.takes(family):
        return None
    return f"{slot} {name!r} is declared for {', '.join(primitive.families)} blocks only, not {family}"


def check_family(block: "BlockConfig", family: str, where: str) -> None:
    """Refuse (:class:`ConfigError` at ``where.<key>``) a block choice that its model's family cannot take."""
    for key, slot in BLOCK_KEYS.items():
        why = refusal(slot, getattr(block, key), family)
        if why is not None:
            raise ConfigError(f"{where}.{key}", why)
    for i, kind in enumerate(block.moe.experts if block.moe is not None else ()):
        why = refusal("expert", kind, family)
        if why is not None:
            raise ConfigError(f"{where}.moe.experts[{i}]", why)


def on_kernels(block: "BlockConfig") -> bool:
    """Whether a block runs part of its work on the TVM kernels."""
    return any(p.on_kernels for p in block_primitives(block))


# ---- the built-in primitives -----------------------------------------------------------------------------------
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
        from .ops.shift import DEFAULT_WEIGHT_BITS

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
    depthwise conv over tokens (9 taps)."""
    from .ops.attention import TOKEN_CONV_TAPS as taps

    t, d, heads = s.tokens, s.head_dim, s.batch * s.heads
    codes = oc.l2_normalize(2 * heads * t, d) + oc.elementwise(2 * heads * t * d, add=1, cmp=1)
    mix = oc.elementwise(heads * t * d, inputs=2, mult=2, add=1) + oc.l2_normalize(heads * t, d)
    token_conv = oc.elementwise(heads * t * d, mult=taps, add=taps) + oc.weights_read(s.heads * taps)
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
    (``taps x 1`` over the tokens of each head's ``[T, D]``) as a conv."""
    from .ops.attention import TOKEN_CONV_TAPS as taps

    heads, t, d = s.batch * s.heads, s.tokens, s.head_dim
    return [al.fc(heads * d, t, d, "Add"), al.fc(heads * t, d, d, "Add"),
            al.conv(s.batch, s.heads, s.heads, (taps, 1), 1, (t, d), (t, d), groups=s.heads)]


def _router_layers(s: Shapes, layers=()) -> list[Layer]:
    """An MoE's router: one FC layer ``C -> E`` over every token (``layers``: ``((rows, experts, top_k),)``)."""
    rows, experts, _ = layers[0] if layers else (s.rows, 2, 1)
    return [al.fc(rows, s.channels, experts)]


def _shift_linear(linear: nn.Module, block=None) -> nn.Module:
    from .ops.shift import ShiftLinear

    return ShiftLinear.from_dense(linear)


def _shift16_linear(linear: nn.Module, block=None) -> nn.Module:
    from .ops.shift import Shift16Linear

    return Shift16Linear.from_dense(linear)


def _int8_linear(linear: nn.Module, block=None) -> nn.Module:
    from .ops.int8 import Int8Linear

    return Int8Linear.from_dense(linear)


def _int8_inference(layer: nn.Module, kernels=None) -> nn.Module:
    return layer.inference()


def _linear_attention(attn: nn.Module, block) -> nn.Module:
    from .ops.attention import LinearAttention

    return LinearAttention(attn)


def _additive_attention(attn: nn.Module, block) -> nn.Module:
    from .ops.attention import AdditiveAttention

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


def _moe(mlp: nn.Module, block) -> nn.Module:
    from .ops.moe import MoEMlp

    return MoEMlp.from_dense(mlp, block.moe.experts, block.moe.top_k)


def experts_of(mlp: nn.Module, kinds) -> list[nn.Module]:
    """The experts of an MoE built from a dense MLP, one per kind, each by its ``expert`` primitive."""
    return [get("expert", kind).build(mlp, None) for kind in kinds]


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


def _register_builtins() -> None:
    from .ops.attention import AdditiveAttention, LinearAttention
    from .ops.int8 import Int8Linear
    from .ops.moe import MoEMlp
    from .ops.shift import Shift16Linear, ShiftLinear

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
        register(primitive)


_register_builtins()
