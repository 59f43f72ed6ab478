#!/usr/bin/env bash
# On the build machine (this repository's .venv, TVM's compiler, the package registry): everything a bare GPU
# machine needs to run bench/gpu/run.sh, into build/gpu (git-ignored), which travels with the working tree:
#   wheels/   cp312 wheels, no dependencies: what the project imports that the GPU image does not hold
#   tvm/      TVM's Python package with its runtime libraries only (no compiler: ~10 MB instead of ~300 MB)
#   kernels/  per quick-start study, its CUDA kernels cross-compiled for ARCH (`nas kernels build`), and checks/
#             (the shapes of `nas kernels check`)
# With --dry-run the kernels are built for this CPU instead (run.sh --dry-run uses them here).
#
#   bash bench/gpu/prepare.sh [--dry-run]        ARCH=sm_90 (default: the H200's)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
ARCH=${ARCH:-sm_90}
OUT=build/gpu
TARGET="cuda:$ARCH"
if [ "${1:-}" = "--dry-run" ]; then TARGET=cpu; fi
[ -x "$PY" ] || { echo "prepare.sh: $PY not found: run \`make install\` first" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT/wheels" "$OUT/kernels"

echo "1/3 wheels (cp312, manylinux x86_64, no dependencies)"
# what the GPU image lacks (its package list: the device tool's KINDS.md; it has pytest, rich, pyyaml, psutil,
# safetensors, tqdm, markupsafe, scikit-learn, matplotlib)
SPECS=("optuna>=5,<6" alembic colorlog "sqlalchemy>=2" mako optuna-dashboard bottle "apache-tvm-ffi==0.1.14.post1")
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$OUT/wheels" "${SPECS[@]}"
for spec in "${SPECS[@]}"; do  # the wheel names run.sh checks before any work (pip writes - as _)
  name=${spec%%[<>=]*}; echo "${name//-/_}"
done > "$OUT/wheels/REQUIRED"

echo "2/3 the TVM runtime (Python package, runtime libraries only)"
TVM=$("$PY" -c 'import pathlib, tvm; print(pathlib.Path(tvm.__file__).resolve().parent)')
mkdir -p "$OUT/tvm"
(cd "$TVM" && tar --exclude=lib --exclude=include --exclude=3rdparty --exclude=src --exclude=__pycache__ \
  --exclude='*.pyc' -cf - .) | (cd "$OUT/tvm" && tar -xf -)
mkdir -p "$OUT/tvm/lib"
cp "$TVM"/lib/libtvm_runtime*.so "$OUT/tvm/lib/"

echo "3/3 kernels for $TARGET"
for study in quickstart pvt_quickstart; do
  "$PY" -m nas.cli kernels build "studies/$study.yaml" --target "$TARGET" --out "$OUT/kernels/$study"
done
"$PY" -m nas.cli kernels build --checks --target "$TARGET" --out "$OUT/kernels/checks"

SIZE=$(du -sm "$OUT" | cut -f1)
echo "build/gpu: ${SIZE} MiB (the device tool carries at most 64 MiB with the working tree)"
if [ "$SIZE" -gt 56 ]; then echo "prepare.sh: build/gpu is too large to carry" >&2; exit 1; fi
