"""Before work starts: the folders it will write to exist, are writable and have room, so a full disk or a read-only
study folder is one clear message up front, not a failure hours in with a half-written file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from kernels.cache import file_lock
from search_spaces.errors import ResourceError

MIN_FREE_MB = 100


def ensure_writable(folder: str | Path, where: str, need_mb: int = MIN_FREE_MB) -> Path:
    """Create ``folder`` if needed and check it is writable with ``need_mb`` free; ``where`` names the setting."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResourceError(where, f"cannot create folder {folder}: {e.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ResourceError(where, f"folder {folder} is not writable")
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < need_mb:
        raise ResourceError(where, f"only {free_mb:.0f} MB free on the disk of {folder} (need at least {need_mb} MB)")
    return folder


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL; None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


def ensure_database_writable(url: str, where: str) -> None:
    """A SQLite database's folder must take writes (a server database answers for itself)."""
    path = sqlite_file(url)
    if path is not None:
        ensure_writable(path.parent, where)


def lock_beside(path: Path, on_wait: Callable[[], None] | None = None) -> AbstractContextManager[None]:
    """One process at a time makes ``path`` (a teacher, a supernet): it holds ``<path>.lock`` while it checks whether
    the file is there and up to date and, if not, trains it; a second process (another driver on the same study)
    waits, calling ``on_wait()`` first, then finds the file made instead of training its own."""
    return file_lock(path.with_name(path.name + ".lock"), on_wait)
