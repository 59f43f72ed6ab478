"""Eager against compiled (``latency.runtime``): what torch.compile around the TVM kernels saves, part by part and on
whole models, at the quick-start's size and at DeiT-Tiny's 224 x 224.

Each row is one module ``nas profile`` times (a block's attention with its projections, an MLP, an MoE's router, an
expert at its token bucket, the norms and residuals) or a whole model (all dense; the paper's allocation: additive
attention, shift qkv and proj, an MoE of a dense and a shift expert in every block), timed eager and compiled in the
same run, one after the other; ``compile_s`` is the compiled module's first call. Untuned kernels (default schedules)
unless ``--trials``.

    python bench/runtime_cpu.py [--trials 0] [--repeats 9] [--sizes quickstart deit_tiny_224]

Writes ``bench/results/runtime-cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

import torch  # noqa: E402

from kernels.runtime import KernelSet, to_kernels  # noqa: E402
from latency_model.keys import OpName  # noqa: E402
from latency_model.decomposition import block_ops  # noqa: E402
from latency_model.pays import DENSE, slot_choices  # noqa: E402
from latency_model.timing import time_model, time_op  # noqa: E402
from search_spaces import ArchConfig, BlockConfig, ModelSpec, MoEConfig, SearchSpace, build_model  # noqa: E402
from search_spaces.families import ModelDims  # noqa: E402

SIZES = {
    "quickstart": ModelSpec("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "depth": 4, "embed_dim": 64,
                                                      "num_heads": 2, "num_classes": 10}),
    "deit_tiny_224": ModelSpec("deit_tiny_patch16_224", {"num_classes": 10}),
}
SPACE = {"choices": {"attention": ["msa", "linear", "additive"], "qkv": ["dense", "shift"],
                     "proj": ["dense", "shift"], "mlp": ["dense", "shift", "moe"]},
         "moe": {"top_k": [1], "experts": ["dense", "shift"]}}
PAPER = BlockConfig("additive", "shift", "shift", "moe", MoEConfig(1, ("dense", "shift")))


def both(label: str, size: str, timer) -> dict:
    """One row: ``timer(compiled, on_first_call)`` eager, then compiled."""
    first: list[float] = []
    eager = timer(False, None)
    fast = timer(True, first.append)
    row = {"size": size, "module": label, "eager_ms": round(eager.median_ms, 4), "compiled_ms": round(fast.median_ms, 4),
           "eager / compiled": round(eager.median_ms / fast.median_ms, 2), "compile_s": round(first[0], 1),
           "spread": round(max(eager.spread, fast.spread), 3), "contention": round(max(eager.contention,
                                                                                        fast.contention), 3)}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=0, help="MetaSchedule trials per kernel (default: untuned)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        kernels = KernelSet("cpu", args.trials, None if args.trials else Path(scratch))
        for size in args.sizes:
            spec = SIZES[size]
            space = SearchSpace.from_dict(SPACE, spec)
            dims = ModelDims.of(spec)
            seen = set()
            for slot, label, block in [("dense", "dense", DENSE), *slot_choices(space, 0)]:
                for op in block_ops(dims, 1, 0, block):
                    if op.key in seen or (slot != "dense" and op.op == OpName.BLOCK_FRAME):
                        continue
                    seen.add(op.key)
                    name = f"{op.op} {op.variant or ''} {dict(op.shape)}".replace("  ", " ")
                    rows.append(both(name, size, lambda c, f, op=op: time_op(op, spec, kernels, args.repeats, c, f)))
            for label, block in (("whole model, all dense", DENSE), ("whole model, paper's allocation", PAPER)):
                model = to_kernels(build_model(ArchConfig(spec, (block,) * len(dims.blocks))), kernels)
                rows.append(both(label, size, lambda c, f, m=model: time_model(m, 1, dims.img, args.repeats, c, f)))
    notes = ("Batch 1. Each module timed eager, then under torch.compile (inductor, CPU) with the TVM kernels as the "
             "custom ops shiftadd::matshift and shiftadd::binary_product, in the same process; eager / compiled > 1: "
             "compiling saves that factor. compile_s: the compiled module's first call (dynamo + inductor; inductor's "
             f"cache on disk was warm for shapes an earlier run compiled). Kernels "
             f"{'untuned' if args.trials == 0 else f'tuned, {args.trials} trials'}. Whole bench: "
             f"{time.perf_counter() - started:.0f} s.")
    write("runtime-cpu", rows, notes)


if __name__ == "__main__":
    main()
