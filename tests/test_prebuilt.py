"""Compile here, run there: kernels cross-compiled into one library with a manifest (CUDA without a GPU), refused in
one line where they do not match, and run with the TVM runtime alone (TVM's compiler library hidden, Ray hidden)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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
sys.modules["ray"] = None  # not installed where the runtime alone is: `import ray` raises ImportError
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
checks, study = Path(sys.argv[1]), Path(sys.argv[2])
assert main(["kernels", "check", "--prebuilt", str(checks)]) == 0

torch.manual_seed(0)
layer = ShiftLinear.from_dense(nn.Linear(40, 24))
kernels = KernelSet(prebuilt=PrebuiltKernels.load(checks))
fast = to_kernels(nn.Sequential(layer), kernels)
x = torch.randn(3, 11, 40)
assert torch.equal(fast(x), layer.forward_int(x))
codes, values = (torch.rand(2, 3, 17, 8) < 0.5).float(), torch.randn(2, 3, 8, 5)
torch.testing.assert_close(KernelBinaryProduct(kernels)(codes, values), codes @ values, rtol=1e-5, atol=1e-5)
assert sorted(s.key for s in kernels.specs) == ["matadd-binary_real-float32-b6x17x8x5", "matshift-xor-int32-33x40x24"]

# the steps a GPU machine runs, on the prebuilt kernels: profile, fit, pretrain, a search, a measured trial
for step in (["profile"], ["fit-latency"], ["pretrain"], ["search"], ["latency", "--config", sys.argv[3], "--measure"]):
    assert main([step[0], str(study), *step[1:]]) == 0, step
from latency_model.settings import LatencySettings
assert LatencySettings(target="cuda:sm_90").resolved().device == "cuda-sm_90"  # named without TVM's compiler
assert not [m for m in sys.modules if m.startswith("ray.")] and "tvm_compiler" not in tvm.base._LOADED_LIBS
print("runtime-only: ok")
"""


def test_the_tvm_runtime_alone_checks_prebuilt_kernels_runs_models_on_them_and_searches(tmp_path):
    from nas.cli import main
    from nas.study import Study
    from tiny import base_study, write_study

    checks = tmp_path / "checks"
    build(list(all_specs()) + [SHIFT, PRODUCT], "cpu", checks)
    data = base_study(tmp_path)
    data["latency"] = {**data["latency"], "prebuilt": "prebuilt", "device": "cpu-prebuilt"}
    study = write_study(tmp_path / "tiny.yaml", data)
    assert main(["kernels", "build", str(study), "--out", str(tmp_path / "prebuilt")]) == 0  # here: the compiler

    site = _runtime_only_tvm(tmp_path / "site")
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
           "SHIFTADD_CACHE": str(tmp_path / "no-kernel-cache")}
    config = tmp_path / "arch.json"
    config.write_text(Study.load(study).space.sample(np.random.default_rng(0)).to_json())
    run = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(checks), str(study), str(config)], env=env,
                         cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "runtime-only: ok" in run.stdout
    assert f"all {len(list(all_specs()))} kernel checks passed" in run.stdout
    assert not (tmp_path / "no-kernel-cache").exists() or not any((tmp_path / "no-kernel-cache").rglob("*.so"))



def test_the_device_script_runs_every_step_it_can_on_the_cpu(tmp_path):
    """bench/gpu/run.sh --dry-run: the bundle prepare.sh makes (runtime-only TVM, prebuilt kernels; CPU ones here),
    the kernel checks, then profile, fit, pretrain, supernet, a search, kernels against torch and the predictor's
    held-out check, all with the TVM runtime alone, written as records under $OUT."""
    from nas.cli import main

    bundle = _runtime_only_tvm(tmp_path / "bundle")
    assert main(["kernels", "build", str(ROOT / "studies" / "quickstart.yaml"),
                 "--out", str(bundle / "kernels" / "quickstart")]) == 0
    assert main(["kernels", "build", "--checks", "--out", str(bundle / "kernels" / "checks")]) == 0
    out = tmp_path / "out"
    env = {**os.environ, "GPU_BUNDLE": str(bundle), "PYTHON": sys.executable, "OUT": str(out),
           "GPU_BENCH_ARGS": "--studies quickstart --trials 3"}
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "run.sh"), "--dry-run"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=1200)
    log = (out / "gpu-bench.log").read_text() if (out / "gpu-bench.log").exists() else ""
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + log[-3000:]
    assert "runtime only True ['tvm_runtime']" in (out / "env.txt").read_text()
    assert f"all {len(list(all_specs()))} kernel checks passed" in (out / "kernels-check.txt").read_text()
    kernels = json.loads((out / "gpu-kernels-dry.json").read_text())["rows"]
    assert kernels and all(r["tvm_ms"] > 0 and r["torch_fp32_ms"] > 0 for r in kernels)
    assert {r["kernel"] for r in kernels} >= {"shiftlinear/i16", "additive/lut4"}  # the quick-start: shift16
    summary = json.loads((out / "gpu-predictor-dry.json").read_text())["summary"][0]
    assert summary["held_out"] == 3 and summary["paper_over_dense"] > 0
    training = json.loads((out / "gpu-training-dry.json").read_text())["rows"][0]
    assert training["trials"] == 3 and training["search_s"] > 0
    assert not list(out.rglob("*.safetensors"))  # weights stay on the machine: records and tables come back


NO_TVM = r"""
import sys
for name in ("tvm", "tvm_ffi", "ray"):  # not installed: `import tvm` raises ImportError
    sys.modules[name] = None
from pathlib import Path
from nas.cli import main
from nas.study import Study

study = Path(sys.argv[1])
assert main(["validate", str(study)]) == 0
assert main(["pretrain", str(study)]) == 0
assert Study.load(study).latency.device == ""  # a CPU is named through TVM once: unnamed here, which training needs not
print("no TVM: ok")
"""


def test_training_needs_no_tvm_and_no_ray(tmp_path):
    from tiny import base_study, write_study

    study = write_study(tmp_path / "tiny.yaml", base_study(tmp_path))
    # a machine TVM never named (no remembered CPU name in its kernel cache)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHIFTADD_CACHE": str(tmp_path / "kernel-cache")}
    run = subprocess.run([sys.executable, "-c", NO_TVM, str(study)], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "no TVM: ok" in run.stdout and (tmp_path / "tiny-teacher.safetensors").is_file()


def test_the_device_script_names_a_wheel_that_did_not_travel_before_any_work(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "kernels" / "checks").mkdir(parents=True)
    (bundle / "wheels").mkdir()
    (bundle / "wheels" / "REQUIRED").write_text("optuna\nsqlalchemy\n")
    (bundle / "wheels" / "optuna-5.1.0-py3-none-any.whl").write_bytes(b"")
    env = {**os.environ, "GPU_BUNDLE": str(bundle), "OUT": str(tmp_path / "out")}
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "run.sh")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1
    assert "the wheel of sqlalchemy is missing" in run.stderr and "Traceback" not in run.stderr
    assert not (bundle / "site").exists()  # nothing was installed
