"""SearchSpace: which choices each block may take. One definition serves Optuna, Ray Tune and random sampling.

It is read from the ``model:`` and ``space:`` sections of a study file::

    model:
      name: deit_tiny_patch16_224
      kwargs: {img_size: 32, patch_size: 4, depth: 4, embed_dim: 64, num_heads: 2, num_classes: 10}
    space:
      tied: false                  # true: one decision shared by every block
      choices:                     # what every block may take (each key optional; default: every option)
        attention: [msa, linear, additive]
        qkv: [dense, shift]
        proj: [dense, shift]
        mlp: [dense, shift, moe]
      moe:                         # used by blocks whose mlp is moe
        top_k: [1]                 # a choice list
        experts: [dense, shift]    # fixed
      additive:                    # used by blocks whose attention is additive
        binarize: tensor           # fixed: tensor (the paper's: mean of the whole Q/K) or token (per-token mean)
      stages:                      # per-stage overrides of `choices`, by stage index (a PVTv2's; a ViT has stage 0)
        0: {attention: [msa, linear]}
      blocks:                      # per-block overrides (of `stages`, then `choices`), by block index over the stages
        0: {attention: [msa]}

:meth:`SearchSpace.suggest` is define-by-run, so the same function is Optuna's objective space and Ray Tune's
``OptunaSearch(space=...)`` space. A key with a single choice is fixed, not suggested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from . import registry
from .config import ArchConfig, BlockConfig, ConfigError, ModelSpec, MoEConfig
from .families import ModelDims, family_for
from .ops.attention import BINARIZE_KINDS
from .ops.moe import EXPERT_KINDS
from .reparam import create_model, transformer_blocks
from .schema import check_keys

# The keys of a block's choices and the registry slot whose primitives each offers.
BLOCK_SLOTS = registry.BLOCK_KEYS


def block_options() -> dict[str, tuple[str, ...]]:
    """Every option of each key of a block: the registered primitives of its slot."""
    return {key: registry.names(slot) for key, slot in BLOCK_SLOTS.items()}


def _options(key: str):
    return field(default_factory=lambda: registry.names(BLOCK_SLOTS[key]))


class _Suggester(Protocol):
    """What :meth:`SearchSpace.suggest` needs of a trial: ``optuna.Trial`` satisfies it."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class BlockChoices:
    """The options one block may take, per key."""

    attention: tuple[str, ...] = _options("attention")
    qkv: tuple[str, ...] = _options("qkv")
    proj: tuple[str, ...] = _options("proj")
    mlp: tuple[str, ...] = _options("mlp")

    def get(self, key: str) -> tuple[str, ...]:
        return getattr(self, key)

    @classmethod
    def of_family(cls, family: str | None) -> "BlockChoices":
        """Every registered option a block of ``family`` can take (None: every option)."""
        if family is None:
            return cls()
        return cls(**{key: tuple(name for name in registry.names(slot) if registry.get(slot, name).takes(family))
                      for key, slot in BLOCK_SLOTS.items()})

    @classmethod
    def from_dict(cls, data: Any, where: str, base: "BlockChoices | None" = None,
                  family: str | None = None) -> "BlockChoices":
        """Choices from a study's mapping, the keys it omits taken from ``base``; an option that a block of the
        model's ``family`` cannot take is refused where it is named."""
        data = check_keys(data or {}, where, (), tuple(BLOCK_SLOTS))
        values = {key: (base or cls.of_family(family)).get(key) for key in BLOCK_SLOTS}
        for key, raw in data.items():
            options = [raw] if isinstance(raw, str) else raw
            if not isinstance(options, list | tuple) or not options:
                raise ConfigError(f"{where}.{key}", f"expected a non-empty list of options, got {raw!r}")
            for j, option in enumerate(options):
                known = registry.names(BLOCK_SLOTS[key])
                if option not in known:
                    raise ConfigError(f"{where}.{key}[{j}]",
                                      f"unknown {key} option {option!r} (choose from {', '.join(known)})")
                why = registry.refusal(BLOCK_SLOTS[key], option, family) if family is not None else None
                if why is not None:
                    raise ConfigError(f"{where}.{key}[{j}]", f"{why}: this model is a {family}")
            if len(set(options)) != len(options):
                raise ConfigError(f"{where}.{key}", f"options repeat: {list(options)}")
            values[key] = tuple(options)
        return cls(**values)


def model_depth(model: ModelSpec) -> int:
    """Number of transformer blocks of the model a spec names (built on the meta device: no memory, no weights)."""
    depth = model.kwargs.get("depth")
    if depth is not None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError("model.kwargs.depth", f"must be a positive integer, got {depth!r}")
        return depth

    with torch.device("meta"):
        return len(transformer_blocks(create_model(model)))


def _family_if_restricted(model: ModelSpec) -> str | None:
    """The model's family key when some registered primitive is declared for some families only (None otherwise:
    every option fits every family, and the model need not be built to know it)."""
    if all(p.families is None for p in registry.primitives()):
        return None
    return family_for(model).key


@dataclass(frozen=True)
class SearchSpace:
    """The choices of every block of one base model.

    Example:
        >>> import numpy as np
        >>> space = SearchSpace(ModelSpec("deit_tiny_patch16_224", {"depth": 2}), (BlockChoices(),) * 2)
        >>> space.sample(np.random.default_rng(0)).depth
        2
    """

    model: ModelSpec
    blocks: tuple[BlockChoices, ...]
    moe_top_k: tuple[int, ...] = (1,)
    moe_experts: tuple[str, ...] = EXPERT_KINDS
    tied: bool = False
    binarize: str = BINARIZE_KINDS[0]

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ConfigError("space", "the model has no blocks to search")
        if self.tied and len(set(self.blocks)) > 1:
            raise ConfigError("space.blocks", "per-block overrides cannot be combined with tied: true")
        for k in self.moe_top_k:
            MoEConfig(k, self.moe_experts).validate("space.moe")

    @property
    def depth(self) -> int:
        return len(self.blocks)

    # ---- construction from a study file -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, space: Any, model: ModelSpec, depth: int | None = None) -> "SearchSpace":
        """Build from the ``space:`` mapping of a study (``depth`` defaults to the model's)."""
        space = check_keys(space if space is not None else {}, "space", (),
                            ("tied", "choices", "moe", "additive", "stages", "blocks"))
        depth = model_depth(model) if depth is None else depth
        tied = space.get("tied", False)
        if not isinstance(tied, bool):
            raise ConfigError("space.tied", f"expected true or false, got {tied!r}")
        family = _family_if_restricted(model)
        base = BlockChoices.from_dict(space.get("choices"), "space.choices", family=family)
        blocks = [base] * depth
        stages = space.get("stages") or {}
        if not isinstance(stages, Mapping):
            raise ConfigError("space.stages", f"expected a mapping of stage index to choices, got {stages!r}")
        if stages:
            of_block = [b.stage for b in ModelDims.of(model).blocks]
            count = max(of_block) + 1
            for index, choices in stages.items():
                if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
                    raise ConfigError("space.stages", f"stage index {index!r} is not in 0..{count - 1} (the model "
                                                      f"has {count} stage{'s' if count > 1 else ''})")
                own = BlockChoices.from_dict(choices, f"space.stages.{index}", base, family)
                blocks = [own if stage == index else b for b, stage in zip(blocks, of_block)]
        overrides = space.get("blocks") or {}
        if not isinstance(overrides, Mapping):
            raise ConfigError("space.blocks", f"expected a mapping of block index to choices, got {overrides!r}")
        for index, choices in overrides.items():
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < depth:
                raise ConfigError("space.blocks", f"block index {index!r} is not in 0..{depth - 1}")
            blocks[index] = BlockChoices.from_dict(choices, f"space.blocks.{index}", blocks[index], family)
        moe = check_keys(space.get("moe") or {}, "space.moe", (), ("top_k", "experts"))
        top_k = moe.get("top_k", [1])
        top_k = [top_k] if isinstance(top_k, int) else top_k
        if not isinstance(top_k, list | tuple) or not top_k:
            raise ConfigError("space.moe.top_k", f"expected a non-empty list of integers, got {top_k!r}")
        experts = moe.get("experts", list(EXPERT_KINDS))
        if not isinstance(experts, list | tuple):
            raise ConfigError("space.moe.experts", f"expected a list of expert kinds, got {experts!r}")
        for j, kind in enumerate(experts if family is not None else ()):
            why = registry.refusal("expert", kind, family) if kind in registry.names("expert") else None
            if why is not None:
                raise ConfigError(f"space.moe.experts[{j}]", f"{why}: this model is a {family}")
        additive = check_keys(space.get("additive") or {}, "space.additive", (), ("binarize",))
        binarize = additive.get("binarize", BINARIZE_KINDS[0])
        if binarize not in BINARIZE_KINDS:
            raise ConfigError("space.additive.binarize", f"unknown binarization {binarize!r} (choose from "
                                                         f"{', '.join(BINARIZE_KINDS)})")
        return cls(model, tuple(blocks), tuple(top_k), tuple(experts), tied, binarize)

    # ---- drawing architectures --------------------------------------------------------------------------------
    def _decide(self, pick, prefix: str, choices: BlockChoices) -> BlockConfig:
        values = {key: pick(f"{prefix}{key}", choices.get(key)) for key in BLOCK_SLOTS}
        moe = None
        if registry.get("mlp", values["mlp"]).routed:
            moe = MoEConfig(pick(f"{prefix}moe_top_k", self.moe_top_k), self.moe_experts)
        binarize = self.binarize if values["attention"] == "additive" else None
        return BlockConfig(values["attention"], values["qkv"], values["proj"], values["mlp"], moe, binarize)

    def _build(self, pick) -> ArchConfig:
        def fixed_or(pick_many):
            return lambda name, options: options[0] if len(options) == 1 else pick_many(name, options)

        choose = fixed_or(pick)
        if self.tied:
            block = self._decide(choose, "", self.blocks[0])
            return ArchConfig(self.model, (block,) * self.depth)
        return ArchConfig(self.model, tuple(self._decide(choose, f"b{i}.", c) for i, c in enumerate(self.blocks)))

    def suggest(self, trial: _Suggester) -> ArchConfig:
        """Draw an architecture through an Optuna trial (define-by-run; parameters named ``b<i>.<key>``)."""
        return self._build(lambda name, options: trial.suggest_categorical(name, list(options)))

    def sample(self, rng: np.random.Generator) -> ArchConfig:
        """Draw an architecture uniformly per decision."""
        return self._build(lambda name, options: options[int(rng.integers(len(options)))])

    def from_params(self, params: Mapping[str, Any]) -> ArchConfig:
        """The architecture that :meth:`suggest` produced with these parameters (e.g. a Ray Tune trial's config)."""

        def look_up(name, options):
            if name not in params:
                raise ConfigError(name, f"missing from the parameters {sorted(params)}")
            if params[name] not in options:
                raise ConfigError(name, f"{params[name]!r} is not in this space's options {list(options)}")
            return params[name]

        return self._build(look_up)

    def params_of(self, config: ArchConfig) -> dict[str, Any]:
        """The Optuna parameters that :meth:`suggest` would set to produce ``config`` (for enqueueing a known one)."""
        params: dict[str, Any] = {}

        def record(name, options):
            block = config.blocks[0] if self.tied else config.blocks[int(name[1 : name.index(".")])]
            key = name.rsplit(".", 1)[-1]
            value = block.moe.top_k if key == "moe_top_k" else getattr(block, key)
            if value not in options:
                raise ConfigError(name, f"{value!r} is not in this space's options {list(options)}")
            params[name] = value
            return value

        self._build(record)
        return params

    def size(self) -> int:
        """Number of distinct architectures in the space."""

        def per_block(c: BlockChoices) -> int:
            mlp = sum(len(self.moe_top_k) if registry.get("mlp", m).routed else 1 for m in c.mlp)
            return len(c.attention) * len(c.qkv) * len(c.proj) * mlp

        if self.tied:
            return per_block(self.blocks[0])
        return math.prod(per_block(c) for c in self.blocks)
