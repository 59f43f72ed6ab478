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

The built-in primitives are declared in :mod:`search_spaces.builtins` (registered when :mod:`search_spaces` is
imported). A new primitive is its module plus one :func:`register` call, e.g. in a module a study names under
``plugins:``
(imported by every process that reads the study, search workers and Ray trials included)::

    from search_spaces import registry

    registry.register(registry.Primitive(
        "attention", "pooling", build=lambda attn, block: PoolingAttention(attn), module=PoolingAttention,
        description="average pooling over tokens"))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from . import counts as oc
from .accelerator_layers import Layer
from .errors import ConfigError

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


# A block's keys and the slot whose primitives each names.
BLOCK_KEYS = {"attention": "attention", "qkv": "linear", "proj": "linear", "mlp": "mlp"}


def refusal(slot: str, name: str, family: str) -> str | None:
    """Why a block of ``family`` cannot take the choice ``name`` of ``slot`` (None: it can)."""
    primitive = get(slot, name)
    if primitive.takes(family):
        return None
    return f"{slot} {name!r} is declared for {', '.join(primitive.families)} blocks only, not {family}"
