"""This machine's CPU as the kernels' targets name it, without importing TVM where it was named before.

A CPU device is named after LLVM's name for the host CPU (``cpu-znver4-2c``), which only LLVM (through TVM) knows.
Every command that reads a study names its device, so the name is remembered per machine in the kernel cache
(``host-cpu.json``, keyed by the CPU's model and feature flags and TVM's version): only the first process pays TVM's
import (seconds), and training and search workers load a study without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from .cache import cache_dir
from .lazy import lazy_import

tvm = lazy_import("tvm")

MEMO = "host-cpu.json"


def cpu_threads() -> int:
    """Threads TVM's runtime uses: ``TVM_NUM_THREADS`` if set, else the cores this process may run on."""
    env = os.environ.get("TVM_NUM_THREADS")
    if env:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def host_cpu() -> str:
    """LLVM's name for this machine's CPU, e.g. ``znver4``, asked of TVM (which loads here: the one heavy step);
    ImportError where TVM is missing or is the runtime alone."""
    try:
        return str(tvm.target.codegen.llvm_get_system_cpu())
    except AttributeError as e:  # the TVM runtime alone (a prebuilt-kernels machine): no LLVM to ask
        raise ImportError(f"this TVM has no LLVM to name the CPU with ({e})") from e


def _machine_key() -> str:
    """What LLVM's host CPU name depends on: the CPU's model and feature flags (``/proc/cpuinfo``), the architecture,
    and the TVM (LLVM) that names it."""
    described = [platform.machine(), platform.processor()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "cpu family", "model\t")):
                described.append(line)
            elif not line.strip() and len(described) > 2:
                break  # the first processor describes them all
    except OSError:
        pass
    try:
        described.append(metadata.version("apache-tvm"))
    except metadata.PackageNotFoundError:
        pass
    return hashlib.sha256("\n".join(described).encode()).hexdigest()[:16]


def cpu_name() -> str:
    """LLVM's name for this machine's CPU (e.g. ``znver4``): remembered, or asked of TVM and remembered."""
    path = cache_dir() / MEMO
    key = _machine_key()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return known[key]
    name = host_cpu()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**(known if isinstance(known, dict) else {}), key: name}, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: named again next time
    return name


__all__ = ["cpu_name", "cpu_threads", "host_cpu"]
