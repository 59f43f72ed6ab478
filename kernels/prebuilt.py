"""Compile here, run there: the kernels a study needs, cross-compiled into one library with a manifest, and loaded
where only the TVM runtime is installed (a GPU machine without TVM's compiler: ``TVM_USE_RUNTIME_LIB=1``).

:func:`build` (needs TVM's compiler; no GPU, even for CUDA: TVM generates the CUDA source and compiles it with NVRTC)
writes into one folder::

    kernels.so      every task as one function, named by its key (:func:`function_name`); untuned schedules: the
                    variant's hand-written CPU schedule where it has one, dlight's GPU rules on CUDA
    manifest.json   written last: the target, the TVM version, the fingerprint of the kernels' code, the library's
                    checksum, and per task its spec and function

:class:`PrebuiltKernels` (the runtime alone) checks all of that before anything runs, and serves kernels as
:class:`kernels.runtime.KernelSet` does, so a model's shift layers and additive attention run on them. Each refusal
is one :class:`~kernels.spec.KernelError` line saying what to rebuild.

Example:
    >>> build(kernel_tasks(space, [1]), "cuda:sm_90", Path("prebuilt"))        # doctest: +SKIP
    >>> kernels = PrebuiltKernels.load(Path("prebuilt"), require=specs)       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import target as targets
from .cache import file_sha256
from .lazy import lazy_import
from .spec import KernelError, KernelResourceError, KernelSpec
from .tuning import default_schedule

tvm = lazy_import("tvm")
libinfo = lazy_import("tvm_ffi.libinfo")

FORMAT = "1"
LIBRARY = "kernels.so"
MANIFEST = "manifest.json"
# the files that define what a kernel computes and how it is scheduled untuned; a library built from other versions
# of them is refused (the runtime cannot regenerate a kernel to compare)
_CODE = ("definition.py", "spec.py", "matmul.py", "matshift.py", "matadd.py", "shiftlinear.py", "additive.py")


def function_name(spec: KernelSpec) -> str:
    """The library symbol of a task (:attr:`KernelSpec.symbol`: its key with C-safe characters)."""
    return spec.symbol


def code_fingerprint() -> str:
    """A hash of this checkout's kernel definitions and hand-written schedules (read as text: no TVM import)."""
    digest = hashlib.sha256()
    for name in _CODE:
        digest.update(name.encode())
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


def _spec_dict(spec: KernelSpec) -> dict[str, Any]:
    return {**spec.to_dict(), "batch": spec.batch, "function": function_name(spec)}


@dataclass(frozen=True)
class Manifest:
    target: dict[str, Any]
    tvm: str
    code: str
    library_sha256: str
    kernels: tuple[dict[str, Any], ...]

    @property
    def kind(self) -> str:
        return str(self.target.get("kind", ""))

    @property
    def arch(self) -> str | None:
        return self.target.get("arch")

    @property
    def functions(self) -> dict[str, dict[str, Any]]:
        return {k["function"]: k for k in self.kernels}

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "target": self.target, "tvm": self.tvm, "code": self.code,
                           "library_sha256": self.library_sha256, "kernels": list(self.kernels)}, indent=1) + "\n"

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        path = folder / MANIFEST
        hint = f"build them with `nas kernels build STUDY --target ... --out {folder}`"
        if not path.is_file():
            raise KernelError("prebuilt", f"no prebuilt kernels at {folder} (no {MANIFEST}): {hint}")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise KernelError("prebuilt", f"{path} is of format {data.get('format')!r}, this version reads "
                                              f"{FORMAT!r}: {hint}")
            return cls(dict(data["target"]), str(data["tvm"]), str(data["code"]), str(data["library_sha256"]),
                       tuple(dict(k) for k in data["kernels"]))
        except (ValueError, KeyError, TypeError) as e:
            raise KernelError("prebuilt", f"{path} is not a readable manifest ({type(e).__name__}: {e}): "
                                          f"{hint}") from None


# ---- on the build machine -------------------------------------------------------------------------------------------
def build(specs: Iterable[KernelSpec], target: Any, folder: Path,
          on_kernel: Callable[[int, int, KernelSpec], None] | None = None) -> Manifest:
    """Cross-compile every task of ``specs`` for ``target`` (``cpu``, ``cuda:sm_90``, a TVM target dict) into
    ``folder``; ``on_kernel(i, n, spec)`` as each is scheduled. No device is needed. The manifest is written last,
    atomically: a folder whose build was interrupted has none, or the previous one, whose checksum then refuses the
    library."""


    target = targets.resolve(target)
    if targets.is_cuda(target):  # the launch code runs on the other machine's CPU: generic x86-64, not this one's
        device = {k: v for k, v in targets.describe(target).items() if k != "host"}
        target = tvm.target.Target(device, host={"kind": "llvm"})
    specs = list({spec.key: spec for spec in specs}.values())
    if not specs:
        raise KernelError("prebuilt", "no kernel tasks to build (the space offers no shift or additive primitive)")
    functions = {}
    for i, spec in enumerate(specs):
        if on_kernel is not None:
            on_kernel(i, len(specs), spec)
        scheduled = default_schedule(spec, target)["main"]
        functions[function_name(spec)] = scheduled.with_attr("global_symbol", function_name(spec))
    try:
        executable = tvm.compile(tvm.IRModule(functions), target=target)
    except Exception as e:  # TVM raises its own error types; the last line of its message names the cause
        raise KernelResourceError("target", f"compiling {len(specs)} kernels for {targets.describe(target)} "
                                            f"failed: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"
                                  ) from None
    folder.mkdir(parents=True, exist_ok=True)
    library = folder / LIBRARY
    tmp = folder / f".{LIBRARY}.{os.getpid()}.tmp.so"
    executable.export_library(str(tmp))
    os.replace(tmp, library)
    manifest = Manifest(targets.describe(target), tvm.__version__, code_fingerprint(), file_sha256(library),
                        tuple(_spec_dict(spec) for spec in specs))
    tmp_manifest = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp_manifest.write_text(manifest.to_json())
    os.replace(tmp_manifest, folder / MANIFEST)
    return manifest


# ---- on the machine that runs them ----------------------------------------------------------------------------------
def _cuda_runtime() -> str | None:
    """Load TVM's CUDA runtime library (the CUDA device and the module loader) beside ``libtvm_runtime``: TVM loads
    it when it registers its CUDA backend, which needs the compiler, so the runtime alone does not. Returns why it
    does not load (no CUDA driver: ``libcuda.so.1``), or None."""

    if "tvm_runtime_cuda" in tvm.base._LOADED_LIBS:
        return None
    folder = Path(tvm.base._LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        tvm.base._LOADED_LIBS["tvm_runtime_cuda"] = libinfo.load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[folder], mode="RTLD_LOCAL")
    except (OSError, RuntimeError) as e:
        return f"TVM's CUDA runtime does not load: {str(e).splitlines()[0]}"
    return None


def _gpu_arch() -> tuple[str | None, str]:
    """``sm_XY`` of the first visible CUDA GPU (asked through the TVM runtime), or None and why not."""

    failed = _cuda_runtime()
    if failed is not None:
        return None, failed
    device = tvm.cuda(0)
    if not device.exist:
        return None, "CUDA_VISIBLE_DEVICES, driver"
    return "sm_" + str(device.compute_version).replace(".", ""), ""


@dataclass(frozen=True)
class PrebuiltKernel:
    """One task of a prebuilt library, called as a :class:`kernels.tuning.CompiledKernel` is."""

    spec: KernelSpec
    function: Any

    def __call__(self, *args) -> None:
        try:
            self.function(*args)
        except (ValueError, TypeError) as e:  # TVM checks every argument; its message names the one at fault
            expected = ", ".join(f"{name}{list(shape)} {dtype}" for name, shape, dtype in self.spec.args())
            raise KernelError("arguments", f"kernel {self.spec.key} takes ({expected}): "
                                           f"{str(e).splitlines()[0]}") from None


class PrebuiltKernels:
    """The kernels of a :func:`build` folder, loaded with the TVM runtime alone: ``get(...)`` as
    :meth:`kernels.runtime.KernelSet.get` (a task the library lacks is a :class:`KernelError` naming it)."""

    def __init__(self, folder: Path, manifest: Manifest, module: Any, device: Any) -> None:
        self.folder, self.manifest, self.module, self.device = folder, manifest, module, device
        self._functions: dict[str, Any] = {}

    @classmethod
    def load(cls, folder: Path, require: Iterable[KernelSpec] = ()) -> "PrebuiltKernels":
        """Check the folder (manifest, checksum, kernel code, the GPU's architecture, every task of ``require``
        present), then load its library."""

        folder = Path(folder)
        manifest = Manifest.read(folder)
        rebuild = f"rebuild with `nas kernels build STUDY --target ... --out {folder}`"
        library = folder / LIBRARY
        if not library.is_file() or file_sha256(library) != manifest.library_sha256:
            raise KernelError("prebuilt", f"{library} is missing or is not the library its manifest describes "
                                          f"(interrupted copy or build): {rebuild}")
        if manifest.code != code_fingerprint():
            raise KernelError("prebuilt", f"{folder} was built from other kernel code than this checkout's "
                                          f"({manifest.code} vs {code_fingerprint()}): {rebuild}")
        if manifest.kind == "cuda":
            arch, why = _gpu_arch()
            if arch is None:
                raise KernelResourceError("prebuilt", f"{folder} holds CUDA kernels and no CUDA GPU is visible here "
                                                      f"({why}): run them on a GPU machine, or build for --target cpu")
            if manifest.arch and manifest.arch != arch:
                raise KernelError("prebuilt", f"{folder} was built for {manifest.arch}, this GPU is {arch}: rebuild "
                                              f"with `nas kernels build STUDY --target cuda:{arch} --out {folder}`")
            device = tvm.cuda(0)
        else:
            device = tvm.cpu(0)
        loaded = cls(folder, manifest, tvm.runtime.load_module(str(library)), device)
        loaded.require(require)
        return loaded

    def require(self, specs: Iterable[KernelSpec]) -> None:
        """Refuse, naming the first, tasks this library lacks (before a run that needs them starts)."""
        functions = self.manifest.functions
        missing = [spec.key for spec in specs if function_name(spec) not in functions]
        if missing:
            raise KernelError("prebuilt", f"{self.folder} lacks {len(missing)} kernel(s) this run needs (first: "
                                          f"{missing[0]}): it was built for another study or batch size; rebuild "
                                          f"with `nas kernels build STUDY --target ... --out {self.folder}`")

    def kernel(self, spec: KernelSpec) -> "PrebuiltKernel":
        """One task, callable as ``kernel(*args)`` with TVM tensors or torch tensors (DLPack)."""
        name = function_name(spec)
        found = self._functions.get(name)
        if found is None:
            if name not in self.manifest.functions:
                raise KernelError("prebuilt", f"{self.folder} has no kernel {spec.key}: rebuild with `nas kernels "
                                              f"build STUDY --target ... --out {self.folder}`")
            found = self._functions[name] = PrebuiltKernel(spec, self.module[name])
        return found

    @property
    def specs(self) -> list[dict[str, Any]]:
        return list(self.manifest.kernels)


__all__ = ["FORMAT", "LIBRARY", "MANIFEST", "Manifest", "PrebuiltKernel", "PrebuiltKernels", "build", "code_fingerprint",
           "function_name"]
