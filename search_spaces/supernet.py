"""The weight-sharing supernet: one model that holds every choice of a search space, so that an architecture is
scored with weights it inherits instead of a fine-tune of its own (one-shot NAS: OFA, AutoFormer, ShiftAddNAS).

What is shared, block by block (the reparameterizations already derive from the dense weights):

- every projection (``qkv`` or PVTv2's ``q`` and ``kv``, ``proj``) and MLP layer (``fc1``, ``fc2``) is one
  :class:`SharedLinear`: its one latent weight is the dense layer's weight, and the shift and int8 choices quantize
  it in the forward pass exactly as :class:`~search_spaces.ops.shift.ShiftLinear` (``Shift16Linear``) and
  :class:`~search_spaces.ops.int8.Int8Linear` do;
- the attention choices (:class:`ChoiceAttention`) are the registry's primitives built on the dense attention's own
  projections, adding only their own parameters (additive attention's depthwise conv);
- the MoE choice (:class:`ChoiceMlp`) has its router and noise gate of its own; its experts are views of the dense
  MLP's shared layers, each pinned to its kind (dense, shift, shift16 or int8).

:meth:`Supernet.activate` sets the active subnet; :meth:`Supernet.extract` writes an architecture out as a standalone
model of the types :func:`~search_spaces.reparam.build_model` makes, with the inherited weights: the same function as
the active supernet (tested).

Example:
    >>> sn = Supernet.from_dense(teacher, space)  # doctest: +SKIP
    >>> sn.activate(config); logits = sn(images)   # doctest: +SKIP
    >>> model = sn.extract(config)                 # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import registry
from .config import ArchConfig, BlockConfig, ConfigError
from .families import Family, family_of
from .ops.int8 import fake_quant_ste
from .ops.moe import MoEMlp
from .ops.shift import (DEFAULT_WEIGHT_BITS, block_float_ste, shift_range, straight_through_shift,
                        weight_activation_bits)
from .reparam import apply, create_model
from .space import SearchSpace

# The choices whose weights the supernet knows how to share (a plugin primitive of the linear, mlp or expert slot
# has weights of its own kind: it is searched in fine-tune mode).
SHARED_LINEAR = ("dense", "shift", "shift16", "int8")
SHARED_MLP = ("dense", "shift", "shift16", "int8", "moe")
SHARED_EXPERTS = ("dense", "shift", "shift16", "int8")


class SharedLinear(nn.Linear):
    """A linear layer whose one latent weight serves every linear choice the supernet shares: ``dense`` (the weight
    as it is), ``shift`` (quantized to signed powers of two with a straight-through gradient, as :class:`ShiftLinear`
    computes), ``shift16`` (those weights on block-floating-point activations, as :class:`Shift16Linear`) and ``int8``
    (weights and activations quantized to int8, as :class:`Int8Linear`).
    ``kind`` says which the layer computes now. Its state dict is an ``nn.Linear``'s."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, weight_bits: int = DEFAULT_WEIGHT_BITS,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.shift_min, self.shift_max = shift_range(weight_bits)
        self.kind = "dense"

    @classmethod
    def of(cls, linear: nn.Linear) -> "SharedLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device,
                    dtype=linear.weight.dtype)
        layer.load_state_dict(linear.state_dict())
        return layer

    def effective_weight(self, kind: str | None = None) -> torch.Tensor:
        """The weight of the choice ``kind`` (None: the layer's current one)."""
        kind = self.kind if kind is None else kind
        if kind == "dense":
            return self.weight
        if kind == "int8":
            return fake_quant_ste(self.weight)
        return straight_through_shift(self.weight, self.shift_min, self.shift_max)

    def forward(self, x: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        kind = self.kind if kind is None else kind
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if kind == "shift16":
            x = block_float_ste(x, weight_activation_bits(self.weight, self.shift_min, self.shift_max))
        elif kind == "int8":
            x = fake_quant_ste(x)
        return F.linear(x, self.effective_weight(kind).to(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.kind}"


class PinnedLinear(nn.Module):
    """A :class:`SharedLinear` always computed as one choice: an MoE expert's layer, whatever the MLP's choice."""

    def __init__(self, shared: SharedLinear, kind: str) -> None:
        super().__init__()
        self.shared, self.kind = shared, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(x, kind=self.kind)


def expert_view(mlp: nn.Module, kind: str) -> nn.Module:
    """The dense MLP as an expert of ``kind``: the same module (its forward, norms and, in PVTv2, depthwise conv), with
    ``fc1`` and ``fc2`` pinned to that choice of the shared layers."""
    view = copy.copy(mlp)  # a new module object over the same submodules and parameters
    view._parameters, view._buffers, view._modules = dict(mlp._parameters), dict(mlp._buffers), dict(mlp._modules)
    view.fc1 = PinnedLinear(mlp.fc1, kind)
    view.fc2 = PinnedLinear(mlp.fc2, kind)
    return view


class ChoiceAttention(nn.Module):
    """A block's attention choices over one set of projections: ``dense`` is the model's own attention (``msa``),
    ``options`` the others (built by the registry on the same projection layers); ``active`` is run."""

    def __init__(self, dense: nn.Module, options: dict[str, nn.Module]) -> None:
        super().__init__()
        self.dense = dense
        self.options = nn.ModuleDict(options)
        self.active = "msa"

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.active == "msa":
            return self.dense(x, *args, **kwargs)
        if args:  # a pyramid family passes the token grid, which the token mixers do not need
            kwargs["feat_size"] = args[0]
        return self.options[self.active](x, **kwargs)


class ChoiceMlp(nn.Module):
    """A block's MLP choices: ``dense`` is the model's MLP (its layers shared, in dense or shift mode), ``moe`` a
    mixture of experts whose experts are views of it; ``active`` is run."""

    def __init__(self, dense: nn.Module, moe: MoEMlp | None) -> None:
        super().__init__()
        self.dense, self.moe = dense, moe
        self.active = "dense"

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        if self.active == "moe":
            return self.moe(x, *args)
        return self.dense(x, *args)


class Supernet(nn.Module):
    """Every architecture of a :class:`SearchSpace` in one model, built on the dense model's weights.

    Args (of :meth:`from_dense`):
        dense: the dense model (the study's teacher); it is copied, never changed.
        space: the search space; its blocks' choices decide what each supernet block holds.

    Raises:
        ConfigError: a choice whose weights cannot be shared with the dense layers (a plugin's linear, MLP or expert
            primitive, or an attention primitive not built on the dense projections), naming the space key.
    """

    def __init__(self, model: nn.Module, space: SearchSpace, family: Family) -> None:
        super().__init__()
        self.model = model
        self.space = space
        self.family = family
        self.active: ArchConfig | None = None

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, dense: nn.Module, space: SearchSpace) -> "Supernet":
        check_shareable(space)
        model = copy.deepcopy(dense)
        family = family_of(model)
        blocks = family.blocks(model)
        if len(blocks) != space.depth:
            raise ConfigError("space", f"the space has {space.depth} blocks but the model has {len(blocks)}")
        for i, (block, choices) in enumerate(zip(blocks, space.blocks)):
            family.check_block(block, f"blocks[{i}]")
            attn = block.attn
            for key in ("qkv", "proj"):
                for name in family.projections(attn, key):
                    setattr(attn, name, SharedLinear.of(getattr(attn, name)))
            options = {}
            for name in choices.attention:
                primitive = registry.get("attention", name)
                if primitive.build is None:
                    continue
                choice = BlockConfig(attention=name, binarize=space.binarize if name == "additive" else None)
                options[name] = primitive.build(family.attention_source(attn, shared=True), choice)
                _check_built_on(options[name], attn, f"space.choices.attention: {name}")
            block.attn = ChoiceAttention(attn, options)
            mlp = block.mlp
            mlp.fc1, mlp.fc2 = SharedLinear.of(mlp.fc1), SharedLinear.of(mlp.fc2)
            moe = None
            if "moe" in choices.mlp:
                experts = [expert_view(mlp, kind) for kind in space.moe_experts]
                moe = family.adapt_mlp(MoEMlp(experts, list(space.moe_experts), mlp.fc1.in_features,
                                              top_k=max(space.moe_top_k)).to(mlp.fc1.weight.device))
            block.mlp = ChoiceMlp(mlp, moe)
        supernet = cls(model, space, family)
        supernet.activate(densest(space))
        return supernet

    # ---- the active subnet --------------------------------------------------------------------------------------
    def _parts(self) -> Iterator[tuple[nn.Module, ChoiceAttention, ChoiceMlp]]:
        for block in self.family.blocks(self.model):
            yield block, block.attn, block.mlp

    def activate(self, config: ArchConfig) -> "Supernet":
        """Make ``config`` the subnet that :meth:`forward` runs. Raises ConfigError for a config outside the space."""
        if config.model != self.space.model:
            raise ConfigError("model", f"the config is for {config.model.to_dict()}, the supernet's model is "
                                       f"{self.space.model.to_dict()}")
        self.space.params_of(config)  # in the space, or a ConfigError naming the parameter
        for (_, attn, mlp), choice in zip(self._parts(), config.blocks):
            attn.active = choice.attention
            for key in ("qkv", "proj"):
                for name in self.family.projections(attn.dense, key):
                    getattr(attn.dense, name).kind = getattr(choice, key)
            mlp.active = "moe" if choice.mlp == "moe" else "dense"
            mlp.dense.fc1.kind = mlp.dense.fc2.kind = "dense" if choice.mlp == "moe" else choice.mlp
            if choice.moe is not None:
                mlp.moe.top_k = choice.moe.top_k
        self.active = config
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def moe_blocks(self) -> dict[int, MoEMlp]:
        """The MoE of every block whose active MLP is one."""
        return {i: mlp.moe for i, (_, _, mlp) in enumerate(self._parts()) if mlp.active == "moe"}

    # ---- standalone subnets -------------------------------------------------------------------------------------
    def dense_state(self) -> dict[str, torch.Tensor]:
        """The shared weights as the dense model's state dict."""
        rename: dict[str, str] = {}
        names = {id(m): n for n, m in self.model.named_modules()}
        for block, attn, mlp in self._parts():
            prefix = names[id(block)]
            rename[f"{prefix}.attn.dense."] = f"{prefix}.attn."
            rename[f"{prefix}.mlp.dense."] = f"{prefix}.mlp."
        state = {}
        for key, value in self.model.state_dict().items():
            if ".attn." in key or ".mlp." in key:
                head = next((p for p in rename if key.startswith(p)), None)
                if head is None:
                    continue  # a choice's own parameters (an attention's conv, a router)
                key = rename[head] + key[len(head):]
            state[key] = value
        return state

    @torch.no_grad()
    def extract(self, config: ArchConfig) -> nn.Module:
        """``config`` as a standalone model (the types ``build_model`` makes) with the weights it inherits here."""
        self.space.params_of(config)
        model = create_model(self.space.model).to(next(self.parameters()).device)
        model.load_state_dict(self.dense_state())
        apply(model, config)
        for block, (_, attn, mlp), choice in zip(self.family.blocks(model), self._parts(), config.blocks):
            if choice.attention != "msa":
                _copy_own(block.attn, attn.options[choice.attention], f"attention {choice.attention}")
            if choice.mlp == "moe":
                _copy_own(block.mlp, mlp.moe, "moe")
                block.mlp.expert_latency.fill_(1.0)  # set per trial from the predictor (nas.search.objective)
        return model.eval()


def _copy_own(target: nn.Module, source: nn.Module, what: str) -> None:
    """Copy into ``target`` (a module ``build_model`` made) every tensor ``source`` (the supernet's module of the same
    choice) has under the same name: its own parameters, and shared ones that are the same values already."""
    theirs = source.state_dict()
    for key, tensor in target.state_dict().items():
        if key in theirs and theirs[key].shape == tensor.shape:
            tensor.copy_(theirs[key])


def _check_built_on(option: nn.Module, attn: nn.Module, where: str) -> None:
    shared = {id(p) for p in attn.parameters()}
    if not shared & {id(p) for p in option.parameters()}:
        raise ConfigError(where, "this attention primitive is not built on the dense attention's projections, so "
                                 "the supernet cannot share its weights: search it with evaluation.mode: finetune")


def check_shareable(space: SearchSpace, where: str = "evaluation.mode") -> None:
    """Refuse a space with a choice whose weights the supernet cannot share (one ConfigError at ``where``)."""
    for i, choices in enumerate(space.blocks):
        for key, allowed in (("qkv", SHARED_LINEAR), ("proj", SHARED_LINEAR), ("mlp", SHARED_MLP)):
            for option in choices.get(key):
                if option not in allowed:
                    raise ConfigError(where, f"a supernet shares one weight per layer across {key} choices "
                                             f"{', '.join(allowed)}; block {i} may take {key} {option!r}, whose "
                                             "weights are of their own kind: search this space in fine-tune mode")
    for kind in space.moe_experts:
        if kind not in SHARED_EXPERTS:
            raise ConfigError(where, f"a supernet builds MoE experts from the shared MLP ({', '.join(SHARED_EXPERTS)}"
                                     f"); expert {kind!r} (space.moe.experts) has weights of its own kind: search "
                                     "this space in fine-tune mode")


def densest(space: SearchSpace) -> ArchConfig:
    """The all-dense architecture, or as near to it as the space allows (per key: msa/dense if offered, else the
    first option; the smallest top-k)."""
    def pick(name: str, options):
        if name.endswith("moe_top_k"):
            return min(options)
        return next((o for o in options if o in ("msa", "dense")), options[0])
    return space._build(pick)


def random_config(space: SearchSpace, generator: torch.Generator) -> ArchConfig:
    """An architecture drawn uniformly per decision with a torch generator (what a training step samples)."""
    def pick(name: str, options):
        return options[int(torch.randint(len(options), (), generator=generator))]
    return space._build(pick)


__all__ = ["ChoiceAttention", "ChoiceMlp", "SharedLinear", "Supernet", "check_shareable", "densest",
           "expert_view", "random_config"]
