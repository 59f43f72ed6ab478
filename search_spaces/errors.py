"""The errors the product raises on purpose: one base, three kinds, each saying what went wrong and where to act.

``where`` is always a place a user can act on: a key path in a file (``source`` names the file; an empty key when the
whole file is at fault, e.g. not valid YAML), a command-line flag or argument, a path or a database URL. The ``nas`` command catches :class:`ShiftAddError` alone, prints its one line and exits with
status 2; anything else that escapes is a bug and keeps its traceback.

- :class:`ConfigError`: the user's input is wrong (a study or config file, a flag, an argument). Fix the input.
- :class:`ResourceError`: the environment cannot serve the work (a full disk, a database that will not open, a Ray
  cluster that cannot be joined, workers that died). Fix the machine; what is stored stays valid.
- :class:`StateError`: a step needs what an earlier step makes (no teacher yet, no measurements, no complete trial,
  a predictor file fitted for another device). Run that step.

A module's own error (``KernelError``, ``PredictorError``, ``LatencyDBError``, ``SearchError``) subclasses one kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

E = TypeVar("E", bound="ShiftAddError")


class ShiftAddError(Exception):
    """Base of the product's errors: ``where`` (a key, flag, path or URL), the message, and the file if any."""

    def __init__(self, where: str, message: str, source: str | None = None) -> None:
        self.where = where
        self.source = source
        self.detail = message
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{where}: {message}" if where else f"{prefix}{message}")

    def in_file(self: E, source: str | Path) -> E:
        """The same error, attributed to a file (its key path is relative to that file)."""
        return _rebuild(type(self), self.where, self.detail, str(source))

    def __reduce__(self):  # pickled across processes (search workers, Ray) whatever a subclass's __init__ takes
        return _rebuild, (type(self), self.where, self.detail, self.source)


def _rebuild(cls: type[E], where: str, message: str, source: str | None) -> E:
    error = cls.__new__(cls)
    ShiftAddError.__init__(error, where, message, source)
    return error


class ConfigError(ShiftAddError, ValueError):
    """The user's input is wrong: a study or config file (file + key path), a flag, an argument."""


class ResourceError(ShiftAddError, RuntimeError):
    """The environment cannot serve the work: disk, database, cluster, worker processes, a device."""


class StateError(ShiftAddError, RuntimeError):
    """A step needs what an earlier step makes (the message names that step's command)."""
