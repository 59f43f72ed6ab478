"""Do shift layers train under the product's recipes? Before and after the latent-weight change, in one run.

The quick-start study (its model, data, teacher recipe, trial recipe and ``nas finetune`` recipe): a dense teacher is
pretrained, then two architectures are converted from it and trained:

- all-shift: every block's qkv, proj and MLP are shift layers (attention msa);
- all-MoE: every block's MLP is a mixture of a dense and a shift expert (top-1).

Each is trained two ways: *before*, the earlier parametrization (``shift`` and ``sign`` as parameters, initialised on
integers and rounded in the forward; weight decay on every parameter), rebuilt here for the comparison; *after*, what
the product does now (a latent real weight quantized with a straight-through estimator; no decay on shift layers,
norms, biases, tokens and routers). For each: test accuracy (± one binomial standard error) right after conversion,
after the trial recipe (``budget.epochs`` x ``budget.steps_per_epoch`` steps), and after ``--finetune-epochs`` full
passes (the ``nas finetune`` recipe), and the share of shift codes (shift or sign) that changed from the conversion.

``--binarization`` also trains an all-additive-attention model with each binarization (``tensor``, the paper's;
``token``) under the trial recipe and writes ``additive-binarization``.

    python bench/shift_training.py [--finetune-epochs 30] [--binarization]

Writes ``bench/results/shift-training.{json,md}`` (and ``additive-binarization.{json,md}``). The MoE routers'
latency vector is uniform here (no predictor is fitted), which the search would set from the predictor.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

from nas.training import data  # noqa: E402
from nas.study import Study  # noqa: E402
from nas.training.trainer import LossWeights, Trainer, evaluate, standard_error  # noqa: E402
from search_spaces import ArchConfig, BlockConfig, MoEConfig, build_model  # noqa: E402
from search_spaces.ops.shift import ShiftLinear  # noqa: E402
from search_spaces.reparam import create_model  # noqa: E402

STUDY = Path(__file__).resolve().parent.parent / "studies" / "quickstart.yaml"


class LegacyShiftLinear(nn.Module):
    """The parametrization before the change: ``shift`` and ``sign`` parameters, rounded in the forward through
    straight-through estimators (DeepShift-PS as this product had it)."""

    def __init__(self, layer: ShiftLinear) -> None:
        super().__init__()
        shift, sign = layer.quantized()
        self.shift = nn.Parameter(shift.float())
        self.sign = nn.Parameter(sign.float())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.shift_min, self.shift_max = layer.shift_min, layer.shift_max

    def codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.round(self.shift.detach()).clamp(self.shift_min, self.shift_max),
                torch.sign(self.sign.detach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shift.clamp(self.shift_min, self.shift_max)
        s = s + (torch.round(s) - s).detach()
        sign = self.sign + (torch.sign(self.sign) - self.sign).detach()
        return nn.functional.linear(x, sign * torch.exp2(s), self.bias)


def _legacy(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, ShiftLinear):
            setattr(model, name, LegacyShiftLinear(child))
        else:
            _legacy(child)
    return model


def codes(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for m in model.modules():
        if isinstance(m, ShiftLinear):
            shift, sign = m.quantized()
            out.append((shift.float(), sign.float()))
        elif isinstance(m, LegacyShiftLinear):
            out.append(m.codes())
    return out


def changed_share(before, after) -> float:
    moved = sum(int(((s0 != s1) | (g0 != g1)).sum()) for (s0, g0), (s1, g1) in zip(before, after))
    return moved / max(1, sum(s.numel() for s, _ in before))


class _DecayEverything(Trainer):
    """The optimizer before the change: AdamW with weight decay on every parameter."""

    def __init__(self, model, *args, weight_decay: float, lr: float, **kwargs) -> None:
        super().__init__(model, *args, weight_decay=weight_decay, lr=lr, **kwargs)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        schedule = self.schedule
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule.lr_lambdas[0])


def accuracy_fields(prefix: str, evaluation) -> dict:
    return {f"{prefix}_test": round(evaluation.accuracy, 4), f"{prefix}_se": round(evaluation.standard_error, 4)}


def train(student, teacher, splits, study: Study, *, epochs: int, steps: int | None, legacy: bool, seed: int):
    t = study.train
    cls = _DecayEverything if legacy else Trainer
    trainer = cls(student, splits.train, epochs=epochs, steps_per_epoch=steps, batch_size=t.batch_size, lr=t.lr,
                  weight_decay=t.weight_decay, teacher=teacher,
                  weights=LossWeights(t.distill_alpha, t.distill_temperature, t.moe_loss_weight), seed=seed)
    for _ in range(epochs):
        trainer.train_epoch()
    return student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--pretrain-epochs", type=int, help="default: the study's budget.pretrain_epochs")
    parser.add_argument("--binarization", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    study = Study.load(STUDY)
    from latency_model.decomposition import ModelDims

    dims = ModelDims.of(study.model)
    splits = data.load(study.data, dims.img, dims.classes)
    torch.manual_seed(args.seed)
    teacher = create_model(study.model)
    started = time.perf_counter()
    pretrain_epochs = args.pretrain_epochs or study.budget.pretrain_epochs
    t = study.train
    trainer = Trainer(teacher, splits.train, epochs=pretrain_epochs, steps_per_epoch=None,
                      batch_size=t.batch_size, lr=t.pretrain_lr, weight_decay=t.weight_decay,
                      weights=LossWeights(distill_alpha=0.0), seed=t.seed)
    for _ in range(pretrain_epochs):
        trainer.train_epoch()
    teacher.eval()
    dense = evaluate(teacher, splits.test)
    print(f"teacher: {pretrain_epochs} epochs in {time.perf_counter() - started:.0f} s, test {dense.accuracy:.4f}",
          flush=True)
    depth = study.space.depth
    archs = {
        "all-shift": BlockConfig("msa", "shift", "shift", "shift"),
        "all-moe": BlockConfig(mlp="moe", moe=MoEConfig(1, ("dense", "shift"))),
    }
    rows = []
    for name, block in archs.items():
        config = ArchConfig(study.model, (block,) * depth)
        for legacy in (True, False):
            row = {"architecture": name, "training": "before (shift/sign parameters, decay on all)" if legacy
                   else "after (latent weight, parameter groups)"}
            torch.manual_seed(args.seed)
            converted = build_model(config, teacher)
            converted = _legacy(converted) if legacy else converted
            initial = codes(converted)
            row.update(accuracy_fields("converted", evaluate(converted, splits.test)))
            recipe = train(copy.deepcopy(converted), teacher, splits, study, epochs=study.budget.epochs,
                           steps=study.budget.steps_per_epoch, legacy=legacy, seed=args.seed)
            row.update(accuracy_fields("trial_recipe", evaluate(recipe, splits.test)))
            row["trial_recipe_codes_changed"] = round(changed_share(initial, codes(recipe)), 4)
            start = time.perf_counter()
            tuned = train(copy.deepcopy(converted), teacher, splits, study, epochs=args.finetune_epochs, steps=None,
                          legacy=legacy, seed=args.seed)
            row.update(accuracy_fields(f"finetune{args.finetune_epochs}", evaluate(tuned, splits.test)))
            row[f"finetune{args.finetune_epochs}_codes_changed"] = round(changed_share(initial, codes(tuned)), 4)
            row["finetune_s"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(row, flush=True)
    se = standard_error(dense.accuracy, dense.count)
    notes = (f"Quick-start study ({STUDY.name}): teacher pretrained {pretrain_epochs} epochs, test accuracy "
             f"{dense.accuracy:.4f} ± {se:.4f} on {dense.count} test images. Trial recipe: {study.budget.epochs} "
             f"epochs x {study.budget.steps_per_epoch} steps, lr {study.train.lr}; fine-tune: {args.finetune_epochs} "
             f"full passes over the {len(splits.train)} train images. Accuracies on the test split (± 1 binomial SE). "
             "codes_changed: share of shift layers' (shift, sign) codes different from the conversion's.")
    write("shift-training", rows, notes, {"teacher_test_accuracy": dense.accuracy, "teacher_test_se": se})
    if args.binarization:
        rows = []
        for binarize in ("tensor", "token"):
            block = BlockConfig("additive", binarize=binarize)
            config = ArchConfig(study.model, (block,) * depth)
            for seed in (0, 1):
                torch.manual_seed(seed)
                model = build_model(config, teacher)
                row = {"binarize": binarize, "seed": seed, **accuracy_fields("converted", evaluate(model, splits.test))}
                train(model, teacher, splits, study, epochs=study.budget.epochs, steps=study.budget.steps_per_epoch,
                      legacy=False, seed=seed)
                row.update(accuracy_fields("trial_recipe", evaluate(model, splits.test)))
                row["trial_recipe_search"] = round(evaluate(model, splits.search).accuracy, 4)
                rows.append(row)
                print(row, flush=True)
        write("additive-binarization", rows, "All-additive-attention quick-start model (every block additive, the "
              "rest dense) converted from the same teacher and trained with the trial recipe; tensor: threshold at "
              "the mean of the whole Q/K tensor with the gradient of clamp(q, 0, 1) (the released ShiftAddViT code); "
              "token: per-token mean, centred value clipped to [-1, 1]. Test accuracy ± 1 binomial SE; two seeds "
              f"(training order and init of the new parts). Teacher test accuracy {dense.accuracy:.4f}.")


if __name__ == "__main__":
    main()
