"""ArchConfig: one architecture, as a frozen, validated value that round-trips through dicts, JSON and YAML.

The same type crosses every boundary of the system: the search space produces it, ``reparam.apply`` consumes it, the
latency predictor prices it, Optuna stores it as JSON on the trial, ``nas export`` writes it as YAML.

File format (YAML or JSON)::

    model:
      name: deit_tiny_patch16_224          # any timm VisionTransformer name
      kwargs: {img_size: 32, patch_size: 4, depth: 2, embed_dim: 64, num_heads: 2, num_classes: 10}
    blocks:                                # one entry per transformer block, in order
      - {attention: additive, binarize: tensor, qkv: shift, proj: dense, mlp: moe, moe: {top_k: 1, experts: [dense, shift]}}
      - {attention: msa, qkv: dense, proj: dense, mlp: shift}
    provenance: {...}                      # optional, written by `nas export` (study, trial, metrics); not part
                                           #   of the architecture
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from . import registry
from .errors import ConfigError
from .ops.attention import BINARIZE_KINDS
from .ops.moe import EXPERT_KINDS
from .schema import check_choice, check_keys


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class ModelSpec:
    """The base model: a timm model name and the keyword arguments it is created with."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("model.name", f"expected a timm model name, got {self.name!r}")
        if not isinstance(self.kwargs, Mapping):
            raise ConfigError("model.kwargs", f"expected a mapping, got {type(self.kwargs).__name__}")
        for key in self.kwargs:
            if not isinstance(key, str):
                raise ConfigError("model.kwargs", f"keys must be strings, got {key!r}")
        object.__setattr__(self, "kwargs", _freeze(self.kwargs))

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": _thaw(self.kwargs)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "model") -> "ModelSpec":
        data = check_keys(data, where, ("name",), ("kwargs",))
        try:
            return cls(data["name"], data.get("kwargs") or {})
        except ConfigError as e:
            raise ConfigError(e.where.replace("model", where, 1), e.detail) from None


@dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-experts settings of one MLP: experts per token and the kind of each expert."""

    top_k: int = 1
    experts: tuple[str, ...] = EXPERT_KINDS

    def __post_init__(self) -> None:
        object.__setattr__(self, "experts", tuple(self.experts))

    def validate(self, where: str) -> None:
        if len(self.experts) < 2:
            raise ConfigError(f"{where}.experts", f"need at least two experts, got {list(self.experts)}")
        for i, kind in enumerate(self.experts):
            check_choice(kind, f"{where}.experts[{i}]", registry.names("expert"), "expert kind")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 1 <= self.top_k <= len(self.experts):
            raise ConfigError(
                f"{where}.top_k",
                f"must be an integer from 1 to the number of experts ({len(self.experts)}), got {self.top_k!r}",
            )

    def to_dict(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "experts": list(self.experts)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "MoEConfig":
        data = check_keys(data, where, (), ("top_k", "experts"))
        experts = data.get("experts", EXPERT_KINDS)
        if not isinstance(experts, list | tuple):
            raise ConfigError(f"{where}.experts", f"expected a list of expert kinds, got {experts!r}")
        moe = cls(top_k=data.get("top_k", 1), experts=tuple(experts))
        moe.validate(where)
        return moe


@dataclass(frozen=True)
class BlockConfig:
    """The choices of one transformer block. ``binarize`` is the additive attention's binarization (``tensor``, the
    paper's, or ``token``); it is set for additive blocks only (``tensor`` unless given)."""

    attention: str = "msa"
    qkv: str = "dense"
    proj: str = "dense"
    mlp: str = "dense"
    moe: MoEConfig | None = None
    binarize: str | None = None

    def __post_init__(self) -> None:
        if self.attention == "additive" and self.binarize is None:
            object.__setattr__(self, "binarize", BINARIZE_KINDS[0])

    def validate(self, where: str) -> None:
        check_choice(self.attention, f"{where}.attention", registry.names("attention"), "attention")
        if self.attention == "additive":
            check_choice(self.binarize, f"{where}.binarize", BINARIZE_KINDS, "binarization")
        elif self.binarize is not None:
            raise ConfigError(f"{where}.binarize", f"binarize is an option of additive attention; this block's "
                                                   f"attention is {self.attention!r}")
        check_choice(self.qkv, f"{where}.qkv", registry.names("linear"), "projection")
        check_choice(self.proj, f"{where}.proj", registry.names("linear"), "projection")
        check_choice(self.mlp, f"{where}.mlp", registry.names("mlp"), "mlp")
        if registry.get("mlp", self.mlp).routed:
            if self.moe is None:
                raise ConfigError(f"{where}.moe", "mlp is 'moe' but the block has no moe settings")
            self.moe.validate(f"{where}.moe")
        elif self.moe is not None:
            raise ConfigError(f"{where}.moe", f"moe options given but mlp is {self.mlp!r}, not 'moe'")

    def primitives(self) -> list[registry.Primitive]:
        """Every primitive the block's choices use: attention, qkv, proj, MLP and, for a routed MLP, its experts."""
        used = [registry.get("attention", self.attention), registry.get("linear", self.qkv),
                registry.get("linear", self.proj), registry.get("mlp", self.mlp)]
        if self.moe is not None:
            used += [registry.get("expert", kind) for kind in self.moe.experts]
        return used

    @property
    def on_kernels(self) -> bool:
        """Whether the block runs part of its work on the TVM kernels."""
        return any(p.on_kernels for p in self.primitives())

    def check_family(self, family: str, where: str) -> None:
        """Refuse (:class:`ConfigError` at ``where.<key>``) a choice that the model's family cannot take."""
        for key, slot in registry.BLOCK_KEYS.items():
            why = registry.refusal(slot, getattr(self, key), family)
            if why is not None:
                raise ConfigError(f"{where}.{key}", why)
        for i, kind in enumerate(self.moe.experts if self.moe is not None else ()):
            why = registry.refusal("expert", kind, family)
            if why is not None:
                raise ConfigError(f"{where}.moe.experts[{i}]", why)

    @property
    def is_dense(self) -> bool:
        return (self.attention, self.qkv, self.proj, self.mlp) == ("msa", "dense", "dense", "dense")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attention": self.attention, "qkv": self.qkv, "proj": self.proj, "mlp": self.mlp}
        if self.binarize is not None:
            out["binarize"] = self.binarize
        if self.moe is not None:
            out["moe"] = self.moe.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "BlockConfig":
        data = check_keys(data, where, ("attention", "qkv", "proj", "mlp"), ("moe", "binarize"))
        moe = data.get("moe")
        if moe is None and data["mlp"] in registry.names("mlp") and registry.get("mlp", data["mlp"]).routed:
            moe_config: MoEConfig | None = MoEConfig()
        else:
            moe_config = None if moe is None else MoEConfig.from_dict(moe, f"{where}.moe")
        block = cls(data["attention"], data["qkv"], data["proj"], data["mlp"], moe_config, data.get("binarize"))
        block.validate(where)
        return block

    def describe(self) -> str:
        """A short human-readable form, e.g. ``additive qkv=shift proj=dense mlp=moe(top1: dense,shift)``."""
        mlp = self.mlp
        if self.moe is not None:
            mlp = f"moe(top{self.moe.top_k}: {','.join(self.moe.experts)})"
        attention = self.attention
        if self.binarize not in (None, BINARIZE_KINDS[0]):
            attention = f"{attention}({self.binarize})"
        return f"{attention} qkv={self.qkv} proj={self.proj} mlp={mlp}"


@dataclass(frozen=True)
class ArchConfig:
    """One architecture: the base model and the choices of each of its blocks.

    Example:
        >>> cfg = ArchConfig.dense(ModelSpec("deit_tiny_patch16_224", {"depth": 2}), depth=2)
        >>> ArchConfig.from_json(cfg.to_json()) == cfg
        True
    """

    model: ModelSpec
    blocks: tuple[BlockConfig, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        self.validate()

    def validate(self) -> None:
        if not self.blocks:
            raise ConfigError("blocks", "at least one block is required")
        for i, block in enumerate(self.blocks):
            if not isinstance(block, BlockConfig):
                raise ConfigError(f"blocks[{i}]", f"expected a BlockConfig, got {type(block).__name__}")
            block.validate(f"blocks[{i}]")
        depth = self.model.kwargs.get("depth")
        if depth is not None and depth != len(self.blocks):
            raise ConfigError(
                "blocks", f"{len(self.blocks)} blocks given but model.kwargs.depth is {depth}: give one per block"
            )

    @classmethod
    def dense(cls, model: ModelSpec, depth: int) -> "ArchConfig":
        """The all-msa, all-dense configuration (the unmodified model)."""
        return cls(model, tuple(BlockConfig() for _ in range(depth)))

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def id(self) -> str:
        """A stable short id: the same architecture always gets the same id, on any machine."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "blocks": [b.to_dict() for b in self.blocks]}

    @classmethod
    def from_dict(cls, data: Any) -> "ArchConfig":
        data = check_keys(data, "", ("model", "blocks"), ("provenance",))  # provenance: written by `nas export`
        model = ModelSpec.from_dict(data["model"])
        blocks = data["blocks"]
        if not isinstance(blocks, list | tuple):
            raise ConfigError("blocks", f"expected a list of blocks, got {type(blocks).__name__}")
        return cls(model, tuple(BlockConfig.from_dict(b, f"blocks[{i}]") for i, b in enumerate(blocks)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ArchConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError("", f"not valid JSON: {e}") from None
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json() + "\n"
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ArchConfig":
        """Read a YAML or JSON config file; errors name the file and the key at fault."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError("", f"cannot read config file: {e.strerror}", str(path)) from None
        try:
            data = yaml.safe_load(text)  # JSON is YAML, so one safe loader reads both
        except yaml.YAMLError as e:
            raise ConfigError("", f"not valid YAML/JSON: {e}", str(path)) from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise e.in_file(path) from None

    def describe(self) -> list[str]:
        return [f"block {i}: {b.describe()}" for i, b in enumerate(self.blocks)]

    def compact(self) -> str:
        """One line, runs of equal blocks as attention/qkv/proj/mlp: ``0-5 additive/shift/shift/moe(dense+shift),
        6-11 msa/dense/dense/dense`` (an MoE's top-k when it is not 1, a binarization when not the default)."""
        def block(b: BlockConfig) -> str:
            mlp = b.mlp
            if b.moe is not None:
                mlp = f"moe({'+'.join(b.moe.experts)}{'' if b.moe.top_k == 1 else f', top{b.moe.top_k}'})"
            attention = b.attention if b.binarize in (None, BINARIZE_KINDS[0]) else f"{b.attention}({b.binarize})"
            return f"{attention}/{b.qkv}/{b.proj}/{mlp}"

        out, start = [], 0
        for i in range(1, len(self.blocks) + 1):
            if i == len(self.blocks) or self.blocks[i] != self.blocks[start]:
                span = f"{start}-{i - 1}" if i - 1 > start else f"{start}"
                out.append(f"{span} {block(self.blocks[start])}")
                start = i
        return ", ".join(out)
