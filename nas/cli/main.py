"""The ``nas`` command. Each subcommand is one step of :mod:`nas.pipeline` and can be run alone; a command parses its
arguments, calls the step and prints the result.

The product's errors (:mod:`search_spaces.errors`: bad input, an environment that cannot serve the work, a step run
before the one it needs) print one line naming where to act (file and key, flag, path or URL) and exit with status 2;
they never print a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rich.table import Table

from search_spaces import ArchConfig, build_model
from search_spaces.errors import ShiftAddError
from search_spaces.reparam import weight_counts

from ..process import quiet_optuna_logging
from ..search.provenance import named_study
from ..study import Study
from . import kernel_commands, latency_commands, run_commands, search_commands, training_commands
from .output import console


def cmd_sample(args: argparse.Namespace) -> int:
    """Draw architectures from a study's space, build each on the study's model and print its choices."""
    space = Study.load(args.study).space
    rng = np.random.default_rng(args.seed)
    dense_total = weight_counts(build_model(ArchConfig.dense(space.model, space.depth))).total
    console.print(
        f"[bold]{args.study}[/]: {space.model.name} with {space.depth} blocks, "
        f"{space.size():,} architectures in the space"
    )
    for n in range(args.num):
        config = space.sample(rng)
        model = build_model(config)
        counts = weight_counts(model)
        total, dense, shift = counts.total, counts.dense_linear, counts.shift_linear
        table = Table(title=f"architecture {config.id}", title_justify="left")
        for column in ("block", "attention", "qkv", "proj", "mlp"):
            table.add_column(column)
        for i, block in enumerate(config.blocks):
            mlp = block.describe().split("mlp=", 1)[1]
            table.add_row(str(i), block.attention, block.qkv, block.proj, mlp)
        console.print(table)
        console.print(
            f"parameters: {total:,} (dense model: {dense_total:,}); "
            f"linear weights as shifts: {shift:,} of {shift + dense:,} ({100 * shift / max(1, shift + dense):.0f} %)"
        )
        if args.out:
            path = config.save(args.out if args.num == 1 else f"{args.out.rsplit('.', 1)[0]}-{n}.yaml")
            console.print(f"wrote {path}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Validate an ArchConfig file and print it (after the study it names, or --study, whose plugins may register
    the primitives it uses)."""

    study_file = args.study or named_study(args.config)
    if study_file is not None and (args.study or Path(study_file).is_file()):
        Study.load(study_file)
    config = ArchConfig.load(args.config)
    console.print(f"[bold]{args.config}[/]: architecture {config.id} of {config.model.name}")
    for line in config.describe():
        console.print(f"  {line}")
    return 0


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "a non-negative integer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas",
        description=(
            "Search which layers of a Vision Transformer use multiplication-free primitives "
            "(additive attention, shift layers, MoE MLPs), guided by a TVM-measured latency model."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int] | None, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        if handler is not None:
            sub.set_defaults(handler=handler)
        return sub

    sample = add("sample", cmd_sample, "draw architectures from a study's search space and print their choices")
    sample.add_argument("study", help="study file (YAML), e.g. studies/quickstart.yaml")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    sample.add_argument("--num", type=positive_int, default=1, help="how many architectures to draw (default: 1)")
    sample.add_argument("--out", help="write the drawn ArchConfig to this YAML file")

    show = add("show", cmd_show, "validate an architecture (ArchConfig) file and print its per-block choices")
    show.add_argument("config", help="ArchConfig file (YAML or JSON)")
    show.add_argument("--study", help="study file whose plugins to load first (default: the one an exported config "
                                      "names, when it is there)")

    kernel_commands.add_commands(add, positive_int, non_negative_int)
    latency_commands.add_commands(add, positive_int, non_negative_int)
    training_commands.add_commands(add, positive_int, non_negative_int)
    search_commands.add_commands(add, positive_int, non_negative_int)
    run_commands.add_commands(add, positive_int, non_negative_int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_optuna_logging()
    try:
        return args.handler(args)
    except ShiftAddError as e:  # bad input, environment or state: one line saying what and where
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was stored stays (trials, measurements, checkpoints); run the same command again to "
              "continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
