"""The supernet's file: ``<study folder>/<name>-supernet.safetensors`` with the optimizer's moments, the step reached,
what the weights were trained for (model, space, data, teacher, recipe: :func:`fingerprint`) and a checksum; saving
it, reading it back (a file trained for anything else, truncated or edited is refused with what differs) and loading
the supernet a trial inherits from."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from search_spaces.errors import StateError
from search_spaces.supernet import Supernet

from ..study import Study

FORMAT = "1"


class SupernetRefused(StateError):
    """A supernet file that cannot be used for this study: trained for another one, unfinished, truncated, edited."""


# ---- what a supernet file was trained for ---------------------------------------------------------------------------
def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint(study: Study, teacher: nn.Module) -> dict[str, str]:
    """What the supernet's weights depend on; a file trained for other values is refused (with which differ)."""
    space = study.space
    return {
        "model": json.dumps(study.model.to_dict(), sort_keys=True),
        "space": json.dumps({"blocks": [asdict(b) for b in space.blocks], "moe_top_k": space.moe_top_k,
                             "moe_experts": space.moe_experts, "tied": space.tied, "binarize": space.binarize},
                            sort_keys=True),
        "data": json.dumps(asdict(study.data), sort_keys=True),
        "teacher": _digest(teacher.state_dict())[:16],
        "recipe": json.dumps({**study.train.recipe(), **study.evaluation.supernet_recipe()}, sort_keys=True),
    }


def _state(supernet: Supernet, optimizer: torch.optim.Optimizer | None = None) -> dict[str, torch.Tensor]:
    """The supernet's tensors, each shared parameter once (named_parameters drops repeats), and AdamW's moments."""
    state = {f"param.{k}": v.detach() for k, v in supernet.named_parameters()}
    state.update({f"buffer.{k}": v.detach() for k, v in supernet.named_buffers()})
    if optimizer is not None:
        for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"]):
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    state[f"adam.{i}.{key}"] = value.detach()
    return {k: v.contiguous().cpu() for k, v in state.items()}


def save_checkpoint(path: Path, supernet: Supernet, optimizer: torch.optim.Optimizer | None, step: int, steps: int,
                    fp: Mapping[str, str]) -> Path:
    """Write atomically (a crash leaves the previous checkpoint): the weights, the optimizer moments, the step."""

    tensors = _state(supernet, optimizer)
    meta = {**fp, "format": FORMAT, "step": str(step), "steps": str(steps), "sha256": _digest(tensors)}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: Path, fp: Mapping[str, str]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a supernet file made for ``fp``. Raises :class:`SupernetRefused` (one line: what
    differs) for a file trained for another model, space, data, teacher or recipe, a truncated or edited one."""

    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SupernetRefused("evaluation", f"{path} is not a readable supernet file (truncated or corrupt): "
                                            f"{str(e).splitlines()[0][:200]}") from None
    if meta.get("format") != FORMAT:
        raise SupernetRefused("evaluation", f"{path} is not a supernet file of this version (format "
                                            f"{meta.get('format')!r})")
    differ = [key for key in fp if meta.get(key) != fp[key]]
    if differ:
        raise SupernetRefused("evaluation", f"{path} was trained for another {', '.join(differ)} than this study's")
    if _digest(tensors) != meta.get("sha256"):
        raise SupernetRefused("evaluation", f"{path} was edited or corrupted after it was written (its checksum "
                                            "differs)")
    return meta, tensors


def load_into(supernet: Supernet, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    own = _state(supernet)
    wrong = [k for k in own if k not in tensors or tensors[k].shape != own[k].shape]
    if wrong:
        raise SupernetRefused("evaluation", f"{path} does not fit this study's supernet ({wrong[0]} and "
                                            f"{len(wrong) - 1} more)")
    with torch.no_grad():
        for key, value in supernet.named_parameters():
            value.copy_(tensors[f"param.{key}"])
        for key, value in supernet.named_buffers():
            value.copy_(tensors[f"buffer.{key}"])


def load_supernet(study: Study, teacher: nn.Module) -> Supernet:
    """The study's trained supernet (CPU). Raises :class:`StateError` when there is none or it is unfinished, and
    :class:`SupernetRefused` when the file was trained for something else or damaged."""
    path = study.supernet_path
    if not path.is_file():
        raise StateError("evaluation.mode", f"supernet mode, but there is no supernet at {path}: run `nas supernet "
                                            f"{study.path}`", str(study.path))
    meta, tensors = read_checkpoint(path, fingerprint(study, teacher))
    if int(meta["step"]) < int(meta["steps"]):
        raise StateError("evaluation.mode", f"the supernet at {path} stopped at step {meta['step']} of "
                                            f"{meta['steps']}: run `nas supernet {study.path}` to finish it",
                         str(study.path))
    supernet = Supernet.from_dense(teacher, study.space)
    load_into(supernet, tensors, path)
    return supernet.eval()


def supernet_state(supernet: Supernet) -> dict[str, torch.Tensor]:
    """Its weights, as :func:`supernet_from_state` takes them (what a Ray trial gets through the object store)."""
    return _state(supernet)


def supernet_from_state(study: Study, teacher: nn.Module, state: Mapping[str, torch.Tensor]) -> Supernet:
    supernet = Supernet.from_dense(teacher, study.space)
    load_into(supernet, state, study.supernet_path)
    return supernet.eval()


def is_trained(study: Study, teacher: nn.Module) -> bool:
    try:
        meta, _ = read_checkpoint(study.supernet_path, fingerprint(study, teacher))
    except SupernetRefused:
        return False
    return int(meta["step"]) >= int(meta["steps"])
