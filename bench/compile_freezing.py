"""What inductor's freezing does to the compiled runtime on this CPU: each model at 224 x 224, batch 1, compiled
with and without it, in one run.

Freezing (``torch.compile(..., options={"freezing": True})``, what :func:`kernels.runtime.compiled` asks for) folds
the weights into the graph as constants under ``no_grad``, so oneDNN runs the linears and convolutions on weights it
packed once. Each setting runs in a process of its own (inductor's config and caches are per process), the two
alternating for ``--rounds`` rounds; a model's figure is the median over the rounds of its ``time_model`` median.
Also recorded: the largest difference between the compiled and the eager model's outputs, which freezing must not
change.

    python bench/compile_freezing.py [--studies deit_tiny_224 pvt_v2_b0_224] [--rounds 2] [--repeats 9]

Writes ``bench/results/compile-freezing.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
MODELS = ("dense", "int8 linears", "shift16 linears")


def measure(studies: list[str], freezing: bool, repeats: int, kernel_root: str) -> list[dict]:
    """One setting, in this process."""
    import torch

    from deploy_scale import UNIFORM, uniform
    from kernels.runtime import RECOMPILE_LIMIT, KernelSet, to_kernels
    from latency_model.timing import time_callable
    from nas.study import Study
    from search_spaces import ArchConfig, build_model
    from search_spaces.families import ModelDims

    torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT  # as kernels.runtime.compiled sets it
    torch.manual_seed(0)
    kernels = KernelSet("cpu", trials=0, root=Path(kernel_root))
    rows = []
    for name in studies:
        space = Study.load(HERE.parent / "studies" / f"{name}.yaml").space
        img = ModelDims.of(space.model).img
        configs = {"dense": ArchConfig.dense(space.model, space.depth),
                   **{label: uniform(space, UNIFORM[label]) for label in MODELS[1:]}}
        images = torch.randn(1, 3, img, img)
        for label, config in configs.items():
            model = to_kernels(build_model(config), kernels)
            # kernels.runtime.compiled's call, with freezing either way
            fast = torch.compile(model, backend="inductor", options={"freezing": freezing})
            with torch.no_grad():
                error = (fast(images) - model(images)).abs().max().item()
                ms = time_callable(lambda: fast(images), repeats=repeats).median_ms
            rows.append({"study": name, "model": label, "freezing": freezing, "ms": ms, "max_abs_vs_eager": error})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", nargs="+", default=["deit_tiny_224", "pvt_v2_b0_224"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)  # a child process's setting
    parser.add_argument("--kernels", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.studies, args.one == "on", args.repeats, args.kernels)))
        return

    from record import write

    found: dict[tuple, list] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for setting in ("off", "on"):
                out = subprocess.run([sys.executable, __file__, "--one", setting, "--kernels", scratch,
                                      "--repeats", str(args.repeats), "--studies", *args.studies],
                                     check=True, capture_output=True, text=True).stdout
                for row in json.loads(out.strip().splitlines()[-1]):
                    found.setdefault((row["study"], row["model"], row["freezing"]), []).append(row)
    rows = []
    for (study, model, freezing), runs in found.items():
        if not freezing:
            continue
        off = found[(study, model, False)]
        on_ms, off_ms = (float(np.median([r["ms"] for r in rs])) for rs in (runs, off))
        rows.append({"study": study, "model": model, "without_ms": round(off_ms, 2), "with_ms": round(on_ms, 2),
                     "with / without": round(on_ms / off_ms, 3),
                     "max_abs_vs_eager without": f"{max(r['max_abs_vs_eager'] for r in off):.2e}",
                     "max_abs_vs_eager with": f"{max(r['max_abs_vs_eager'] for r in runs):.2e}"})
        print(rows[-1], flush=True)
    write("compile-freezing", rows,
          notes=f"The compiled runtime with and without inductor's freezing, batch 1, untuned kernels; each setting in "
                f"its own process, alternating for {args.rounds} rounds, median of the rounds' medians. "
                "max_abs_vs_eager: the largest difference from the eager model's outputs (random weights).")


if __name__ == "__main__":
    main()
