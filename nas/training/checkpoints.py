"""Weights on disk. Written as safetensors; read from safetensors or a torch file with ``weights_only=True``, so
loading a checkpoint never executes code from it.

An exported architecture and its fine-tuned weights rebuild the model with one call::

    from nas.training.checkpoints import load_model
    model = load_model("runs/best/arch.yaml", "runs/best/model.safetensors")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from search_spaces import build_model
from search_spaces.config import ArchConfig, ConfigError
from search_spaces.families import UnsupportedModelError, family_of
from search_spaces.ops.shift import ShiftLinear, upgrade_legacy_state


def save_weights(model: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model``'s state dict as safetensors, atomically (a crash leaves the old file or none)."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata=dict(metadata or {}))
    os.replace(tmp, path)
    return path


def read_weights(path: str | Path, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, or a torch file read with ``weights_only=True`` (a bare state dict or
    one under a ``state_dict``/``model`` key)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(where, f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ConfigError(where, f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") \
                from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds (UnpicklingError, RuntimeError, EOFError...)
        raise ConfigError(where, f"{path} is not a readable torch checkpoint with weights only (truncated, corrupt, "
                                 f"or it holds code objects): {type(e).__name__}: {str(e).splitlines()[0][:200]}") \
            from None
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(where, f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def load_weights(model: nn.Module, path: str | Path, where: str = "checkpoint") -> nn.Module:
    """Load ``path`` into ``model``; a checkpoint of another architecture gets an error naming the first
    differences, and ``model`` is left untouched."""
    return _load_state(model, read_weights(path, where), path, where)


def load_published(model: nn.Module, path: str | Path, where: str = "model.pretrained") -> nn.Module:
    """A model's published weights (e.g. timm's ImageNet ones, downloaded on another machine) from a file into
    ``model``, keeping ``model``'s own new classifier where the file's has another number of classes."""
    state = read_weights(path, where)
    own = model.state_dict()
    heads = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    for head in (heads,) if isinstance(heads, str) else heads:
        for key in [k for k in state if k.startswith(f"{head}.")]:
            if key in own and state[key].shape != own[key].shape:
                state[key] = own[key]  # another class count: the study's head starts new
    return _load_state(model, state, path, where)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, where: str) -> nn.Module:
    for name, module in model.named_modules():
        if isinstance(module, ShiftLinear):  # a file from before shift layers kept a latent weight
            upgrade_legacy_state(state, f"{name}." if name else "")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", shapes)):
            if items:
                parts.append(f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''} ({len(items)})")

        try:
            hint = family_of(model).mismatch_hint(model, state)
        except UnsupportedModelError:
            hint = None
        if hint:
            parts.insert(0, hint)
        raise ConfigError(where, f"{path} does not match the model; " + "; ".join(parts))
    model.load_state_dict(state)
    return model


def load_model(config: str | Path | ArchConfig, weights: str | Path) -> nn.Module:
    """The model an exported ArchConfig describes, with its fine-tuned weights (from ``nas finetune``)."""
    config = config if isinstance(config, ArchConfig) else ArchConfig.load(config)
    return load_weights(build_model(config), weights, "weights").eval()
