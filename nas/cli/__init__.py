"""The ``nas`` command line: parsing and printing only; the work is :mod:`nas.pipeline`'s (``main`` is the entry
point, ``python -m nas.cli`` the same)."""

from .main import main

__all__ = ["main"]
