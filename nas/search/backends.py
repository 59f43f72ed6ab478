"""The search backends by name (``--backend``, ``nas.pipeline.search``), each a
:class:`~nas.search.driver.SearchDriver` imported when it is asked for: Ray is heavy, and optional where a study never
uses it."""

from __future__ import annotations

from importlib import import_module

from search_spaces.errors import ConfigError

from .driver import SearchDriver

# name -> "module:class" of its driver, the module relative to this package
BACKENDS: dict[str, str] = {"optuna": ".optuna_backend:OptunaDriver", "ray": ".ray_backend:RayDriver"}


def get_driver(name: str) -> SearchDriver:
    """The driver called ``name`` (a key of :data:`BACKENDS`)."""
    if name not in BACKENDS:
        raise ConfigError("--backend", f"unknown search backend {name!r} (choose from {', '.join(BACKENDS)})")
    module, cls = BACKENDS[name].split(":")
    return getattr(import_module(module, __package__), cls)()


__all__ = ["BACKENDS", "get_driver"]
