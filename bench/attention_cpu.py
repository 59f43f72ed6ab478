"""Where additive attention starts to pay on this CPU: one attention module of each choice, run as the kernel runtime
runs it (additive attention's mixing on the fused ``additive`` kernel), against ``msa`` (timm's softmax attention, torch /
oneDNN) at the same tokens, channels, heads and batch, timed in the same run.

The sizes are DeiT-Tiny's (197 tokens, 192 channels, 3 heads) and the four stages of PVTv2-b0 at 224 x 224 (3136, 784,
196 and 49 tokens at 32, 64, 160 and 256 channels). The PVT sizes are ViT-style blocks: full attention over every
token, without PVT's spatial reduction, which is what the paper's linear-angular attention replaces it with. Each
module is timed alone (its qkv and proj projections included) as ``nas profile`` times ``module.attention``; the
kernels are untuned (default schedules) unless ``--trials``.

    python bench/attention_cpu.py [--batch 1 8] [--trials 0] [--repeats 15]

Writes ``bench/results/attention-cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

from kernels.runtime import KernelSet  # noqa: E402
from latency_model.keys import OpName, attention_variant  # noqa: E402
from latency_model.decomposition import ModelDims, Op  # noqa: E402
from latency_model.timing import time_op  # noqa: E402
from search_spaces import ModelSpec  # noqa: E402

# (label, tokens, image size, patch size, channels, heads, class token)
SIZES = [
    ("DeiT-Tiny", 197, 224, 16, 192, 3, True),
    ("PVTv2-b0 stage 1", 3136, 224, 4, 32, 1, False),
    ("PVTv2-b0 stage 2", 784, 224, 8, 64, 2, False),
    ("PVTv2-b0 stage 3", 196, 224, 16, 160, 5, False),
    ("PVTv2-b0 stage 4", 49, 224, 32, 256, 8, False),
]
ATTENTIONS = ("msa", "linear", "additive")


def spec(img: int, patch: int, channels: int, heads: int, class_token: bool) -> ModelSpec:
    kwargs = {"img_size": img, "patch_size": patch, "depth": 1, "embed_dim": channels, "num_heads": heads,
              "num_classes": 10}
    if not class_token:
        kwargs.update(class_token=False, global_pool="avg")
    return ModelSpec("deit_tiny_patch16_224", kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--trials", type=int, default=0, help="MetaSchedule trials per kernel (default: untuned)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        # tuned kernels go to the kernel cache (a second run is quick); untuned ones are built in a scratch folder
        kernels = KernelSet("cpu", args.trials, None if args.trials else Path(scratch))
        for label, tokens, img, patch, channels, heads, class_token in SIZES:
            model = spec(img, patch, channels, heads, class_token)
            assert ModelDims.of(model).tokens == tokens, (label, ModelDims.of(model).tokens)
            for batch in args.batch:
                shape = tuple(sorted({"B": batch, "T": tokens, "C": channels, "H": heads}.items()))
                times = {}
                for attention in ATTENTIONS:
                    op = Op(OpName.ATTENTION, attention_variant(attention, "dense", "dense"), shape)
                    times[attention] = time_op(op, model, kernels, repeats=args.repeats)
                msa = times["msa"].median_ms
                for attention, timing in times.items():
                    rows.append({"size": label, "attention": attention, "tokens": tokens, "channels": channels,
                                 "heads": heads, "batch": batch, "median_ms": round(timing.median_ms, 4),
                                 "msa_median_ms": round(msa, 4), "speedup_vs_msa": round(msa / timing.median_ms, 3),
                                 "spread": round(timing.spread, 3), "contention": round(timing.contention, 3)})
                    print(rows[-1], flush=True)
    notes = (f"One attention module per row (qkv + token mixing + proj), timed alone; additive attention's two "
             f"binary products on the matadd kernels ({'untuned' if args.trials == 0 else f'{args.trials} trials'}), "
             "every (image, head) of the batch in one kernel call, its depthwise token conv as nine shifted sums "
             "(ops.attention.token_conv); msa and linear in torch. speedup_vs_msa = msa time / this time, "
             "both from this run. PVT sizes are ViT-style blocks without spatial reduction.")
    write("attention-cpu", rows, notes)


if __name__ == "__main__":
    main()
