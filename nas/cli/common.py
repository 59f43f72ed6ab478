"""What the command modules share: the study an invocation names, its common arguments, a progress bar view."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..study import Study
from .output import PacedLines, console


def load_study(args: argparse.Namespace) -> Study:
    """The study of ``args.study`` (with ``--storage`` and ``--device`` where the command has them)."""
    return Study.load(args.study, storage=getattr(args, "storage", None)).on_device(getattr(args, "device", None))


def study_arg(parser: argparse.ArgumentParser, storage: bool = True) -> None:
    parser.add_argument("study", type=Path, help="study file (YAML), e.g. studies/quickstart.yaml")
    if storage:
        parser.add_argument("--storage", help="Optuna storage URL (default: the study's, "
                                              "else sqlite:///<study folder>/<name>.db)")


def device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", metavar="auto|cpu|cuda|cuda:N",
                        help="where to train (default: the study's train.device, auto: CUDA when there is one)")


class BarView:
    """A progress bar over a known count, as a context, with :class:`PacedLines` when the output is not a terminal;
    ``wait_line`` is said when another process holds the file the step would write."""

    def __init__(self, label: str, total: int, wait_line: str = "") -> None:
        self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=console)
        self.total, self.wait_line = total, wait_line
        self.lines = PacedLines(self.progress.console, label)

    def __enter__(self) -> "BarView":
        self.progress.__enter__()
        self.task = self.progress.add_task("", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def on_wait(self) -> None:
        self.progress.console.print(self.wait_line)
