"""The matshift ``xor`` kernel under three schedules, at the linear shapes of ``kernel_speed.py``, in one run: TVM's
default schedule, the hand-written one (``kernels/matshift._xor_cpu_schedule``, what an untuned kernel now runs)
and MetaSchedule's best after ``--trials`` (from the kernel cache: run ``kernel_speed.py`` first, or it tunes here).

    python bench/kernel_schedules.py [--trials 32]

Writes ``bench/results/kernel-schedules.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_speed import DEIT_TINY_SHAPES, MLP_SHAPES, torch_fp32_ms  # noqa: E402
from record import write  # noqa: E402

import tvm  # noqa: E402

from kernels import target as targets  # noqa: E402
from kernels.arguments import arguments  # noqa: E402
from kernels.measure import time_kernel  # noqa: E402
from kernels.spec import KernelSpec  # noqa: E402
from kernels.tuning import get_kernel  # noqa: E402


def time_module(spec: KernelSpec, mod, repeats: int) -> float:
    executable = tvm.compile(mod, target=targets.resolve("cpu"))
    device = tvm.cpu(0)
    inputs = spec.random_inputs(np.random.default_rng(0))
    args = arguments(spec, device, inputs)
    executable["main"](*args)
    assert np.array_equal(args[-1].numpy(), spec.reference(*inputs)), spec.key  # the schedule keeps the result
    evaluator = executable.mod.time_evaluator("main", device, number=1, repeat=repeats, min_repeat_ms=40)
    return float(np.median(evaluator(*args).results)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    target = targets.cpu_target()
    for m, k, n in MLP_SHAPES + DEIT_TINY_SHAPES:
        spec = KernelSpec("matshift", "xor", m, k, n)
        plain = tvm.IRModule({"main": spec.prim_func()})
        start = time.perf_counter()
        hand = spec.definition.cpu_schedule(plain, m, k, n, target)
        schedule_s = time.perf_counter() - start
        tuned = get_kernel(spec, "cpu", args.trials)
        times = {"tvm_default_ms": time_module(spec, plain, args.repeats),
                 "hand_ms": time_module(spec, hand, args.repeats),
                 "metaschedule_ms": time_kernel(tuned, repeats=args.repeats).median_ms,
                 "torch_fp32_ms": torch_fp32_ms(m, k, n)}
        rows.append({"M": m, "K": k, "N": n, **{key: round(v, 4) for key, v in times.items()},
                     "hand_over_metaschedule": round(times["hand_ms"] / times["metaschedule_ms"], 3),
                     "default_over_hand": round(times["tvm_default_ms"] / times["hand_ms"], 1),
                     "trials": tuned.trials, "tuning_s": round(tuned.tuning_seconds, 1),
                     "hand_schedule_s": round(schedule_s, 3)})
        print(rows[-1], flush=True)
    write("kernel-schedules", rows,
          notes="matshift xor, one run: TVM's default schedule; the hand-written schedule an untuned kernel runs "
                "(register tile of 16 accumulators of 16 int32 lanes, vectorized over outputs, parallel over "
                f"tiles); MetaSchedule's best after {args.trials} trials (tuning_s: the time that tuning took). "
                "hand_over_metaschedule < 1: the hand schedule is faster. Every schedule's output is checked "
                "against the reference.")


if __name__ == "__main__":
    main()
