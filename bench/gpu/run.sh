#!/usr/bin/env bash
# On a bare GPU machine (Python 3.12 with its own torch, timm and numpy; no package registry; no TVM compiler), with
# build/gpu from bench/gpu/prepare.sh carried in the working tree: the CUDA checks and benchmarks, in <= 8 minutes,
# everything written under $OUT (records, logs, the environment).
#   1. the carried wheels into build/gpu/site (no index, no dependencies), the TVM runtime alone
#   2. the CUDA tests (tests/test_device.py, tests/test_prebuilt.py's checks of refusals)
#   3. `nas kernels check --prebuilt`: every kernel on CUDA tensors against its numpy reference (bit-exact integers)
#   4. bench/gpu/gpu_bench.py: kernels vs torch (fp32, bf16, int8), profile + fit + the predictor's held-out check on
#      CUDA, the paper's allocation vs dense, pretrain + supernet + a 20-trial search on the GPU
# --dry-run does the same on this (build) machine's CPU with the .venv, the carried runtime-only TVM and the CPU
# kernels of `prepare.sh --dry-run`: every step that can run without a GPU.
#
#   OUT=/tmp/out bash bench/gpu/run.sh [--dry-run]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}
B=${GPU_BUNDLE:-build/gpu}  # what prepare.sh made
DRY=""
if [ "${1:-}" = "--dry-run" ]; then DRY="--dry-run"; fi
mkdir -p "$OUT"
[ -d "$B/kernels/checks" ] || { echo "run.sh: $B is missing: run bench/gpu/prepare.sh on the build machine and carry build/gpu" >&2; exit 1; }
step() { echo "== $*" | tee -a "$OUT/steps.log"; }

if [ -n "$DRY" ]; then
  PY=${PYTHON:-.venv/bin/python}
else
  step "the carried wheels, into $B/site (the image's python3 is itself a venv: no venv over it)"
  [ -f "$B/wheels/REQUIRED" ] || { echo "run.sh: no $B/wheels/REQUIRED: run bench/gpu/prepare.sh" >&2; exit 1; }
  while read -r name; do  # every carried wheel, before any work
    ls "$B"/wheels/"$name"-*.whl > /dev/null 2>&1 \
      || { echo "run.sh: the wheel of $name is missing from $B/wheels: run bench/gpu/prepare.sh again and carry build/gpu" >&2; exit 1; }
  done < "$B/wheels/REQUIRED"
  PY=${PYTHON:-python3}
  "$PY" -m pip install --quiet --no-index --no-deps --upgrade --target "$B/site" "$B"/wheels/*.whl > "$OUT/pip.log" 2>&1 \
    || { echo "run.sh: installing the carried wheels failed (see $OUT/pip.log)" >&2; exit 1; }
fi
B=$(cd "$B" && pwd)
export TVM_USE_RUNTIME_LIB=1 PYTHONPATH="$B:$B/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" BENCH_RESULTS="$OUT"
export SHIFTADD_CACHE="$OUT/kernel-cache"
"$PY" - > "$OUT/env.txt" 2>&1 <<'PYEOF'
import platform, sys, torch, tvm.base
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, round(p.total_memory / 2**30, 1), "GiB", f"sm_{p.major}{p.minor}")
print("tvm", tvm.__file__, "runtime only", tvm.base._RUNTIME_ONLY, list(tvm.base._LOADED_LIBS))
PYEOF
cat "$OUT/env.txt"
command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

status=0
step "kernels check on the prebuilt library"
timeout 120 "$PY" -m nas.cli kernels check --prebuilt "$B/kernels/checks" > "$OUT/kernels-check.txt" 2>&1 || status=1
tail -2 "$OUT/kernels-check.txt"
if [ -z "$DRY" ]; then
  step "CUDA tests"
  timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_device.py > "$OUT/tests-cuda.txt" 2>&1 || status=1
  tail -2 "$OUT/tests-cuda.txt"
fi
step "GPU bench (kernels vs torch, profile, predictor, training)"
# shellcheck disable=SC2086  # GPU_BENCH_ARGS: more options of gpu_bench.py, e.g. --studies quickstart --trials 3
timeout 420 "$PY" bench/gpu/gpu_bench.py --kernels "$B/kernels" --work "$OUT/work" $DRY ${GPU_BENCH_ARGS:-} \
  > "$OUT/gpu-bench.log" 2>&1 \
  || status=1
tail -5 "$OUT/gpu-bench.log"
rm -rf "$OUT/work"/*/*.safetensors "$OUT/kernel-cache"  # weights do not come back: records and tables do
step "done (status $status)"
exit $status
