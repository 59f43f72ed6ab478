"""The one schema helper every reader of a user's file uses (the study, its latency and energy settings, ArchConfig
and the search space): a mapping's keys, a choice, a number in range, each refused with a
:class:`~search_spaces.errors.ConfigError` that names the key path and the value."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from .errors import ConfigError


def check_keys(data: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> Mapping:
    """``data`` as a mapping with every ``required`` key and no key outside ``required + optional``."""
    if not isinstance(data, Mapping):
        raise ConfigError(where, f"expected a mapping, got {type(data).__name__} {data!r}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join(required + optional)
        raise ConfigError(where, f"unknown key(s) {', '.join(map(repr, unknown))} (allowed: {allowed})")
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(where, f"missing key(s) {', '.join(map(repr, missing))}")
    return data


def check_choice(value: Any, where: str, choices: Collection[str], what: str) -> str:
    """``value`` as one of ``choices`` (``what`` names the kind in the message)."""
    if value not in choices:
        raise ConfigError(where, f"unknown {what} {value!r} (choose from {', '.join(choices)})")
    return value


def check_number(value: Any, where: str, *, integer: bool = False, minimum: float | None = None,
                 above: float | None = None, maximum: float | None = None, optional: bool = False) -> Any:
    """``value`` as a finite number (``integer``: an int; never a bool) within the bounds given; None where
    ``optional``. Returns an int for ``integer``, else a float."""
    if value is None and optional:
        return None
    kind = "an integer" if integer else "a number"
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    ok = ok and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (above is None or value > above)
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        bounds = [f">= {minimum}" if minimum is not None else "", f"> {above}" if above is not None else "",
                  f"<= {maximum}" if maximum is not None else ""]
        range_text = " and ".join(b for b in bounds if b)
        raise ConfigError(where, f"expected {kind}{' ' + range_text if range_text else ''}"
                                 f"{' or null' if optional else ''}, got {value!r}")
    return value if integer else float(value)


__all__ = ["check_choice", "check_keys", "check_number"]
