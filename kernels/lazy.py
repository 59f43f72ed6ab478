"""The one way the project imports a heavy optional library: a module object that imports on first use.

TVM's compiler, Ray, optuna-dashboard and matplotlib (and scikit-learn's datasets, scipy's optimizers) take seconds
to import and are needed only by the steps that compile, distribute, publish, plot, load the digits or calibrate. Modules that use them bind the library at their top with :func:`lazy_import`
(``tvm = lazy_import("tvm")``), so that importing the module costs nothing and the import happens on the first
attribute read (``tvm.te.compute``). Training, search and loading a study therefore never import them
(``tests/test_study.py`` checks). When the library is missing, that first read raises one ``ImportError`` naming the
library and how to install it, the way Optuna's ``try_import`` does.

The project's own modules are imported at the top of a module, plainly; this helper is for the four libraries in
:data:`INSTALL_HINTS` only.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from typing import Any

INSTALL_HINTS = {
    "tvm": "the kernels need apache-tvm: `make install` installs the version in pyproject.toml",
    "tvm_ffi": "the kernels need apache-tvm (which brings tvm_ffi): `make install`",
    "ray": "the Ray backend needs ray[tune]: `make install`",
    "optuna_dashboard": "the dashboard notes need optuna-dashboard: `make install`",
    "matplotlib": "the report's plots need matplotlib: `make install`",
    "sklearn": "the bundled digits data needs scikit-learn: `make install`",
    "scipy": "the predictor's calibration needs scipy: `make install`",
}


class LazyModule(types.ModuleType):
    """Stands for the module ``name`` until an attribute is read, then imports it and delegates to it."""

    def __init__(self, name: str, before: Callable[[], None] | None = None) -> None:
        super().__init__(name)
        self.__dict__["_lazy_module"] = None
        self.__dict__["_lazy_before"] = before

    def _load(self) -> types.ModuleType:
        module = self.__dict__["_lazy_module"]
        if module is None:
            library = self.__name__.split(".")[0]
            try:
                if self.__dict__["_lazy_before"] is not None:
                    self.__dict__["_lazy_before"]()
                module = importlib.import_module(self.__name__)
            except ImportError as error:
                raise ImportError(f"cannot import {self.__name__} ({error}); {INSTALL_HINTS[library]}") from error
            self.__dict__["_lazy_module"] = module
        return module

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._load(), attribute)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_lazy_module"] is not None else "not loaded yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_import(name: str, before: Callable[[], None] | None = None) -> LazyModule:
    """``name`` (a module of one of the libraries in :data:`INSTALL_HINTS`), imported when first used; ``before()``
    runs first (e.g. choosing matplotlib's file-only backend before ``matplotlib.pyplot`` loads)."""
    library = name.split(".")[0]
    if library not in INSTALL_HINTS:
        raise ValueError(f"lazy_import is for the heavy optional libraries {sorted(INSTALL_HINTS)}, not {name!r}")
    return LazyModule(name, before)
