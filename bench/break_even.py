"""Where each choice breaks even on this CPU: every primitive against the dense choice it replaces, in one run, on the
kernels, from 49 to 3,136 tokens, at batch 1 and 8.

Each choice is priced as ``nas profile`` and ``nas report``'s pays.png price it (:mod:`latency_model.pays`): alone
in an otherwise dense block, the block's attention part (attention, qkv, proj slots) or MLP part (an MoE: its router
plus its experts at the split the latency-aware loss drives toward), divided by the dense block's same part. Here
every part is timed as it is asked for (the same modules ``nas profile`` times, untuned kernels unless
``--trials``) rather than looked up, and there is no whole-model composition term.

The blocks:

- **DeiT-Tiny** (192 channels, 3 heads, MLP 768), at 49, 196, 784 and 3,136 tokens (224 x 224 patches of 32, 16,
  8 and 4 pixels, no class token);
- **PVTv2-b0**'s four stage blocks (32/64/160/256 channels, 1/2/5/8 heads, MLP ratio 8, a depthwise conv in the MLP)
  at 112 and 224 pixels (each stage at its own tokens, 49 to 3,136), with its spatial reduction (ratios 8/4/2/1:
  the dense attention's keys and values from a reduced grid, which the other attentions drop) and without it.

    python bench/break_even.py [--batch 1 8] [--trials 0] [--repeats 7] [--cases DeiT-Tiny] [--name NAME] [--quick]

Writes ``bench/results/break-even-cpu.{json,md,png}`` (``--name``: ``NAME.{json,md,png}``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, write  # noqa: E402

from kernels.runtime import KernelSet  # noqa: E402
from latency_model.keys import measurement_key  # noqa: E402
from latency_model.decomposition import Op  # noqa: E402
from latency_model.pays import SLOTS, where_it_pays  # noqa: E402
from latency_model.predictor import Predictor  # noqa: E402
from latency_model.timing import time_op  # noqa: E402
from search_spaces import ModelSpec, SearchSpace  # noqa: E402
from search_spaces.families import ModelDims  # noqa: E402

SPACES = [{"choices": {"attention": ["msa", "linear", "additive"], "qkv": ["dense", "shift", "shift16", "int8"],
                       "proj": ["dense", "shift", "shift16", "int8"],
                       "mlp": ["dense", "shift", "shift16", "int8", "moe"]},
           "moe": {"top_k": [1], "experts": ["dense", "shift"]}},
          # the MoE again with a shift16 expert (an MoE's experts are one list per space)
          {"choices": {"attention": ["msa"], "qkv": ["dense"], "proj": ["dense"], "mlp": ["dense", "moe"]},
           "moe": {"top_k": [1], "experts": ["dense", "shift16"]}}]
TOKENS = (49, 3136)  # the range priced: blocks outside it are left out


def deit_tiny(tokens: int) -> ModelSpec:
    patch = 224 // math.isqrt(tokens)
    return ModelSpec("deit_tiny_patch16_224", {"img_size": 224, "patch_size": patch, "class_token": False,
                                               "global_pool": "avg", "num_classes": 10})


def pvt_v2_b0(img: int, reduction: bool) -> ModelSpec:
    return ModelSpec("pvt_v2_b0", {"img_size": img, "num_classes": 10,
                                   **({} if reduction else {"sr_ratios": [1, 1, 1, 1]})})


CASES = [("DeiT-Tiny", [deit_tiny(t) for t in (49, 196, 784, 3136)]),
         ("PVTv2-b0, spatial reduction", [pvt_v2_b0(img, True) for img in (112, 224)]),
         ("PVTv2-b0, no reduction", [pvt_v2_b0(img, False) for img in (112, 224)])]


class TimedPredictor(Predictor):
    """Prices an op by timing it the first time it is asked for (on ``spec``'s blocks), then from memory."""

    def __init__(self, kernels: KernelSet, repeats: int) -> None:
        super().__init__("this CPU", {}, {})
        self.kernels, self.repeats, self.spec = kernels, repeats, None
        self.timed: dict[tuple, float] = {}

    def op_ms(self, op: str, variant: str, shape: dict[str, int], dtype: str = "float32") -> float:
        key = measurement_key(op, variant, shape, dtype)
        if key not in self.timed:
            timed = Op(op, variant, tuple(sorted(shape.items())), dtype=dtype)
            self.timed[key] = time_op(timed, self.spec, self.kernels, repeats=self.repeats).median_ms
            print(f"  timed {op} {variant} {dict(shape)}: {self.timed[key]:.4f} ms", flush=True)
        return self.timed[key]


def break_even(rows: list[dict]) -> list[dict]:
    """Per case, slot, choice and batch: the fewest tokens where the choice is below dense, and its best ratio."""
    out = []
    keys = dict.fromkeys((r["case"], r["slot"], r["choice"], r["batch"]) for r in rows)
    for case, slot, choice, batch in keys:
        own = sorted((r for r in rows if (r["case"], r["slot"], r["choice"], r["batch"]) == (case, slot, choice,
                                                                                             batch)),
                     key=lambda r: r["tokens"])
        paying = [r["tokens"] for r in own if r["ratio"] < 1.0]
        best = min(own, key=lambda r: r["ratio"])
        out.append({"case": case, "slot": slot, "choice": choice, "batch": batch,
                    "pays from (tokens)": paying[0] if paying else "never",
                    "best x dense": best["ratio"], "at tokens": best["tokens"]})
    return out


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    slots = [s for s in SLOTS if any(r["slot"] == s for r in rows)]
    fig, axes = plt.subplots(len(cases), len(slots), figsize=(3.4 * len(slots), 2.9 * len(cases)), squeeze=False,
                             sharex=True, sharey=True)
    for i, case in enumerate(cases):
        for j, slot in enumerate(slots):
            ax = axes[i][j]
            own = [r for r in rows if r["case"] == case and r["slot"] == slot]
            for (choice, batch) in dict.fromkeys((r["choice"], r["batch"]) for r in own):
                line = sorted((r for r in own if (r["choice"], r["batch"]) == (choice, batch)),
                              key=lambda r: r["tokens"])
                ax.plot([r["tokens"] for r in line], [r["ratio"] for r in line], "o-" if batch == 1 else "s--",
                        ms=3, label=f"{choice}, batch {batch}")
            ax.axhline(1.0, color="black", lw=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            ax.set_title(f"{case}: {slot}", fontsize=8)
            ax.legend(fontsize=5)
            if i == len(cases) - 1:
                ax.set_xlabel("tokens per image", fontsize=8)
            if j == 0:
                ax.set_ylabel("time / dense (below 1: pays)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--trials", type=int, default=0, help="MetaSchedule trials per kernel (default: untuned)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="DeiT-Tiny at 49 and 196 tokens only, printed, not written "
                                                              "(a smoke run)")
    parser.add_argument("--cases", nargs="+", choices=[name for name, _ in CASES], help="these cases only")
    parser.add_argument("--name", default="break-even-cpu", help="results file name (default: break-even-cpu)")
    args = parser.parse_args()
    cases = [("DeiT-Tiny", [deit_tiny(49), deit_tiny(196)])] if args.quick else [
        (name, specs) for name, specs in CASES if not args.cases or name in args.cases]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        kernels = KernelSet("cpu", args.trials, None if args.trials else Path(scratch))
        priced = TimedPredictor(kernels, args.repeats)
        for case, specs in cases:
            for spec in specs:
                dims = ModelDims.of(spec)
                priced.spec = spec
                # one block per distinct size within the range (a PVTv2's stages; a ViT's blocks are alike)
                first = {}
                for i, own in enumerate(dims.blocks):
                    if TOKENS[0] <= own.tokens <= TOKENS[1]:
                        first.setdefault((own.tokens, own.channels), i)
                for batch, space in itertools.product(args.batch, SPACES):
                    pays = where_it_pays(SearchSpace.from_dict(space, spec), priced, batch, blocks=set(first.values()))
                    for r in pays.ratios:
                        rows.append({"case": case, "stage": dims.blocks[r.blocks[0]].stage, "tokens": r.tokens,
                                     "channels": r.channels, "batch": batch, "slot": r.slot, "choice": r.choice,
                                     "ms": round(r.ms, 4), "dense_ms": round(r.dense_ms, 4),
                                     "ratio": round(r.ratio, 3)})
                        print(rows[-1], flush=True)
    notes = ("Each choice alone in an otherwise dense block: its part's time (attention slots: the attention module "
             "with its qkv and proj; mlp: the MLP, or an MoE's router plus its experts at the latency-aware split) "
             f"over the dense block's, both timed in this run; below 1.0 the choice pays. Kernels "
             f"{'untuned (default schedules)' if args.trials == 0 else f'tuned, {args.trials} trials'}. "
             "PVTv2 rows: a stage's block at its own tokens (112 and 224 pixels); 'spatial reduction' keeps the "
             "dense attention's reduced keys (ratios 8/4/2/1), which the other attentions drop.")
    summary = break_even(rows)
    if args.quick:  # a smoke run is not a result
        for row in summary:
            print(row)
        return
    write(args.name, rows, notes, {"break-even": summary})
    plot(rows, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    main()
