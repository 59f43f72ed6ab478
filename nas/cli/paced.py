"""Progress for a log file or a CI log: where the output is not a terminal, rich draws no bar, so a long step says how
far it is in a line at a steady pace instead (and once when it is done)."""

from __future__ import annotations

import time

from rich.console import Console

LINE_EVERY_S = 30.0


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
