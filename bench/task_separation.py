"""Can the bundled tasks tell the primitives apart? Four hand-made architectures, fine-tuned the ``nas finetune`` way.

For each task, a teacher is pretrained with the study's recipe, then four architectures are converted from it and
fine-tuned with the study's ``nas finetune`` recipe (``budget.finetune_epochs`` full passes over the train split,
distillation from the teacher, the trial's losses), once per seed (the seed sets the data order and the init of
the new parts):

- dense: the teacher's architecture, fine-tuned like the others;
- additive: additive attention (binary Q/K, the paper's binarization) in every block, the rest dense;
- shift-mlp: every block's MLP a shift layer pair;
- moe: every block's MLP a mixture of a dense and a shift expert (top-1).

Tasks: ``shapes`` is the quick-start study as it ships; ``digits`` is the same study with ``data.source: digits``
and the digits recipe the quick-start had before (30 pretraining and 30 fine-tuning epochs).

    python bench/task_separation.py [--tasks shapes digits] [--seeds 0 1]

Writes ``bench/results/task-separation.{json,md}``: test accuracy ± one binomial standard error per run, and per
architecture its mean, its difference from dense in standard errors, and its seed-to-seed spread in standard errors.
Run on a subset of ``--tasks``, the recorded rows of the other tasks are kept (and said to be in the notes).
The MoE routers' latency vector is uniform here (no predictor is fitted; a search sets it from the predictor).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, write  # noqa: E402

from latency_model.decomposition import ModelDims  # noqa: E402
from nas.training import data  # noqa: E402
from nas.study import Study  # noqa: E402
from nas.training.teacher import load_teacher, pretrain  # noqa: E402
from nas.training.trainer import LossWeights, Trainer, evaluate, standard_error  # noqa: E402
from search_spaces import ArchConfig, BlockConfig, MoEConfig, build_model  # noqa: E402

STUDY = Path(__file__).resolve().parent.parent / "studies" / "quickstart.yaml"
TASKS = {
    "shapes": {},
    "digits": {"data": {"source": "digits", "test_fraction": 0.2, "search_fraction": 0.2},
               "budget": {"pretrain_epochs": 30, "finetune_epochs": 30}},
}
ARCHITECTURES = {
    "dense": BlockConfig(),
    "additive": BlockConfig("additive"),
    "shift-mlp": BlockConfig(mlp="shift"),
    "moe": BlockConfig(mlp="moe", moe=MoEConfig(1, ("dense", "shift"))),
}


def task_study(task: str, folder: Path) -> Study:
    """The quick-start study with the task's changes, written into ``folder`` (where its teacher goes)."""
    spec = yaml.safe_load(STUDY.read_text())
    for section, values in TASKS[task].items():
        spec[section] = values if section == "data" else {**spec[section], **values}
    spec["name"] = f"separation-{task}"
    path = folder / f"{task}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return Study.load(path)


def finetune(study: Study, teacher, splits, block: BlockConfig, seed: int):
    """What ``nas finetune`` does to an architecture, minus the predictor (uniform MoE router latencies)."""
    t = study.train
    torch.manual_seed(seed)
    model = build_model(ArchConfig(study.model, (block,) * study.space.depth), teacher).requires_grad_(True)
    epochs = study.budget.finetune_epochs
    trainer = Trainer(model, splits.train, epochs=epochs, steps_per_epoch=None, batch_size=t.batch_size, lr=t.lr,
                      weight_decay=t.weight_decay, teacher=teacher,
                      weights=LossWeights(t.distill_alpha, t.distill_temperature, t.moe_loss_weight), seed=seed)
    for _ in range(epochs):
        trainer.train_epoch()
    return evaluate(model, splits.test), evaluate(model, splits.search)


def summarise(task: str, rows: list[dict]) -> list[dict]:
    """Per architecture: mean test accuracy over seeds, its difference from dense and its seed spread, both in
    standard errors (the binomial SE of one test accuracy at the dense mean, on this test set)."""
    runs = [r for r in rows if r["task"] == task]
    count = runs[0]["test_images"]
    dense = statistics.mean(r["test_accuracy"] for r in runs if r["architecture"] == "dense")
    se = standard_error(dense, count)
    out = []
    for name in ARCHITECTURES:
        accuracies = [r["test_accuracy"] for r in runs if r["architecture"] == name]
        mean = statistics.mean(accuracies)
        out.append({"task": task, "architecture": name, "mean_test_accuracy": round(mean, 4),
                    "se": round(se, 4), "difference_from_dense_se": round((mean - dense) / se, 2),
                    "seed_spread_se": round((max(accuracies) - min(accuracies)) / se, 2),
                    "seeds": len(accuracies)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows, summary, teachers = [], [], {}
    recorded = RESULTS / "task-separation.json"
    if recorded.is_file():  # the other tasks' rows, from the recorded run
        previous = json.loads(recorded.read_text())
        kept = [task for task in previous["teachers"] if task not in args.tasks]
        rows = [r for r in previous["rows"] if r["task"] in kept]
        summary = [r for r in previous["summary"] if r["task"] in kept]
        teachers = {task: {"recorded": previous["date"], **previous["teachers"][task]} for task in kept}
    with tempfile.TemporaryDirectory() as folder:
        for task in args.tasks:
            study = task_study(task, Path(folder))
            dims = ModelDims.of(study.model)
            started = time.perf_counter()
            splits = data.load(study.data, dims.img, dims.classes)
            loaded = time.perf_counter() - started
            made = pretrain(study, splits.train, splits.search)
            teacher = load_teacher(study)
            own = evaluate(teacher, splits.test)
            teachers[task] = {"pretrain_epochs": study.budget.pretrain_epochs, "pretrain_s": round(made.seconds),
                              "data_s": round(loaded, 2), "test_accuracy": round(own.accuracy, 4),
                              "test_se": round(own.standard_error, 4), "train_images": len(splits.train),
                              "search_images": len(splits.search), "test_images": len(splits.test),
                              "finetune_epochs": study.budget.finetune_epochs}
            print(task, teachers[task], flush=True)
            for name, block in ARCHITECTURES.items():
                for seed in args.seeds:
                    start = time.perf_counter()
                    test, search = finetune(study, teacher, splits, block, seed)
                    rows.append({"task": task, "architecture": name, "seed": seed,
                                 "test_accuracy": round(test.accuracy, 4), "test_se": round(test.standard_error, 4),
                                 "test_images": test.count, "search_accuracy": round(search.accuracy, 4),
                                 "finetune_s": round(time.perf_counter() - start)})
                    print(rows[-1], flush=True)
            summary += summarise(task, rows)
    for line in summary:
        print(line)
    notes = ("Teacher pretrained with each study's recipe, then each architecture converted from it and fine-tuned "
             "with the nas finetune recipe (budget.finetune_epochs full passes, distillation, the trial's losses); "
             "test accuracy ± 1 binomial SE. Summary: difference of the seed mean from dense's, and the seed-to-seed "
             "spread (max - min), both in units of one test SE at dense's accuracy. Teachers: "
             + "; ".join(f"{task}: {t}" for task, t in teachers.items()))
    write("task-separation", rows, notes, {"teachers": teachers, "summary": summary})


if __name__ == "__main__":
    main()
