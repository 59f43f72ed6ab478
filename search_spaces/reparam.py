"""In-place reparameterization of timm Vision Transformers by an :class:`ArchConfig`.

``apply(model, config)`` swaps each block's attention, projections and MLP for the primitives the config names, each
built from the dense module by its declaration in :mod:`search_spaces.registry` (shift layers from
``ShiftLinear.from_dense``, MoE experts from copies of the dense MLP). Parts the config leaves ``msa``/``dense`` are
not touched, so they stay bit-identical.

Where a model's blocks are, what their layers must be and how its attention and MLP map onto the primitives is its
family's (:mod:`search_spaces.families`: ``vit`` and ``pvt_v2``). Other families raise :class:`UnsupportedModelError`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from . import registry
from .config import ArchConfig, BlockConfig, ConfigError
from .families import Family, UnsupportedModelError, create_model, family_named, family_of  # noqa: F401 - re-exported
from .ops.moe import MoEMlp
from .ops.shift import ShiftLinear


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The searchable blocks of a supported model, in order (its family says where they are)."""
    return family_of(model).blocks(model)


def router_counts(model: nn.Module) -> dict[int, torch.Tensor]:
    """Per MoE block of a model that has run a forward pass: the tokens each image sent each expert in that pass
    (``[images, experts]``, the router's statistics)."""
    return {i: block.mlp.stats.per_image for i, block in enumerate(transformer_blocks(model))
            if isinstance(block.mlp, MoEMlp) and block.mlp.stats is not None}


def apply_block(family: Family, block: nn.Module, choice: BlockConfig) -> None:
    """Reparameterize one block of a model of ``family`` in place by ``choice``."""
    attn = block.attn
    attention = registry.get("attention", choice.attention)
    if attention.build is not None:  # a token mixer of its own: built from the projections as the family lays them out
        attn = family.attention_source(attn)
    for key in ("qkv", "proj"):  # first: the attention built next keeps the converted projections
        linear = registry.get("linear", getattr(choice, key))
        if linear.build is not None:
            for name in family.projections(attn, key):
                setattr(attn, name, linear.build(getattr(attn, name), choice))
    if attention.build is not None:
        block.attn = attention.build(attn, choice)
    mlp = registry.get("mlp", choice.mlp)
    if mlp.build is not None:
        block.mlp = family.adapt_mlp(mlp.build(block.mlp, choice))


def apply(model: nn.Module, config: ArchConfig) -> nn.Module:
    """Reparameterize ``model`` in place by ``config`` and return it.

    Raises:
        ConfigError: the config's block count differs from the model's, or a block takes a primitive declared for
            other families.
        UnsupportedModelError: the model family, or a block's layers, cannot be reparameterized.
    """
    family = family_of(model)
    blocks = family.blocks(model)
    if len(blocks) != config.depth:
        raise ConfigError("blocks", f"the config has {config.depth} blocks but the model has {len(blocks)}")
    # Check every block first so a failure leaves the model untouched.
    for i, (block, choice) in enumerate(zip(blocks, config.blocks)):
        choice.check_family(family.key, f"blocks[{i}]")
        if not choice.is_dense:
            family.check_block(block, f"blocks[{i}]")
    for block, choice in zip(blocks, config.blocks):
        apply_block(family, block, choice)
    return model


def build_model(config: ArchConfig, teacher: nn.Module | None = None) -> nn.Module:
    """The model ``config`` describes: a copy of the dense ``teacher`` (or a freshly created timm model) with the
    config applied. The teacher itself is never modified."""
    model = copy.deepcopy(teacher) if teacher is not None else create_model(config.model)
    return apply(model, config)


@dataclass(frozen=True)
class WeightCounts:
    total: int  # every parameter
    dense_linear: int  # weights of linear layers that multiply (MoE routers excluded)
    shift_linear: int  # weights of shift layers: no multiplier needed

    @property
    def shift_share(self) -> float:
        return self.shift_linear / max(1, self.shift_linear + self.dense_linear)


def weight_counts(model: nn.Module) -> WeightCounts:
    """How many weights a model has, and how many of its linear weights are shifts."""
    routers = {id(m) for moe in model.modules() if isinstance(moe, MoEMlp) for m in (moe.router, moe.noise)}
    total = sum(p.numel() for p in model.parameters())
    dense = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in routers)
    shift = sum(m.weight.numel() for m in model.modules() if isinstance(m, ShiftLinear))
    return WeightCounts(total, dense, shift)
