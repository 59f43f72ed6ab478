"""Compilation targets, named the way users name them: ``cpu`` (this machine), ``cuda`` or a TVM target dict/JSON.

TVM 0.27 takes targets as dicts (``{"kind": "llvm", "mcpu": ..., "num-cores": N}``); it rejects ``-mcpu=native``
and the old string form, so the host CPU is detected here and written out explicitly.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .host import cpu_threads, host_cpu
from .lazy import lazy_import
from .spec import DEFAULT_CUDA_ARCH, KernelError

tvm = lazy_import("tvm")


def cpu_target(num_cores: int | None = None, mcpu: str | None = None) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu or host_cpu(), "num-cores": num_cores or cpu_threads()})


def missing_features(target: tvm.target.Target) -> list[str]:
    """The CPU features an LLVM ``target`` compiles for that this machine's CPU lacks (an AVX-512 kernel on a Zen 3):
    code built for them stops the process with an illegal instruction. Empty for this CPU and for other kinds."""
    if target.kind.name != "llvm":
        return []
    host = set(tvm.target.codegen.llvm_get_cpu_features(cpu_target()))
    return sorted(set(tvm.target.codegen.llvm_get_cpu_features(target)) - host)


def cuda_target(arch: str = DEFAULT_CUDA_ARCH) -> tvm.target.Target:
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host=cpu_target())


def resolve(target: str | dict[str, Any] | tvm.target.Target) -> tvm.target.Target:
    """``"cpu"``, ``"cuda"``, ``"cuda:sm_90"``, a target dict, its JSON text, or a Target."""
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, dict):
        return tvm.target.Target(target)
    text = str(target).strip()
    if text == "cpu":
        return cpu_target()
    if text == "cuda" or text.startswith("cuda:"):
        return cuda_target(text.split(":", 1)[1] if ":" in text else DEFAULT_CUDA_ARCH)
    if text.startswith("{"):
        try:
            return tvm.target.Target(json.loads(text))
        except (ValueError, RuntimeError) as e:  # JSONDecodeError is a ValueError; TVM raises RuntimeError
            raise KernelError("target", f"{text!r} is not a valid TVM target: {e}") from None
    raise KernelError("target", f"unknown target {text!r}: use 'cpu', 'cuda', 'cuda:sm_XX' or a TVM target dict as JSON")


def is_cuda(target: tvm.target.Target) -> bool:
    return target.kind.name == "cuda"


def describe(target: tvm.target.Target) -> dict[str, Any]:
    """The target as a plain dict (JSON-able), stable across runs."""
    return json.loads(str(target))


def fingerprint(target: tvm.target.Target) -> str:
    """Short hash of the target: kernels tuned for one target live in their own cache folder."""
    text = json.dumps(describe(target), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
