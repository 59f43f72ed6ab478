"""``docs/cli.md``, written from the command's parsers: every command, its usage and each of its flags with the help
``--help`` prints, so the page cannot drift from the code (``tests/test_docs.py`` fails when it is stale).

    python -m nas.cli.reference > docs/cli.md
"""

from __future__ import annotations

import argparse

from .main import build_parser

INTRO = """\
# The `nas` command

`nas --help` lists the commands; `nas COMMAND --help` explains each. This page is written from those parsers
(`python -m nas.cli.reference > docs/cli.md`; a test fails when it is stale).

Errors are one line with exit status 2, never a traceback: `error: FILE: KEY: what is wrong` for your input, and the
same form, naming the flag, path or database URL to look at, for a machine that cannot serve the work (a full disk, a
database that will not open, a Ray cluster that cannot be joined) or a step run before the one it needs (`nas export`
before any trial finished). An interrupted command (Ctrl-C) exits 130 and keeps what it stored.
"""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands by name, in the order they were added (argparse keeps them in its subparsers action)."""
    for action in parser._actions:  # noqa: SLF001 - argparse has no public view of its subparsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def _usage(parser: argparse.ArgumentParser) -> str:
    """The usage line, unwrapped (argparse wraps it to the terminal's width)."""
    formatter = argparse.HelpFormatter(parser.prog, width=10_000)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)  # noqa: SLF001
    return " ".join(formatter.format_help().split()).removeprefix("usage: ")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar or action.dest
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or ("{" + ",".join(map(str, action.choices)) + "}" if action.choices
                                 else action.dest.upper())
    return ", ".join(f"{option} {metavar}" for option in action.option_strings)


def _section(name: str, parser: argparse.ArgumentParser, level: int = 2) -> list[str]:
    lines = [f"{'#' * level} `{name}`", "", _cell(parser.description or ""), "", "```", _usage(parser), "```", ""]
    rows = [action for action in parser._actions  # noqa: SLF001
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)  # noqa: SLF001
            and action.help != argparse.SUPPRESS]
    if rows:
        lines += ["| argument | what it does |", "| --- | --- |"]
        lines += [f"| `{_cell(_flag(action))}` | {_cell(action.help or '')} |" for action in rows]
        lines.append("")
    for sub_name, sub in _subcommands(parser).items():
        lines += _section(f"{name} {sub_name}", sub, level + 1)
    return lines


def markdown() -> str:
    """The whole page: the commands at a glance, then each with its usage and flags."""
    parser = build_parser()
    commands = _subcommands(parser)
    lines = [INTRO, "| command | what it does |", "| --- | --- |"]
    lines += [f"| [`nas {name}`](#nas-{name}) | {_cell(sub.description or '')} |" for name, sub in commands.items()]
    lines.append("")
    for name, sub in commands.items():
        lines += _section(f"nas {name}", sub)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
