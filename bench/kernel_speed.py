"""TVM kernels vs torch fp32 and torch int8 at the paper's shapes: tuned matmul, matshift (its three sign forms),
shiftlinear (shift16's fused layer), matadd (its forms).

For every shape, torch fp32 (2 threads) and each TVM kernel are timed in the same run, interleaved, so the ratio
``torch_fp32_median_ms / median_ms`` (the speedup, > 1 is faster than torch) is measured under the same load. At the
linear layers' shapes torch's int8 path is timed too (``quantize_dynamic`` of an ``nn.Linear``: activations
quantized per call, int8 weights, fbgemm/oneDNN on x86), the other way a CPU user makes a linear layer cheaper:
``speedup_vs_int8 = torch_int8_median_ms / median_ms``.
Each kernel's floor on this CPU is ``max(ops / peak lane rate, bytes / bandwidth)``, with the peak fp32 lane rate
taken from a large torch GEMM and the bandwidth from a large copy, both measured here.

    python bench/kernel_speed.py [--trials 64] [--only matshift shiftlinear] [--name kernels-cpu]

Tuning is cached (kernels.tuning), so a second run only measures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402


def timer(statement: str, **names) -> benchmark.Timer:
    """A torch timer on every thread torch has here (``benchmark.Timer`` runs on one thread unless told, which made
    the torch baselines of runs before 2026-12-07 single-threaded against two-threaded kernels)."""
    return benchmark.Timer(statement, globals={**names, "torch": torch}, num_threads=torch.get_num_threads())

from kernels.measure import time_kernel  # noqa: E402
from kernels.spec import KernelSpec  # noqa: E402
from kernels.tuning import get_kernel  # noqa: E402

MLP_SHAPES = [(3136, 64, 512), (3136, 512, 64), (784, 128, 1024), (784, 1024, 128)]  # ShiftAddViT PVT MLPs
DEIT_TINY_SHAPES = [(197, 192, 576), (197, 192, 768), (197, 768, 192)]  # qkv, fc1, fc2 at 197 tokens
TOKENS, HEAD_DIM = 197, 64
ATTENTION_SHAPES = [(HEAD_DIM, TOKENS, HEAD_DIM), (TOKENS, HEAD_DIM, HEAD_DIM)]  # K_b^T V, Q_b (K_b^T V)
SIMILARITY_SHAPES = [(TOKENS, HEAD_DIM, TOKENS), (TOKENS, 256, TOKENS)]  # Q_b K_b^T on 64- and 256-bit codes


def tasks() -> list[KernelSpec]:
    specs = []
    for m, k, n in MLP_SHAPES + DEIT_TINY_SHAPES:
        specs += [KernelSpec("matmul", "fp32", m, k, n)]
        specs += [KernelSpec("matshift", v, m, k, n) for v in ("xor", "mul", "select")]
        specs += [KernelSpec("shiftlinear", "i16", m, k, n)]
    for m, k, n in ATTENTION_SHAPES:
        specs += [KernelSpec("matmul", "fp32", m, k, n), KernelSpec("matadd", "binary_real", m, k, n, "float32"),
                  KernelSpec("matadd", "lut4", m, k, n, "float32")]
    for m, k, n in SIMILARITY_SHAPES:
        specs += [KernelSpec("matmul", "fp32", m, k, n), KernelSpec("matadd", "packed_popcount", m, k, n)]
    return specs


def torch_fp32_ms(m: int, k: int, n: int) -> float:
    """The same logical product in torch fp32: X[M, K] @ W[N, K]^T."""
    x, w = torch.randn(m, k), torch.randn(n, k)
    return timer("torch.nn.functional.linear(x, w)", x=x, w=w).blocked_autorange(min_run_time=0.5).median * 1e3


def torch_int8_ms(m: int, k: int, n: int) -> float:
    """The same linear layer on torch's int8 path: dynamic quantization (int8 weights, activations per call)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        layer = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(k, n, bias=False)),
                                                       {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(m, k)
    with torch.no_grad():
        return timer("layer(x)", x=x, layer=layer).blocked_autorange(min_run_time=0.5).median * 1e3


def peak_fp32_lane_rate() -> float:
    """fp32 multiply-adds per second of a large torch GEMM on this machine (the achievable vector-unit rate)."""
    n = 1536
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = timer("a @ b", a=a, b=b).blocked_autorange(min_run_time=1.0).median
    return n**3 / seconds


def peak_int32_lane_rate() -> float:
    """32-bit integer vector operations per second on this machine: a TVM kernel that keeps 4,096 int32 lanes in L1
    and applies an xor and an add per lane per step (``Y[j] = Σ_k X[j] ^ k``, vectorized over ``j`` with 8
    independent accumulators so the adds do not wait on each other, 2 ops per term).
    Integer vector ops issue on more ports than FMAs on some CPUs (AMD Zen 4/5: four integer pipes, two FMA pipes),
    so the fp32 GEMM rate would understate what an integer kernel can reach."""
    import tvm
    from tvm import s_tir, te

    from kernels import target as targets

    lanes, steps = 4096, 2048
    x = te.placeholder((lanes,), "int32", name="X")
    k = te.reduce_axis((0, steps), name="k")
    y = te.compute((lanes,), lambda j: te.sum(x[j] ^ k.astype("int32"), axis=k), name="Y")
    sch = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([x, y])}))
    block = sch.get_sblock("Y")
    j, kk = sch.get_loops(block)
    outer, chains, vector = sch.split(j, [None, 8, 16])  # 8 independent accumulators of 16 lanes per core
    sch.reorder(outer, kk, chains, vector)
    sch.vectorize(vector)
    sch.unroll(chains)
    sch.parallel(outer)
    sch.decompose_reduction(block, kk)
    lib = tvm.compile(sch.mod, target=targets.resolve("cpu"))
    device = tvm.cpu(0)
    args = [tvm.runtime.tensor(np.arange(lanes, dtype=np.int32), device), tvm.runtime.tensor(np.zeros(lanes, np.int32), device)]
    seconds = np.median(lib.mod.time_evaluator("main", device, number=1, repeat=9, min_repeat_ms=100)(*args).results)
    return 2 * lanes * steps / float(seconds)


def copy_bandwidth() -> float:
    """Bytes per second read + written by a large copy."""
    src = torch.empty(64 * 2**20 // 4)
    dst = torch.empty_like(src)
    seconds = timer("dst.copy_(src)", src=src, dst=dst).blocked_autorange(min_run_time=1.0).median
    return 2 * src.numel() * 4 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--only", nargs="+", help="only kernels whose key contains one of these texts")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--name", default="kernels-cpu", help="results file name (bench/results/NAME.{json,md})")
    args = parser.parse_args()
    torch.set_num_threads(2)
    specs = [s for s in tasks() if not args.only or any(text in s.key for text in args.only)]

    kernels = {}
    for i, spec in enumerate(specs):
        start = time.perf_counter()
        kernels[spec] = get_kernel(spec, "cpu", args.trials)
        state = "cached" if kernels[spec].cache_hit else f"tuned in {time.perf_counter() - start:.0f} s"
        print(f"[{i + 1}/{len(specs)}] {spec.key}: {state}", flush=True)

    lane_rate, int_rate, bandwidth = peak_fp32_lane_rate(), peak_int32_lane_rate(), copy_bandwidth()
    print(f"peak fp32 lane rate {lane_rate / 1e9:.1f} G/s, int32 {int_rate / 1e9:.1f} G/s, copy bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s", flush=True)
    rows = []
    for spec, kernel in kernels.items():
        torch_ms = torch_fp32_ms(spec.M, spec.K, spec.N)
        linear = (spec.M, spec.K, spec.N) in MLP_SHAPES + DEIT_TINY_SHAPES
        int8_ms = torch_int8_ms(spec.M, spec.K, spec.N) if linear else None
        timing = time_kernel(kernel, repeats=args.repeats)
        integer = np.issubdtype(np.dtype(spec.args()[-1][2]), np.integer)  # an integer kernel: integer lanes
        floor_ms = 1e3 * max(spec.ops() / (int_rate if integer else lane_rate), spec.bytes_moved() / bandwidth)
        rows.append(
            {
                "kernel": spec.kernel,
                "variant": spec.variant,
                "M": spec.M,
                "K": spec.K,
                "N": spec.N,
                "median_ms": timing.median_ms,
                "std_ms": timing.std_ms,
                "torch_fp32_median_ms": torch_ms,
                "speedup_vs_torch": torch_ms / timing.median_ms,
                "torch_int8_median_ms": int8_ms if linear else "",
                "speedup_vs_int8": int8_ms / timing.median_ms if linear else "",
                "floor_ms": floor_ms,
                "floor_fraction": floor_ms / timing.median_ms,
                "trials": kernel.trials,
                "tuned": kernel.tuned,
                "tuning_s": round(kernel.tuning_seconds, 1),
            }
        )
        int8 = f"  int8 {int8_ms:8.4f} ms" if linear else ""
        print(
            f"{spec.key:42s} {timing.median_ms:8.4f} ms  torch {torch_ms:8.4f} ms  x{torch_ms / timing.median_ms:5.2f}"
            f"{int8}  floor {floor_ms:.4f} ms",
            flush=True,
        )
    best = []  # per linear shape: the matshift variant dispatch would run (the fastest here) against both baselines
    for m, k, n in MLP_SHAPES + DEIT_TINY_SHAPES:
        shift = [r for r in rows if r["kernel"] == "matshift" and (r["M"], r["K"], r["N"]) == (m, k, n)]
        if shift:
            fastest = min(shift, key=lambda r: r["median_ms"])
            best.append({key: fastest[key] for key in ("M", "K", "N", "variant", "median_ms", "speedup_vs_torch",
                                                       "speedup_vs_int8", "floor_fraction")})
    write(
        args.name,
        rows,
        extra={"summary": {"matshift_fastest": best, "peak_fp32_lane_ops_per_s": lane_rate,
                           "peak_int32_lane_ops_per_s": int_rate, "copy_bytes_per_s": bandwidth}},
        notes=(
            f"speedup_vs_torch = torch fp32 (2 threads) median / kernel median, same run. floor_ms = max(ops / "
            f"lane rate, bytes / {bandwidth / 1e9:.1f} GB/s (64 MiB copy here)), the lane rate {lane_rate / 1e9:.1f} G "
            f"fp32 ops/s (torch 1536^3 GEMM here) for float kernels and {int_rate / 1e9:.1f} G int32 ops/s (xor + add "
            "over 4,096 lanes in L1, 8 accumulators, TVM) for integer ones; floor_fraction = floor / kernel time "
            "(1 = at the floor); ops count 32-bit lane operations per term (matmul: 1 fused multiply-add; matshift "
            "xor: shift, and-xor (one vpternlogd on AVX-512), add; mul: shift, multiply, add; select: shift, "
            "negate, blend, add; shiftlinear: one int16 dot-product instruction per 2 terms, plus its quantize and "
            "rescale per element). torch_int8 = quantize_dynamic(nn.Linear) at the "
            "linear shapes, same run. tuning_s is the time of the run that tuned the kernel (cached since)."
        ),
    )


if __name__ == "__main__":
    main()
