"""Where a whole-model prediction misses: each block's attention and MLP timed inside the running model on the
kernels, next to the predictor's price for the same part.

Run after the quick-start search (``make demo``); for each chosen trial of the study (default: the paper allocation,
the all-dense reference and the Pareto trials), the architecture is converted from the teacher (no fine-tune), its
MoE routers' token split measured on the search split, and the predictor's breakdown taken at that split. Then the
model runs on the kernels: its whole forward is timed as ``nas latency --measure`` does, and each block's
``attn`` and ``mlp`` (router, dispatch and experts together) forward is timed by a wrapper over ``--images``
single-image forwards (median per call). In-situ part times include the Python call overhead that the predictor's
composition term (``composition_ms``) spreads over the whole model, so compare the ratios of parts with each other,
not with 1.

    python bench/parts_in_situ.py [--study studies/quickstart.yaml] [--trials 1 46 0] [--images 200]

Writes ``bench/results/parts-in-situ.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

from kernels.runtime import to_kernels  # noqa: E402
from latency_model.decomposition import ModelDims  # noqa: E402
from latency_model.predictor import Predictor  # noqa: E402
from latency_model.timing import time_model  # noqa: E402
from nas.training import data  # noqa: E402
from nas.study_latency import study_kernels  # noqa: E402
from nas.search.report import pareto_front, points  # noqa: E402
from nas.search.storage import open_study  # noqa: E402
from nas.study import Study  # noqa: E402
from nas.training.teacher import load_teacher  # noqa: E402
from nas.training.trainer import evaluate  # noqa: E402
from search_spaces import build_model  # noqa: E402
from search_spaces.reparam import transformer_blocks  # noqa: E402

STUDY = Path(__file__).resolve().parent.parent / "studies" / "quickstart.yaml"


def timed(module: torch.nn.Module, spent: list[float]) -> None:
    forward = module.forward

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        spent.append(time.perf_counter() - start)
        return out

    module.forward = wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--trials", type=int, nargs="*", help="trial numbers (default: references and the front)")
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    study = Study.load(args.study)
    found = points(open_study(study))
    chosen = ([p for p in found if p.trial.number in args.trials] if args.trials else
              [p for p in found if p.reference] + [p for p in pareto_front(found) if not p.reference])
    teacher = load_teacher(study)
    predictor = Predictor.load(study.latency.predictor, device=study.latency.device)
    dims = ModelDims.of(study.model)
    splits = data.load(study.data, dims.img, dims.classes)
    images = splits.test.tensors[0][: args.images]
    kernels = study_kernels(study)
    rows = []
    for p in chosen:
        model = build_model(p.config, teacher).eval()
        prediction = predictor.predict(p.config, 1, moe_loads=evaluate(model, splits.search).moe_loads)
        fast = to_kernels(model, kernels).eval()
        whole = time_model(fast, 1, dims.img, repeats=study.latency.repeats).median_ms
        spent: dict[str, list[float]] = {}
        for i, block in enumerate(transformer_blocks(fast)):
            timed(block.attn, spent.setdefault(f"{i}.attention", []))
            timed(block.mlp, spent.setdefault(f"{i}.mlp", []))
        with torch.no_grad():
            for image in images:
                fast(image[None])
        label = p.reference or f"trial {p.trial.number}"
        rows.append({"point": label, "part": "whole model", "in_situ_ms": round(whole, 3),
                     "priced_ms": round(prediction.total_ms, 3), "ratio": round(whole / prediction.total_ms, 2),
                     "architecture": f"composition {prediction.composition_ms:.2f} ms of the price"})
        for i, priced in enumerate(prediction.blocks):
            block = p.config.blocks[i]
            for part, cost in (("attention", priced.get("attention", 0.0)),
                               ("mlp", sum(v for k, v in priced.items() if k not in ("attention",
                                                                                    "norms+residuals")))):
                ms = statistics.median(spent[f"{i}.{part}"]) * 1e3
                rows.append({"point": label, "part": f"block {i} {part}", "in_situ_ms": round(ms, 3),
                             "priced_ms": round(cost, 3), "ratio": round(ms / cost, 2),
                             "architecture": block.describe()})
        for row in rows[-1 - 2 * len(prediction.blocks):]:
            print(row, flush=True)
    write("parts-in-situ", rows, f"Study {args.study.name}, batch 1, kernels as profiled ({kernels.trials} tuning "
          f"trials), {len(images)} single-image forwards per point for the in-situ parts; whole model timed with "
          f"{study.latency.repeats} repeats. ratio = in situ / priced. MoE parts priced at the split the "
          "unfine-tuned router makes on the search split.")


if __name__ == "__main__":
    main()
