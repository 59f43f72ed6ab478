"""What a model family is (:class:`Family`), the sizes it reports (:class:`ModelDims`, :class:`BlockDims`), the
registry of families and how a timm model is created and matched to its family. The built-in families
(``vit.py``, ``pvt_v2.py``) subclass :class:`Family` here; :mod:`search_spaces.families` registers them."""


from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

from .. import counts as oc
from ..accelerator_layers import Layer
from ..config import ModelSpec, _thaw
from ..errors import ConfigError, ResourceError


class UnsupportedModelError(ConfigError):
    """The model family (or one of its layers) cannot be reparameterized yet."""


@dataclass(frozen=True)
class BlockDims:
    """The sizes one block runs at (per image)."""

    tokens: int
    channels: int
    heads: int
    hidden: int  # MLP hidden width
    stage: int = 0
    grid: tuple[int, int] | None = None  # (H, W) of its tokens, for a family whose blocks see the grid (PVTv2)
    # Tokens the dense attention projects keys and values from, when it does so apart from the queries (PVTv2's
    # spatial reduction); None: one fused qkv over every token.
    kv_tokens: int | None = None
    # Dims that tell the dense attention's module apart beyond {B, T, C, H} (PVTv2: the reduction ratio R, and P for
    # linear=True's pooled keys): part of its measurement key. The other attention primitives drop the reduction.
    attention_dims: tuple[tuple[str, int], ...] = ()

    @property
    def head_dim(self) -> int:
        return self.channels // self.heads

    @property
    def spatial_mlp(self) -> bool:
        """Its MLP mixes neighbouring tokens (a depthwise conv over the grid): an MLP op carries the grid."""
        return self.grid is not None


@dataclass(frozen=True)
class ModelDims:
    """The sizes that shape every op of a model: its input, its frame (what runs outside the blocks) and each block."""

    img: int
    classes: int
    frame: tuple[tuple[str, int], ...]  # the frame op's dims besides the batch
    blocks: tuple[BlockDims, ...]

    @property
    def stages(self) -> int:
        return 1 + max((b.stage for b in self.blocks), default=0)

    # Of the first block: the sizes of every block in a ViT.
    @property
    def tokens(self) -> int:
        return self.blocks[0].tokens

    @property
    def embed_dim(self) -> int:
        return self.blocks[0].channels

    @property
    def heads(self) -> int:
        return self.blocks[0].heads

    @property
    def mlp_hidden(self) -> int:
        return self.blocks[0].hidden

    @property
    def head_dim(self) -> int:
        return self.blocks[0].head_dim

    def find_block(self, **wanted: int) -> int:
        """The first block whose sizes are ``wanted`` (field names of :class:`BlockDims`, or attention dims)."""
        for i, block in enumerate(self.blocks):
            have = {**block.__dict__, **dict(block.attention_dims)}
            if all(have.get(k) == v for k, v in wanted.items()):
                return i
        raise ValueError(f"no block of this model runs at {wanted}")

    @classmethod
    def of(cls, spec: ModelSpec) -> "ModelDims":
        """The sizes of the model a spec names (read off it built on the meta device: no memory, no weights)."""
        return _meta_model_family(spec)[1]


class Family(ABC):
    """What the rest of the product needs to know of one timm model family.

    The abstract methods say where the blocks are and what they hold; the others have the defaults of a ViT-like
    layout (blocks called with tokens alone, one fused ``qkv``) and a family overrides what differs.
    """

    key: str  # short, in predictor files and reports: "vit"
    name: str  # what errors list: the key and the timm models it covers
    timm_modules: tuple[str, ...] = ()  # timm model modules whose model names are of this family (create_kwargs)

    @abstractmethod
    def matches(self, model: nn.Module) -> bool:
        """Whether ``model`` is of this family."""

    @abstractmethod
    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The searchable blocks, in order (over stages), each with ``attn`` and ``mlp``."""

    @abstractmethod
    def check_block(self, block: nn.Module, where: str) -> None:
        """Raise :class:`UnsupportedModelError` at ``where`` if the block's layers cannot be reparameterized."""

    @abstractmethod
    def dims(self, model: nn.Module) -> ModelDims:
        """The sizes its ops run at (read off a model built on the meta device)."""

    @abstractmethod
    def timing_spec(self, spec: ModelSpec) -> ModelSpec:
        """The same model cut down to as few blocks as hold one of every size: what a block is timed inside."""

    @abstractmethod
    def frame(self, model: nn.Module) -> nn.Module:
        """The model without its blocks: everything a forward pass runs outside them (timed as one op)."""

    def frame_counts(self, dims: ModelDims, batch: int) -> oc.OpCounts:
        """What one forward pass of ``batch`` images runs outside the blocks (:mod:`search_spaces.counts`): the
        energy estimate's frame. A family without it cannot be priced in energy."""
        raise NotImplementedError(f"the {self.key} family does not count its frame's operations (Family.frame_counts)")

    def attention_layout_counts(self, dims: BlockDims, batch: int) -> oc.OpCounts:
        """What the dense attention of a block runs besides its projections and its softmax attention (PVTv2: the
        spatial reduction), counted when a block keeps it (``msa``)."""
        return oc.NONE

    def mlp_layout_counts(self, dims: BlockDims, batch: int) -> oc.OpCounts:
        """What each run of a block's MLP (or of one MoE expert) executes besides its two layers and activation,
        over the batch's whole token grid (PVTv2: the depthwise conv)."""
        return oc.NONE

    def frame_layers(self, dims: ModelDims, batch: int) -> list[Layer]:
        """The layers outside the blocks the accelerator energy model prices (:mod:`search_spaces.accelerator_layers`):
        the patch embedding and downsampling convs, the head. A family without it cannot be priced by that model."""
        raise NotImplementedError(f"the {self.key} family does not list its frame's layers (Family.frame_layers)")

    def attention_layout_layers(self, dims: BlockDims, batch: int) -> list[Layer]:
        """The layers of :meth:`attention_layout_counts` (PVTv2: the spatial-reduction conv)."""
        return []

    def mlp_layout_layers(self, dims: BlockDims, batch: int) -> list[Layer]:
        """The layers of :meth:`mlp_layout_counts` (PVTv2: the depthwise conv), per run of the MLP."""
        return []

    def timing_index(self, dims: ModelDims, block: int) -> int:
        """Which block of the :meth:`timing_spec` model runs at the sizes of block ``block`` of the full model."""
        return 0

    def create_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The study's ``model.kwargs`` as timm's constructor of this family takes them."""
        return dict(kwargs)

    def call_args(self, dims: BlockDims) -> tuple:
        """What a block, its attention and its MLP take besides the tokens (PVTv2: the grid size)."""
        return ()

    def attention_source(self, attn: nn.Module, shared: bool = False) -> nn.Module:
        """What an attention primitive that replaces the dense attention is built from: a module with ``qkv``,
        ``proj``, ``num_heads``, ``head_dim`` (and optionally ``q_norm``, ``k_norm``), as timm's ViT attention.
        ``shared``: for a supernet, whose attentions all run the dense attention's own projection layers (a family
        that would fuse copies of them must not)."""
        return attn

    def projections(self, attn: nn.Module, key: str) -> tuple[str, ...]:
        """The attributes of ``attn`` that a block's ``qkv`` or ``proj`` choice converts."""
        return (key,)

    def adapt_mlp(self, mlp: nn.Module) -> nn.Module:
        """An MLP primitive's module as this family's blocks call it."""
        return mlp

    def mismatch_hint(self, model: nn.Module, state: Mapping[str, Any]) -> str | None:
        """Why a state dict that does not fit ``model`` may be of a sibling variant (a study key to fix), if known."""
        return None


_FAMILIES: list[Family] = []


def register(family: Family) -> Family:
    _FAMILIES.append(family)
    return family


def names() -> list[str]:
    return [family.name for family in _FAMILIES]


@functools.lru_cache(maxsize=64)
def _meta_model_family(spec: ModelSpec) -> tuple[Family, ModelDims]:
    with torch.device("meta"):
        model = create_model(spec)
    family = family_of(model)
    return family, family.dims(model)


def family_for(spec: ModelSpec) -> Family:
    """The family of the model a spec names."""
    return _meta_model_family(spec)[0]


def family_named(name: str) -> Family | None:
    """The family a timm model name belongs to, known from the timm module that defines it (None: not known by
    name; :func:`family_of` still tells from the built model)."""
    for family in _FAMILIES:
        if family.timm_modules and timm.models.is_model_in_modules(name, list(family.timm_modules)):
            return family
    return None


def create_model(spec: ModelSpec, pretrained: bool = False) -> nn.Module:
    """The timm model a spec names, randomly initialized (never downloads weights), or with ``pretrained`` timm's
    published weights for it (downloaded by timm, or read from where ``kwargs.pretrained_cfg_overlay`` points; the
    head is new when ``num_classes`` differs from theirs)."""
    if not timm.is_model(spec.name):
        raise ConfigError("model.name", f"unknown timm model {spec.name!r} (see timm.list_models())")
    kwargs = _thaw(spec.kwargs)
    family = family_named(spec.name)
    if family is not None:
        kwargs = family.create_kwargs(kwargs)
    if pretrained:
        return _published(spec.name, kwargs)
    try:
        return timm.create_model(spec.name, pretrained=False, **kwargs)
    except TypeError as e:
        raise ConfigError("model.kwargs", f"timm rejected the arguments of {spec.name!r}: {e}") from None
    except (AssertionError, ValueError, RuntimeError) as e:
        raise ConfigError("model.kwargs", f"timm cannot build {spec.name!r} with {kwargs}: {e}") from None


def _published(name: str, kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (TypeError, AssertionError, ValueError) as e:
        raise ConfigError("model.kwargs", f"timm cannot build {name!r} with {kwargs}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the hub's many network and cache errors: one line naming the way out
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ResourceError("model.pretrained", f"cannot get timm's published weights for {name!r} ({reason}): on a "
                                                f"machine that cannot reach the Hugging Face hub, download them "
                                                f"elsewhere (timm's model.safetensors for it) and give model.pretrained: <that file>") from None


def family_of(model: nn.Module) -> Family:
    """The family of a model; an unsupported one is a one-line error naming the supported ones."""
    for family in _FAMILIES:
        if family.matches(model):
            return family
    raise UnsupportedModelError("model.name", f"{type(model).__name__} is not supported yet (supported: "
                                              f"{'; '.join(names())})")


__all__ = ["BlockDims", "Family", "ModelDims", "UnsupportedModelError", "create_model", "family_for", "family_named",
           "family_of", "names", "register"]
