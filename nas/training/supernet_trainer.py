"""``nas supernet``: train the study's weight-sharing supernet (:mod:`search_spaces.supernet`), and load it for trials
that inherit their weights (``evaluation.mode: supernet``).

Training is the sandwich rule (BigNAS, AutoFormer): every step runs, on one batch, the densest subnet, the subnet the
latency predictor prices cheapest and ``evaluation.random_subnets`` random ones, each distilled from the dense
teacher (its logits computed once per batch) with the latency-aware balance loss of each active MoE block at the
predictor's expert latencies; their gradients are averaged into one AdamW step of the trial recipe's settings.

The weights go to ``<study folder>/<name>-supernet.safetensors`` (:mod:`.supernet_file`: its format, what it was
trained for, loading it). Training checkpoints every :data:`CHECKPOINT_EVERY_S` seconds, so a killed run resumes where
the last checkpoint left it; a finished file is a cache hit; a file trained for anything else is refused with what
differs (``nas supernet`` keeps it aside as ``*.stale.safetensors`` and trains afresh), and a truncated or edited one
likewise. :mod:`.memory` refuses a training that would not fit, before any work.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from search_spaces import ArchConfig
from search_spaces.supernet import Supernet, densest, random_config

from ..device import Placement, resolve
from ..disk import ensure_writable, lock_beside
from ..study import Study
from .supernet_file import SupernetRefused, fingerprint, load_into, read_checkpoint, save_checkpoint
from .trainer import LossWeights, TrainingDiverged, _batches, distillation_loss, parameter_groups

CHECKPOINT_EVERY_S = 30.0


@dataclass(frozen=True)
class SupernetResult:
    path: str
    steps: int
    seconds: float
    cached: bool
    resumed_from: int = 0  # the step a killed run had checkpointed (0: trained from the start)
    set_aside: str | None = None  # why an existing file was not used (it was moved to *.stale.safetensors)
    cheapest: ArchConfig | None = None


# ---- the anchors of the sandwich rule ------------------------------------------------------------------------------
def cheapest(study: Study, predictor, batch: int) -> ArchConfig:
    """The architecture the latency predictor prices lowest, by coordinate descent over the space's decisions from
    the densest one (exact when blocks are priced independently, as the predictor's per-block parts are)."""
    space = study.space
    params = space.params_of(densest(space))

    def build(values):
        seen: dict[str, tuple] = {}

        def pick(name, options):
            seen[name] = tuple(options)
            return values[name] if values.get(name) in options else options[0]
        return space._build(pick), seen

    def cost(values) -> float:
        return predictor.predict(build(values)[0], batch).total_ms

    best = cost(params)
    for _ in range(3):
        improved = False
        for name, options in build(params)[1].items():
            for option in options:
                trial = {**params, name: option}
                value = cost(trial)
                if value < best - 1e-12:
                    best, params, improved = value, trial, True
        if not improved:
            break
    return build(params)[0]


# ---- training -------------------------------------------------------------------------------------------------------
class _ExpertLatencies:
    """Each MoE block's expert latencies from the predictor, cached per block and choice."""

    def __init__(self, predictor, batch: int) -> None:
        self.predictor, self.batch, self.cache = predictor, batch, {}

    def set(self, supernet: Supernet, config: ArchConfig) -> None:
        for i, moe in supernet.moe_blocks().items():
            key = (i, config.blocks[i])
            if key not in self.cache:
                self.cache[key] = self.predictor.expert_latencies(config, i, self.batch)
            moe.set_expert_latency(self.cache[key])


def train(study: Study, train_set, teacher: nn.Module, predictor, *, force: bool = False,
          on_step: Callable[[int, int, float], None] | None = None,
          placement: Placement | None = None, on_wait: Callable[[], None] | None = None,
          start_from: Path | None = None) -> SupernetResult:
    """Train (or resume, or find cached) the study's supernet. ``on_step(step, steps, loss)`` after each step. One
    process at a time: another one training this supernet is waited for (``on_wait()`` says so), then its file is
    used (or resumed, if that process died). ``start_from``: a finished supernet file of a larger space over the same
    model whose weights a fresh run starts from instead of the teacher's (few-shot splitting: a sub-supernet, one
    decision fixed, continues from the one-shot supernet)."""
    ensure_writable(study.supernet_path.parent, "evaluation")
    with lock_beside(study.supernet_path, on_wait):
        return _train(study, train_set, teacher, predictor, force, on_step,
                      placement or resolve(study.train.device, study.train.precision), start_from)


def _train(study: Study, train_set, teacher: nn.Module, predictor, force: bool,
           on_step: Callable[[int, int, float], None] | None, placement: Placement,
           start_from: Path | None = None) -> SupernetResult:
    settings, recipe = study.evaluation, study.train
    path = study.supernet_path
    start = time.perf_counter()
    fp = fingerprint(study, teacher)
    steps = settings.supernet_steps
    supernet = Supernet.from_dense(teacher, study.space)
    first, moments, set_aside = 0, None, None
    if path.is_file() and not force:
        try:
            meta, tensors = read_checkpoint(path, fp)
            load_into(supernet, tensors, path)
        except SupernetRefused as e:
            stale = path.with_name(path.name.replace(".safetensors", ".stale.safetensors"))
            os.replace(path, stale)
            set_aside = f"{e.detail}; moved to {stale.name}"
        else:
            first = int(meta["step"])
            if first >= steps:
                return SupernetResult(str(path), steps, 0.0, cached=True)
            moments = tensors
    if first == 0 and start_from is not None:
        _, parent = read_checkpoint(start_from, {})  # its checksum is checked; what it was trained for is not
        load_into(supernet, parent, start_from)
    batch = study.latency.batch_sizes[0]
    anchors = [densest(study.space), cheapest(study, predictor, batch)]
    latencies = _ExpertLatencies(predictor, batch)
    supernet.to(placement.device).train()
    teacher = teacher.to(placement.device).eval()
    optimizer = torch.optim.AdamW(parameter_groups(supernet, recipe.weight_decay), lr=settings.supernet_lr or recipe.lr)
    if moments is not None:
        _load_moments(optimizer, moments)
    warmup = max(1, steps // 20)

    def rate(s: int) -> float:  # the trial recipe's warm-up and cosine decay, at the run's own step
        s += first
        return min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    scaler = placement.scaler()
    weights = LossWeights(recipe.distill_alpha, recipe.distill_temperature, recipe.moe_loss_weight)
    # a resumed run draws new batches and subnets from where it starts, reproducibly
    batches = _batches(train_set, recipe.batch_size, recipe.seed + first, placement, recipe.loader_workers)
    generator = torch.Generator().manual_seed(recipe.seed * 1_000_003 + first)
    saved = time.monotonic()
    for step in range(first, steps):
        images, labels = placement.put(*next(batches))
        with placement.autocast(), torch.no_grad():
            teacher_logits = teacher(images).float()
        subnets = anchors + [random_config(study.space, generator) for _ in range(settings.random_subnets)]
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for config in subnets:
            supernet.activate(config)
            latencies.set(supernet, config)
            with placement.autocast():
                logits = supernet(images)
                loss = distillation_loss(logits.float(), labels, teacher_logits, weights)
                balance = [moe.aux_loss for moe in supernet.moe_blocks().values()]
                if balance and weights.moe > 0:
                    loss = loss + weights.moe * torch.stack(balance).sum().float()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged("evaluation.supernet_lr", f"supernet loss is {value} at step {step + 1} "
                                                                 f"(subnet {config.id})")
            scaler.scale(loss / len(subnets)).backward()
            total += value / len(subnets)
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(supernet.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        if time.monotonic() - saved > CHECKPOINT_EVERY_S or step + 1 == steps:
            save_checkpoint(path, supernet, optimizer, step + 1, steps, fp)
            saved = time.monotonic()
        if on_step is not None:
            on_step(step + 1, steps, total)
    supernet.activate(anchors[0])
    return SupernetResult(str(path), steps, time.perf_counter() - start, cached=False, resumed_from=first,
                          set_aside=set_aside, cheapest=anchors[1])


def _load_moments(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor]) -> None:
    """AdamW's moments from a checkpoint (the parameters are already loaded); its own loader puts them where the
    parameters are."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("adam."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
