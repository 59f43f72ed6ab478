"""``nas pretrain``, ``supernet`` and ``finetune``: each parses its arguments into a :mod:`nas.pipeline` step's options,
calls it and prints the result."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import pipeline
from ..study import Study
from .common import BarView, device_arg, load_study, study_arg
from .output import console


class PretrainView(BarView):
    def __init__(self, study: Study) -> None:
        super().__init__("pretraining the dense teacher", study.budget.pretrain_epochs,
                         f"another process is training this teacher ({study.teacher_path}): waiting for it, then "
                         "using its file")

    def on_epoch(self, epoch: int, loss: float, accuracy: float) -> None:
        text = f"loss {loss:.3f}, search accuracy {accuracy:.3f}"
        self.progress.update(self.task, advance=1, description=text)
        self.lines.update(epoch + 1, self.total, text)


def print_pretrain(result) -> None:
    if result.cached:
        console.print(f"teacher already trained for this study: {result.path} (search accuracy "
                      f"{result.search_accuracy:.3f}); --force retrains")
    else:
        console.print(f"trained the teacher for {result.epochs} epochs in {result.seconds:.0f} s: search accuracy "
                      f"{result.search_accuracy:.3f}; wrote {result.path}")


def show_pretrain(study: Study, force: bool = False) -> None:
    """Pretrain the teacher with a progress bar, and say what was done."""
    with PretrainView(study) as view:
        result = pipeline.pretrain(study, force=force, on_epoch=view.on_epoch, on_wait=view.on_wait)
    print_pretrain(result)


def cmd_pretrain(args: argparse.Namespace) -> int:
    show_pretrain(load_study(args), force=args.force)
    return 0


class SupernetView(BarView):
    def __init__(self, study: Study) -> None:
        super().__init__("training the supernet", study.evaluation.supernet_steps,
                         f"another process is training this supernet ({study.supernet_path}): waiting for it, then "
                         "using its file")

    def on_step(self, step: int, total: int, loss: float) -> None:
        self.progress.update(self.task, completed=step, description=f"loss {loss:.3f}")
        self.lines.update(step, total, f"loss {loss:.3f}")


def print_supernet(result) -> None:
    if result.set_aside:
        console.print(f"[yellow]not used:[/] {result.set_aside}", highlight=False)
    if result.cached:
        console.print(f"supernet already trained for this study: {result.path}; --force retrains")
        return
    resumed = f", resumed at step {result.resumed_from}" if result.resumed_from else ""
    console.print(f"trained the supernet for {result.steps} steps in {result.seconds:.0f} s{resumed}; wrote "
                  f"{result.path}")


def show_supernet(study: Study, force: bool = False) -> None:
    """Train the supernet with a progress bar, and say what was done."""
    with SupernetView(study) as view:
        result = pipeline.supernet(study, force=force, on_step=view.on_step, on_wait=view.on_wait)
    print_supernet(result)


def cmd_supernet(args: argparse.Namespace) -> int:
    study = load_study(args)
    if not study.evaluation.supernet:
        console.print(f"[yellow]note:[/] {study.path} scores trials in {study.evaluation.mode} mode; set "
                      "evaluation.mode: supernet for its trials to use this supernet", highlight=False)
    show_supernet(study, force=args.force)
    return 0


class FinetuneView(BarView):
    def __init__(self, job: pipeline.FinetuneJob) -> None:
        super().__init__(f"fine-tuning {job.config.id}", job.epochs)

    def on_epoch(self, epoch: int, accuracy: float) -> None:
        text = f"search acc {accuracy:.3f}"
        self.progress.update(self.task, advance=1, description=text)
        self.lines.update(epoch + 1, self.total, text)


def cmd_finetune(args: argparse.Namespace) -> int:
    job = pipeline.FinetuneJob.of(args.config, args.study, args.epochs, args.device)
    with FinetuneView(job) as view:
        result = pipeline.finetune(job, args.out, measure=not args.no_measure, on_epoch=view.on_epoch)
    line = (f"test accuracy {result.test_accuracy:.4f} ± {result.test_se:.4f} (1 SE), search accuracy "
            f"{result.search_accuracy:.4f}, predicted latency {result.predicted_ms:.3f} ms")
    if result.measured_ms is not None:
        line += f", measured {result.measured_ms:.3f} ms on the kernels"
    console.print(line)
    console.print(f"wrote {result.weights}, {args.out / 'arch.yaml'}, {args.out / 'result.json'}")
    console.print(f"rebuild: nas.training.checkpoints.load_model('{args.out / 'arch.yaml'}', '{result.weights}')")
    return 0


def add_commands(add, positive_int, non_negative_int) -> None:
    pretrain = add("pretrain", cmd_pretrain, "train the dense teacher on the study's data (cached next to the study)")
    study_arg(pretrain, storage=False)
    device_arg(pretrain)
    pretrain.add_argument("--force", action="store_true", help="retrain even if the teacher file is up to date")

    supernet = add("supernet", cmd_supernet, "train the study's weight-sharing supernet, from which trials inherit "
                                             "their weights in evaluation.mode: supernet (cached next to the study; "
                                             "a killed run resumes)")
    study_arg(supernet, storage=False)
    device_arg(supernet)
    supernet.add_argument("--force", action="store_true", help="retrain even if the supernet file is up to date")

    finetune = add("finetune", cmd_finetune, "fine-tune an exported architecture from the teacher and save it")
    finetune.add_argument("config", type=Path, help="ArchConfig file written by nas export")
    finetune.add_argument("--study", type=Path, help="study file (default: the one the export names)")
    finetune.add_argument("--epochs", type=positive_int, help="full passes over the data (default: the study's "
                                                              "budget.finetune_epochs)")
    finetune.add_argument("--out", type=Path, required=True, help="folder for model.safetensors, arch.yaml, "
                                                                   "result.json")
    finetune.add_argument("--no-measure", action="store_true", help="skip timing the model on the kernels")
    device_arg(finetune)
