"""Importing TVM's tensor intrinsics in seconds instead of about a minute.

``import tvm.s_tir.tensor_intrin`` (which MetaSchedule's tuning context and its builder workers do) parses ~500
TVMScript functions, and TVMScript's ``@prim_func`` decorator calls ``inspect.stack()`` for each. ``inspect.stack``
resolves the module of every frame's file by scanning ``sys.modules``, so the import takes ~60 s on these machines.
The parser only reads ``frame``, ``lineno`` and ``code_context`` of those frames, so during that one import we swap in
a frame walker that reads source lines from ``linecache`` directly. Nothing else in TVM is touched, and the original
``inspect.stack`` is restored afterwards.

This is the only place that works around TVM's import cost; everything that tunes or builds calls
:func:`import_tensor_intrinsics` (MetaSchedule's builder and runner workers through their ``initializer``).
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import sys
from collections.abc import Iterator


def _cheap_stack(context: int = 1) -> list[inspect.FrameInfo]:
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        lineno = frame.f_lineno
        line = linecache.getline(filename, lineno, frame.f_globals)
        frames.append(inspect.FrameInfo(frame, filename, lineno, frame.f_code.co_name, [line] if line else None, 0))
        frame = frame.f_back
    return frames


@contextlib.contextmanager
def _fast_inspect_stack() -> Iterator[None]:
    original = inspect.stack
    inspect.stack = _cheap_stack
    try:
        yield
    finally:
        inspect.stack = original


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (registers the tensor intrinsics MetaSchedule may use), fast."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    with _fast_inspect_stack():
        import tvm.s_tir.tensor_intrin  # noqa: F401  (here, not lazy_import: inside the fast stack it must run)
