"""The teacher: the dense model a search starts from and distills from.

It is the study's ``model.checkpoint`` when given; otherwise ``nas pretrain`` trains it on the study's data and writes
``<study folder>/<name>-teacher.safetensors``, with the model and data it was trained for in the file's metadata so a
second run reuses it and a changed study retrains it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import Dataset

from search_spaces.errors import ConfigError, StateError
from search_spaces.reparam import create_model

from ..device import resolve
from ..disk import ensure_writable, lock_beside
from ..study import Study
from .checkpoints import load_published, load_weights, save_weights
from .trainer import LossWeights, Trainer, evaluate


@dataclass(frozen=True)
class PretrainResult:
    path: str
    epochs: int
    search_accuracy: float
    seconds: float
    cached: bool


def _fingerprint(study: Study) -> dict[str, str]:
    """What the pretrained weights depend on; a file with other values is stale."""
    return {"model": json.dumps(study.model.to_dict(), sort_keys=True),
            **({"pretrained": _published_source(study)} if study.pretrained else {}),  # (older teachers stay valid)
            "data": json.dumps(asdict(study.data), sort_keys=True),
            "epochs": str(study.budget.pretrain_epochs),
            "train": json.dumps({k: v for k, v in study.train.recipe().items() if k not in ("lr", "distill_alpha",
                                "distill_temperature", "moe_loss_weight")}, sort_keys=True)}


def _published_source(study: Study) -> str:
    """Where the published weights a teacher starts from come from: timm's hub, or a file."""
    return "timm" if study.pretrained is True else str(study.pretrained)


def _pretrained_metadata(study: Study) -> dict[str, str] | None:
    path = study.teacher_path
    if not path.is_file():
        return None

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception:  # noqa: BLE001 - a corrupt file is simply not a cache hit; pretraining rewrites it
        return None


def is_pretrained(study: Study) -> bool:
    """True when the teacher file is there and was trained for this study's model, data and epochs."""
    if study.checkpoint is not None:
        return study.checkpoint.is_file()
    return _matches(study, _pretrained_metadata(study))


def _matches(study: Study, meta: dict[str, str] | None) -> bool:
    wanted = _fingerprint(study)
    return (meta is not None and all(meta.get(k) == v for k, v in wanted.items())
            and meta.get("pretrained") == wanted.get("pretrained"))  # either way: random init or published weights


def load_teacher(study: Study) -> nn.Module:
    """The dense teacher, in eval mode. Raises StateError if there is none yet (run ``nas pretrain``)."""
    model = create_model(study.model)
    if study.checkpoint is not None:
        return load_weights(model, study.checkpoint, "model.checkpoint").eval()
    if not is_pretrained(study):
        raise StateError("model.checkpoint", f"no teacher weights for this study at {study.teacher_path}: "
                                              f"run `nas pretrain {study.path}` (or give model.checkpoint)",
                          str(study.path))
    return load_weights(model, study.teacher_path, "teacher").eval()


def pretrain(study: Study, train_set: Dataset, search_set: Dataset, force: bool = False,
             on_epoch: Callable[[int, float, float], None] | None = None,
             on_wait: Callable[[], None] | None = None) -> PretrainResult:
    """Train the dense model on the study's train split, scored on its search split after each epoch (cached: a
    second call with the same study is a no-op). One process at a time: another one training this teacher is waited
    for (``on_wait()`` says so), then its file is used."""
    if study.checkpoint is not None:
        raise ConfigError("model.checkpoint", f"the study gives a checkpoint ({study.checkpoint}); there is "
                                              "nothing to pretrain", str(study.path))
    ensure_writable(study.teacher_path.parent, "model.checkpoint")
    with lock_beside(study.teacher_path, on_wait):
        return _pretrain(study, train_set, search_set, force, on_epoch)


def _pretrain(study: Study, train_set: Dataset, search_set: Dataset, force: bool,
              on_epoch: Callable[[int, float, float], None] | None) -> PretrainResult:
    meta = _pretrained_metadata(study)
    if not force and _matches(study, meta):
        return PretrainResult(str(study.teacher_path), int(meta["epochs"]), float(meta.get("search_accuracy", "nan")),
                              0.0, cached=True)
    start = time.perf_counter()
    torch.manual_seed(study.train.seed)
    model = create_model(study.model, pretrained=study.pretrained is True)
    if isinstance(study.pretrained, Path):
        load_published(model, study.pretrained)
    epochs = study.budget.pretrain_epochs
    placement = resolve(study.train.device, study.train.precision)
    trainer = Trainer(model, train_set, epochs=epochs, steps_per_epoch=None, batch_size=study.train.batch_size,
                      lr=study.train.pretrain_lr, weight_decay=study.train.weight_decay,
                      weights=LossWeights(distill_alpha=0.0), seed=study.train.seed, placement=placement,
                      loader_workers=study.train.loader_workers)
    accuracy = 0.0
    for epoch in range(epochs):
        loss = trainer.train_epoch()
        accuracy = evaluate(model, search_set, placement=placement,
                            loader_workers=study.train.loader_workers).accuracy
        if on_epoch is not None:
            on_epoch(epoch, loss, accuracy)
    metadata = {**_fingerprint(study), "search_accuracy": f"{accuracy:.6f}"}
    save_weights(model.cpu(), study.teacher_path, metadata)
    return PretrainResult(str(study.teacher_path), epochs, accuracy, time.perf_counter() - start, cached=False)
