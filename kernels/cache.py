"""Where the project keeps what it builds on this machine, and the file lock its processes share. No TVM import.

``$SHIFTADD_CACHE`` is read here and nowhere else: it moves the kernel cache (default ``~/.cache/shiftadd-nas/tvm``);
the locks of the search workers live in its ``locks/`` folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path


def cache_dir() -> Path:
    """Root of the kernel cache: ``$SHIFTADD_CACHE`` or ``~/.cache/shiftadd-nas/tvm``."""
    env = os.environ.get("SHIFTADD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "shiftadd-nas" / "tvm"


def lock_dir() -> Path:
    """Where processes of this machine keep the lock files they share."""
    return cache_dir() / "locks"


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (created with its folder) across processes of this machine (and of
    machines sharing the folder, where the file system supports ``flock``). ``on_wait()`` is called once if another
    process holds it, before waiting for it. A process that dies releases its locks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks (a compiled kernel library can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
