"""Where the project keeps what it builds on this machine, and the file lock its processes share. No TVM import.

``$SHIFTADD_CACHE`` is read here and nowhere else: it moves the kernel cache (default ``~/.cache/shiftadd-nas/tvm``);
the locks of the search workers live in its ``locks/`` folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """Root of the kernel cache: ``$SHIFTADD_CACHE`` or ``~/.cache/shiftadd-nas/tvm``."""
    env = os.environ.get("SHIFTADD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "shiftadd-nas" / "tvm"


def lock_dir() -> Path:
    """Where processes of this machine keep the lock files they share."""
    return cache_dir() / "locks"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (created with its folder) across processes of this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
