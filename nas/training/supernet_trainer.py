"""``nas supernet``: train the study's weight-sharing supernet (:mod:`search_spaces.supernet`), and load it for trials
that inherit their weights (``evaluation.mode: supernet``).

Training is the sandwich rule (BigNAS, AutoFormer): every step runs, on one batch, the densest subnet, the subnet the
latency predictor prices cheapest and ``evaluation.random_subnets`` random ones, each distilled from the dense
teacher (its logits computed once per batch) with the latency-aware balance loss of each active MoE block at the
predictor's expert latencies; their gradients are averaged into one AdamW step of the trial recipe's settings.

The weights go to ``<study folder>/<name>-supernet.safetensors`` with the optimizer's moments, the step reached, what
they were trained for (model, space, data, teacher, recipe) and a checksum. Training checkpoints every
:data:`CHECKPOINT_EVERY_S` seconds, so a killed run resumes where the last checkpoint left it; a finished file is a
cache hit; a file trained for anything else is refused with what differs (``nas supernet`` keeps it aside as
``*.stale.safetensors`` and trains afresh), and a truncated or edited one likewise.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from latency_model.decomposition import ModelDims
from search_spaces import ArchConfig
from search_spaces.errors import ResourceError, StateError
from search_spaces.reparam import create_model
from search_spaces.supernet import Supernet, densest, random_config

from ..device import Placement, resolve
from ..disk import ensure_writable, lock_beside
from ..study import Study
from .trainer import LossWeights, TrainingDiverged, _batches, distillation_loss, parameter_groups

CHECKPOINT_EVERY_S = 30.0
FORMAT = "1"
MEMORY_HEADROOM = 0.8  # train only when the estimate fits in this share of the memory available


class SupernetRefused(StateError):
    """A supernet file that cannot be used for this study: trained for another one, unfinished, truncated, edited."""


@dataclass(frozen=True)
class SupernetResult:
    path: str
    steps: int
    seconds: float
    cached: bool
    resumed_from: int = 0  # the step a killed run had checkpointed (0: trained from the start)
    set_aside: str | None = None  # why an existing file was not used (it was moved to *.stale.safetensors)
    cheapest: ArchConfig | None = None


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


def _load_into(supernet: Supernet, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
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
    _load_into(supernet, tensors, path)
    return supernet.eval()


def supernet_state(supernet: Supernet) -> dict[str, torch.Tensor]:
    """Its weights, as :func:`supernet_from_state` takes them (what a Ray trial gets through the object store)."""
    return _state(supernet)


def supernet_from_state(study: Study, teacher: nn.Module, state: Mapping[str, torch.Tensor]) -> Supernet:
    supernet = Supernet.from_dense(teacher, study.space)
    _load_into(supernet, state, study.supernet_path)
    return supernet.eval()


def is_trained(study: Study, teacher: nn.Module) -> bool:
    try:
        meta, _ = read_checkpoint(study.supernet_path, fingerprint(study, teacher))
    except SupernetRefused:
        return False
    return int(meta["step"]) >= int(meta["steps"])


# ---- memory ---------------------------------------------------------------------------------------------------------
def memory_estimate(study: Study) -> tuple[int, str]:
    """Bytes training the supernet needs (and how they add up): the teacher, the supernet's weights, gradients and
    two AdamW moments, and one subnet's activations at the batch size. Computed on the meta device: nothing is
    allocated."""
    with torch.device("meta"):
        params = sum(p.numel() for p in create_model(study.model).parameters())
    dims = ModelDims.of(study.model)
    batch = study.train.batch_size
    # per token and block, what autograd keeps: about 12 C-wide tensors (norms, projections, residuals), 3 of the
    # MLP's width, and the attention matrix's row
    floats = sum(b.tokens * (12 * b.channels + 3 * b.hidden + b.heads * (b.kv_tokens or b.tokens))
                 for b in dims.blocks)
    weights, activations = 5 * 4 * params, 4 * batch * floats
    return weights + activations, (f"{params / 1e6:.1f} M parameters x 5 copies (teacher, weights, gradients, 2 AdamW "
                                   f"moments) {weights / 2**30:.2f} GiB + activations at batch {batch} "
                                   f"{activations / 2**30:.2f} GiB")


def available_memory(placement: Placement) -> int:
    if placement.device.type == "cuda":
        return torch.cuda.mem_get_info(placement.device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(study: Study, placement: Placement) -> None:
    """Refuse, before anything is loaded, a supernet that would not fit (ResourceError with the estimate)."""
    need, parts = memory_estimate(study)
    have = available_memory(placement)
    if need > MEMORY_HEADROOM * have:
        raise ResourceError("evaluation.mode", f"training this supernet needs about {need / 2**30:.1f} GiB ({parts}); "
                                               f"{placement.device} has {have / 2**30:.1f} GiB available. Use a "
                                               "smaller train.batch_size, a larger machine, or evaluation.mode: "
                                               "finetune")


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
            _load_into(supernet, tensors, path)
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
        _load_into(supernet, parent, start_from)
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


__all__ = ["SupernetRefused", "SupernetResult", "check_memory", "cheapest", "fingerprint", "is_trained",
           "load_supernet", "memory_estimate", "read_checkpoint", "save_checkpoint", "supernet_from_state",
           "supernet_state", "train"]
