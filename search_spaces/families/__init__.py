"""Model families: one adapter per timm family says where its searchable blocks are, what sizes each block runs at,
and how to cut it down for timing. Everything that needs to know a model's layout asks its family.

Supported: ``vit`` (timm ``VisionTransformer`` and its subclasses: ViT, DeiT). A new family is one :class:`Family`
subclass registered with :func:`register`.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import nn

from ..config import ModelSpec
from ..errors import ConfigError


class UnsupportedModelError(ConfigError):
    """The model family (or one of its layers) cannot be reparameterized yet."""


@dataclass(frozen=True)
class ModelDims:
    """The sizes that shape every op of a model whose blocks all run at one size (the ViT layout)."""

    img: int
    patch: int
    embed_dim: int
    heads: int
    mlp_hidden: int
    classes: int
    prefix_tokens: int

    @property
    def tokens(self) -> int:
        return (self.img // self.patch) ** 2 + self.prefix_tokens

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.heads

    @classmethod
    def of(cls, spec: ModelSpec) -> "ModelDims":
        """The sizes of the model a spec names (read off it built on the meta device: no memory, no weights)."""
        return _dims_of(spec)


class Family(ABC):
    """What the rest of the product needs to know of one timm model family."""

    name: str

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
    def with_depth(self, spec: ModelSpec, depth: int) -> ModelSpec:
        """The same model with ``depth`` blocks: what one block is timed inside."""

    @abstractmethod
    def frame(self, model: nn.Module) -> nn.Module:
        """The model without its blocks: everything a forward pass runs outside them (timed as one op)."""


_FAMILIES: list[Family] = []


def register(family: Family) -> Family:
    _FAMILIES.append(family)
    return family


@functools.lru_cache(maxsize=64)
def _meta_model_family(spec: ModelSpec) -> tuple[Family, ModelDims]:
    import torch

    from ..reparam import create_model

    with torch.device("meta"):
        model = create_model(spec)
    family = family_of(model)
    return family, family.dims(model)


def family_for(spec: ModelSpec) -> Family:
    """The family of the model a spec names."""
    return _meta_model_family(spec)[0]


def _dims_of(spec: ModelSpec) -> ModelDims:
    return _meta_model_family(spec)[1]


def family_of(model: nn.Module) -> Family:
    """The family of a model; an unsupported one is a one-line error naming the supported ones."""
    for family in _FAMILIES:
        if family.matches(model):
            return family
    raise UnsupportedModelError("model.name", f"{type(model).__name__} is not supported yet (supported: "
                                              f"{', '.join(f.name for f in _FAMILIES)})")


from . import vit  # noqa: E402  (the built-in families register themselves)

__all__ = ["Family", "ModelDims", "UnsupportedModelError", "family_for", "family_of", "register", "vit"]
