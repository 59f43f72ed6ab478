"""Training loops: knowledge distillation from the dense teacher plus the latency-aware MoE balance loss.

One loop serves pretraining the teacher (no teacher, no MoE), a trial's short fine-tune and ``nas finetune``.
A loss that turns NaN or infinite raises :class:`TrainingDiverged` at once, so a trial fails with that reason instead
of scoring a broken model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from search_spaces.errors import ConfigError
from search_spaces.ops.moe import MoELoad, MoEMlp, moe_aux_loss
from search_spaces.ops.shift import ShiftLinear
from search_spaces.reparam import router_counts

from ..device import Placement

# Parameters that are tokens or embeddings added to the input, not weights of a product: never decayed.
TOKEN_PARAMETERS = ("pos_embed", "cls_token", "dist_token", "reg_token")


class TrainingDiverged(ConfigError):
    """The training loss became NaN or infinite: the recipe (``train.lr`` and the rest) does not train this model."""


@dataclass(frozen=True)
class LossWeights:
    distill_alpha: float = 0.5  # 0: labels only
    temperature: float = 2.0
    moe: float = 0.01


def distillation_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                      weights: LossWeights) -> torch.Tensor:
    """(1 - alpha) CE(labels) + alpha T² KL(teacher_T || student_T) (Hinton et al.)."""
    ce = F.cross_entropy(logits, labels)
    if teacher_logits is None or weights.distill_alpha == 0:
        return ce
    t = weights.temperature
    kl = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher_logits / t, -1), log_target=True,
                  reduction="batchmean") * t * t
    return (1 - weights.distill_alpha) * ce + weights.distill_alpha * kl


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on the weights of multiplying layers only.

    Not decayed: norms and biases (every parameter of one dimension), position and class tokens, MoE routers (decay
    would pull the gates toward a uniform split the latency-aware loss is meant to decide), and shift layers (decay
    pulls the latent weight toward zero, i.e. every code toward the smallest shift, a bias no recipe asked for).
    Trials, pretraining and ``nas finetune`` all build their optimizer from this one function.
    """
    exempt: set[int] = set()
    for module in model.modules():
        if isinstance(module, ShiftLinear):
            exempt.update(id(p) for p in module.parameters())
        elif isinstance(module, MoEMlp):
            exempt.update(id(p) for gate in (module.router, module.noise) for p in gate.parameters())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        keep = p.ndim <= 1 or id(p) in exempt or name.rsplit(".", 1)[-1] in TOKEN_PARAMETERS
        (no_decay if keep else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _is_in_memory(dataset: Dataset) -> bool:
    """Tensors already decoded (shapes, digits): a loader process would only copy them."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, TensorDataset)


def loader(dataset: Dataset, batch_size: int, placement: Placement, workers: int | None = None,
           **kwargs) -> DataLoader:
    """A DataLoader for ``placement``: pinned memory for CUDA, and ``workers`` processes (None: none for data held
    in memory, up to 4 for images decoded from files)."""
    if workers is None:
        workers = 0 if _is_in_memory(dataset) else min(4, max(1, (os.cpu_count() or 1) // 2))
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=placement.pin_memory,
                      persistent_workers=workers > 0, **kwargs)


def _batches(dataset: Dataset, batch_size: int, seed: int, placement: Placement, workers: int | None
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches (a new order every pass)."""
    generator = torch.Generator().manual_seed(seed)
    batches = loader(dataset, batch_size, placement, workers, shuffle=True, drop_last=len(dataset) > batch_size,
                     generator=generator)
    while True:
        yield from batches


class Trainer:
    """Trains ``model`` for ``epochs`` × ``steps_per_epoch`` AdamW steps with a cosine learning-rate decay.

    Example:
        >>> trainer = Trainer(model, train_set, epochs=2, steps_per_epoch=10, teacher=teacher)  # doctest: +SKIP
        >>> for epoch in range(2):
        ...     trainer.train_epoch()
        ...     accuracy = evaluate(model, search_set).accuracy
    """

    def __init__(self, model: nn.Module, train_set: Dataset, *, epochs: int, steps_per_epoch: int | None,
                 batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.05,
                 teacher: nn.Module | None = None, weights: LossWeights = LossWeights(), seed: int = 0,
                 placement: Placement = Placement(), loader_workers: int | None = None) -> None:
        self.placement = placement
        self.model, self.teacher, self.weights = model.to(placement.device), teacher, weights
        if teacher is not None:
            teacher.to(placement.device)
        per_pass = max(1, len(train_set) // batch_size)
        self.steps_per_epoch = steps_per_epoch or per_pass
        self.batches = _batches(train_set, batch_size, seed, placement, loader_workers)
        self.optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr)
        self.scaler = placement.scaler()
        total = epochs * self.steps_per_epoch
        warmup = max(1, total // 20)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)),
        )
        self.step = 0
        if teacher is not None:
            teacher.eval()  # its forward runs under no_grad; its own flags stay as they are (it is copied per trial)

    def train_epoch(self, on_step: Callable[[int, float], None] | None = None) -> float:
        """One epoch of steps; returns the mean loss. Raises :class:`TrainingDiverged` on a NaN/inf loss."""
        self.model.train()
        total = 0.0
        for _ in range(self.steps_per_epoch):
            images, labels = self.placement.put(*next(self.batches))
            with self.placement.autocast():
                teacher_logits = None
                if self.teacher is not None:
                    with torch.no_grad():  # once per batch, on the device, beside the student
                        teacher_logits = self.teacher(images)
                logits = self.model(images)
                loss = distillation_loss(logits.float(), labels,
                                         None if teacher_logits is None else teacher_logits.float(), self.weights)
                aux = moe_aux_loss(self.model)
                if aux is not None and self.weights.moe > 0:
                    loss = loss + self.weights.moe * aux.float()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged("train.lr", f"loss is {value} at step {self.step + 1} (epoch step "
                                       f"{self.step % self.steps_per_epoch + 1} of {self.steps_per_epoch})")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clip the true gradients (a no-op unless fp16)
            nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.schedule.step()
            self.step += 1
            total += value
            if on_step is not None:
                on_step(self.step, value)
        return total / self.steps_per_epoch


def standard_error(accuracy: float, count: int) -> float:
    """The binomial standard error of an accuracy measured on ``count`` images."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / count) if count > 0 else math.nan


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # top-1, in [0, 1]
    moe_loads: dict[int, MoELoad]  # MoE block -> how its router spread the evaluated images
    count: int = 0  # images evaluated

    @property
    def standard_error(self) -> float:
        return standard_error(self.accuracy, self.count)

    @property
    def moe_shares(self) -> dict[int, list[float]]:
        """MoE block -> share of token assignments per expert over the whole set."""
        return {block: load.shares for block, load in self.moe_loads.items()}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256, placement: Placement = Placement(),
             loader_workers: int | None = None) -> Evaluation:
    """Top-1 accuracy, and how the routers spread every evaluated image's tokens (what the predictor prices), with
    the model on ``placement``'s device."""
    model.eval().to(placement.device)
    correct, counts = 0, {}
    for images, labels in loader(dataset, batch_size, placement, loader_workers):
        images, labels = placement.put(images, labels)
        with placement.autocast():
            predicted = model(images).argmax(-1)
        correct += int((predicted == labels).sum())
        for block, per_image in router_counts(model).items():
            counts.setdefault(block, []).append(per_image.cpu())
    loads = {block: MoELoad.from_counts(torch.cat(parts).numpy()) for block, parts in counts.items()}
    return Evaluation(correct / max(1, len(dataset)), loads, len(dataset))
