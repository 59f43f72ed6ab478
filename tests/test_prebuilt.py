"""Compile here, run there: kernels cross-compiled into one library with a manifest (CUDA without a GPU), refused in
one line where they do not match, and run with the TVM runtime alone (TVM's compiler library hidden, Ray hidden)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tvm

from kernels import KernelError, KernelSpec
from kernels.check import all_specs
from kernels.prebuilt import LIBRARY, MANIFEST, PrebuiltKernels, build, function_name
from kernels.spec import KernelResourceError

ROOT = Path(__file__).resolve().parent.parent
ONE_SHAPE = ((37, 70, 29),)
SHIFT = KernelSpec("matshift", "xor", 33, 40, 24)  # a ShiftLinear(40, 24) on 3 x 11 tokens
PRODUCT = KernelSpec("matadd", "binary_real", 17, 8, 5, "float32", batch=6)  # (2 images x 3 heads) of 17 x 8 @ 8 x 5


def test_cuda_kernels_are_cross_compiled_without_a_gpu_into_one_library_and_its_manifest(tmp_path):
    specs = list(all_specs(ONE_SHAPE))  # every kernel, variant, dtype and batch form
    manifest = build(specs, "cuda:sm_90", tmp_path)
    assert [k["function"] for k in manifest.kernels] == [function_name(s) for s in specs]
    assert manifest.kind == "cuda" and manifest.arch == "sm_90"
    assert "mcpu" not in manifest.target["host"]  # the launch code is for any x86-64, not this machine's CPU
    library = (tmp_path / LIBRARY).read_bytes()
    assert library[:4] == b"\x7fELF"
    on_disk = json.loads((tmp_path / MANIFEST).read_text())
    assert on_disk["kernels"][0] == {**specs[0].to_dict(), "batch": 1, "function": function_name(specs[0])}
    if not tvm.cuda(0).exist:
        with pytest.raises(KernelResourceError, match="holds CUDA kernels and no CUDA GPU is visible here"):
            PrebuiltKernels.load(tmp_path)


def test_a_library_that_does_not_match_is_refused_in_one_line_before_anything_runs(tmp_path):
    folder = tmp_path / "prebuilt"
    with pytest.raises(KernelError, match="no prebuilt kernels at .* build them with `nas kernels build"):
        PrebuiltKernels.load(folder)
    build([SHIFT], "cpu", folder)
    assert PrebuiltKernels.load(folder, require=[SHIFT]).kernel(SHIFT).spec == SHIFT
    with pytest.raises(KernelError, match=r"lacks 1 kernel\(s\) this run needs \(first: matadd-binary_real"):
        PrebuiltKernels.load(folder, require=[SHIFT, PRODUCT])

    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "code": "0" * 16}))
    with pytest.raises(KernelError, match="built from other kernel code than this checkout's"):
        PrebuiltKernels.load(folder)
    (folder / MANIFEST).write_text(json.dumps({**manifest, "format": "0"}))
    with pytest.raises(KernelError, match="of format '0'"):
        PrebuiltKernels.load(folder)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with (folder / LIBRARY).open("ab") as f:  # an interrupted copy, an edit
        f.write(b"\0")
    with pytest.raises(KernelError, match="is not the library its manifest describes"):
        PrebuiltKernels.load(folder)


def _runtime_only_tvm(folder: Path) -> Path:
    """A copy of the installed ``tvm`` package (symbolic links) without its compiler library."""
    package = Path(tvm.__file__).resolve().parent
    farm = folder / "tvm"
    (farm / "lib").mkdir(parents=True)
    for entry in package.iterdir():
        if entry.name != "lib":
            (farm / entry.name).symlink_to(entry)
    runtime = [lib for lib in (package / "lib").iterdir() if lib.name.startswith("libtvm_runtime")]
    assert runtime and not any("compiler" in lib.name for lib in runtime)
    for lib in runtime:
        (farm / "lib" / lib.name).symlink_to(lib)
    return folder


RUNTIME_ONLY = r"""
import sys
class Hidden:  # Ray is not installed where the runtime alone is
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ray":
            raise ImportError(f"{name} is hidden in this test")
sys.meta_path.insert(0, Hidden())
from pathlib import Path
import torch
from torch import nn
import tvm.base
from kernels.prebuilt import PrebuiltKernels
from kernels.runtime import KernelBinaryProduct, KernelSet, to_kernels
from search_spaces.ops import ShiftLinear
from nas.cli import main
from nas.study import Study

assert tvm.base._RUNTIME_ONLY and list(tvm.base._LOADED_LIBS) == ["tvm_runtime"], tvm.base._LOADED_LIBS
folder = Path(sys.argv[1])
assert main(["kernels", "check", "--prebuilt", str(folder)]) == 0

torch.manual_seed(0)
layer = ShiftLinear.from_dense(nn.Linear(40, 24))
kernels = KernelSet(prebuilt=PrebuiltKernels.load(folder))
fast = to_kernels(nn.Sequential(layer), kernels)
x = torch.randn(3, 11, 40)
assert torch.equal(fast(x), layer.forward_int(x))
codes, values = (torch.rand(2, 3, 17, 8) < 0.5).float(), torch.randn(2, 3, 8, 5)
torch.testing.assert_close(KernelBinaryProduct(kernels)(codes, values), codes @ values, rtol=1e-5, atol=1e-5)
assert sorted(s.key for s in kernels.specs) == ["matadd-binary_real-float32-b6x17x8x5", "matshift-xor-int32-33x40x24"]

study = Study.load(Path(sys.argv[2]))  # a GPU study's settings name their device without TVM's compiler
assert study.latency.device == "cuda-sm_90", study.latency.device
assert "ray" not in sys.modules and "tvm_compiler" not in tvm.base._LOADED_LIBS
print("runtime-only: ok")
"""


def test_the_tvm_runtime_alone_checks_prebuilt_kernels_and_runs_a_model_on_them(tmp_path):
    folder = tmp_path / "prebuilt"
    build(list(all_specs()) + [SHIFT, PRODUCT], "cpu", folder)
    study = tmp_path / "gpu.yaml"
    text = (ROOT / "studies" / "quickstart.yaml").read_text()
    study.write_text(text.replace("  target: cpu\n", "  target: cuda:sm_90\n"))
    assert "cuda:sm_90" in study.read_text()
    site = _runtime_only_tvm(tmp_path / "site")
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    run = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(folder), str(study)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "runtime-only: ok" in run.stdout
    assert f"all {len(list(all_specs()))} kernel checks passed" in run.stdout
