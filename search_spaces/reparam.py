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

import timm
from torch import nn

from . import registry
from .config import ArchConfig, BlockConfig, ConfigError, ModelSpec, _thaw
from .errors import ResourceError
from .families import Family, UnsupportedModelError, family_named, family_of  # noqa: F401 - re-exported
from .ops.moe import MoEMlp
from .ops.shift import ShiftLinear


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


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The searchable blocks of a supported model, in order (its family says where they are)."""
    return family_of(model).blocks(model)


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
        registry.check_family(choice, family.key, f"blocks[{i}]")
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
