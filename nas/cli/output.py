"""Where the ``nas`` command writes: one console for every command, and progress a log file can follow.

Written to a log file or a CI log (no terminal), rich draws no progress bar and wraps tables at 80 columns; so the
console is wider there (``LOG_WIDTH``, unless ``COLUMNS`` says otherwise), and a long step says how far it is in a
line at a steady pace instead (:class:`PacedLines`).
"""

from __future__ import annotations

import os
import time

from rich.console import Console

LINE_EVERY_S = 30.0
LOG_WIDTH = 160


def _console() -> Console:
    terminal = Console()
    return terminal if terminal.is_terminal or "COLUMNS" in os.environ else Console(width=LOG_WIDTH)


console = _console()


class PacedLines:
    """``update(done, total, text)`` as a bar would be updated; prints ``<label> done/total text`` at most every
    ``every_s`` seconds, and at the end, when ``console`` is not a terminal (nothing on a terminal: the bar shows it)."""

    def __init__(self, console: Console, label: str, every_s: float = LINE_EVERY_S) -> None:
        self.console, self.label, self.every_s = console, label, every_s
        self.last = time.monotonic()

    def update(self, done: int, total: int | None, text: str = "") -> None:
        if self.console.is_terminal:
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or (total is not None and done >= total):
            self.console.print(f"{self.label} {done}/{total if total is not None else '?'} {text}".rstrip(),
                               highlight=False)
            self.last = now
