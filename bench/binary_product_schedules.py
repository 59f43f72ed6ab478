"""Additive attention's binary products (``matadd binary_real``) under TVM's default schedule and the hand-written
one an untuned kernel runs (``kernels/matadd._binary_real_cpu_schedule``), beside torch's ``bmm`` of the codes as
floats, in one run, at the shapes additive attention runs: ``K_bᵀ V`` (head dim × tokens × head dim) and
``Q_b (K_bᵀ V)`` (tokens × head dim × head dim), every (image, head) product of a batch in one call.

    python bench/binary_product_schedules.py [--repeats 9]

Writes ``bench/results/binary-product-schedules.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

import tvm  # noqa: E402

from kernels import target as targets  # noqa: E402
from kernels.arguments import arguments  # noqa: E402
from kernels.spec import KernelSpec  # noqa: E402

# (name, head dim, tokens, heads): DeiT-Tiny at 224 and PVTv2-b0's first stage (no spatial reduction)
CASES = [("DeiT-Tiny", 64, 197, 3), ("PVTv2-b0 stage 1", 32, 3136, 1)]
BATCHES = (1, 8)


def time_module(spec: KernelSpec, mod, inputs, repeats: int) -> tuple[float, np.ndarray]:
    executable = tvm.compile(mod, target=targets.resolve("cpu"))
    device = tvm.cpu(0)
    args = arguments(spec, device, inputs)
    executable["main"](*args)
    evaluator = executable.mod.time_evaluator("main", device, number=1, repeat=repeats, min_repeat_ms=40)
    return float(np.median(evaluator(*args).results)) * 1e3, args[-1].numpy()


def torch_bmm_ms(codes: np.ndarray, values: np.ndarray) -> float:
    lead = codes.shape[:-2] or (1,)
    a = torch.from_numpy(codes.astype(np.float32)).reshape(*lead, *codes.shape[-2:])
    b = torch.from_numpy(values).reshape(*lead, *values.shape[-2:])
    timer = benchmark.Timer("torch.bmm(a, b)", globals={"torch": torch, "a": a, "b": b},
                            num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.5).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(2)
    target = targets.resolve("cpu")
    rows = []
    for name, d, t, heads in CASES:
        for images in BATCHES:
            for product, (m, k, n) in (("K_b^T V", (d, t, d)), ("Q_b (K_b^T V)", (t, d, d))):
                spec = KernelSpec("matadd", "binary_real", m, k, n, "float32", batch=images * heads)
                inputs = spec.random_inputs(np.random.default_rng(0))
                plain = tvm.IRModule({"main": spec.prim_func()})
                default_ms, default_out = time_module(spec, plain, inputs, args.repeats)
                hand_ms, hand_out = time_module(spec, spec.definition.cpu_schedule(plain, m, k, n, target), inputs,
                                                args.repeats)
                assert np.array_equal(hand_out, default_out), spec.key  # the same sums, in the same order
                bmm_ms = torch_bmm_ms(*inputs)
                rows.append({"case": name, "images": images, "product": product, "products": spec.batch,
                             "M": m, "K": k, "N": n, "tvm_default_ms": round(default_ms, 4),
                             "hand_ms": round(hand_ms, 4), "torch_bmm_ms": round(bmm_ms, 4),
                             "default_over_hand": round(default_ms / hand_ms, 1),
                             "hand_over_bmm": round(hand_ms / bmm_ms, 2)})
                print(rows[-1], flush=True)
    write("binary-product-schedules", rows,
          notes="matadd binary_real, one run, float32 values, random {0, 1} codes: TVM's default schedule (one serial "
                "loop nest) and the hand-written schedule an untuned kernel runs (register tiles of up to 16 "
                "accumulators, the code as a blend mask, one parallel loop over every tile of every product), "
                "whose outputs are checked equal bit for bit; torch_bmm_ms: torch.bmm of the codes as floats (a "
                "multiplication per term), two threads. default_over_hand > 1: the hand schedule is faster; "
                "hand_over_bmm < 1: faster than torch.")


if __name__ == "__main__":
    main()
