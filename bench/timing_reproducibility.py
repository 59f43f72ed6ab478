"""Is a whole-model timing reproducible across process launches? The same architectures timed in separate launches,
under each way of letting torch's and TVM's thread pools share the cores.

Six architectures of the quick-start space (drawn with ``--seed``, not the calibration models) run on the kernels
(untuned, as ``make demo`` profiles) and are timed with :func:`latency_model.timing.time_model`, repeats interleaved
across the six models. Each *setting* (thread counts, wait policy, affinity) is timed in ``--launches`` fresh
processes, the settings taking turns so a slow minute of the machine hits all of them. Per architecture and setting:
the median of each launch, and their spread across launches, ``(max - min) / median``.

    python bench/timing_reproducibility.py [--launches 5] [--settings default torch1-tvm1 ...]

Writes ``bench/results/timing-reproducibility.{json,md}``. Run it on a quiet machine: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "studies" / "quickstart.yaml"

# Environment of each setting; "threads" is torch.set_num_threads in the timed process.
SETTINGS: dict[str, dict] = {
    "default": {"threads": 2, "env": {}},  # what nas profile did before: torch 2 threads, TVM its own pool of 2
    "omp-passive": {"threads": 2, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "tvm1": {"threads": 2, "env": {"TVM_NUM_THREADS": "1"}},
    "torch1-tvm1": {"threads": 1, "env": {"TVM_NUM_THREADS": "1"}},
    "bound": {"threads": 2, "env": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores", "TVM_BIND_THREADS": "1"}},
}


def configs(seed: int, count: int):
    import numpy as np

    from nas.study import Study

    space = Study.load(STUDY).space
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(count)]


def worker(setting: str, seed: int, count: int, repeats: int) -> dict[str, float]:
    """Runs in a fresh process: time each architecture, repeats interleaved across them; medians by config id."""
    import torch

    from kernels.runtime import KernelSet, to_kernels
    from latency_model.decomposition import ModelDims
    from latency_model.timing import time_model
    from search_spaces import build_model

    torch.set_num_threads(SETTINGS[setting]["threads"])
    archs = configs(seed, count)
    kernels = KernelSet("cpu", 0)
    img = ModelDims.of(archs[0].model).img
    models = [to_kernels(build_model(c), kernels) for c in archs]
    samples: dict[str, list[float]] = {c.id: [] for c in archs}
    for model in models:  # warm every model first (kernels loaded, allocator filled)
        time_model(model, 1, img, repeats=1)
    for _ in range(repeats):
        for config, model in zip(archs, models):
            samples[config.id].append(time_model(model, 1, img, repeats=3).median_ms)
    return {cid: statistics.median(values) for cid, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--configs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per launch")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worker", choices=list(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.out.write_text(json.dumps(worker(args.worker, args.seed, args.configs, args.repeats)))
        return

    from record import write

    load_before = os.getloadavg()
    medians: dict[str, dict[str, list[float]]] = {s: {} for s in args.settings}
    with tempfile.TemporaryDirectory() as tmp:
        # one kernel cache for every launch, compiled before the first timed launch
        base_env = {**os.environ, "SHIFTADD_CACHE": str(Path(tmp) / "kernels")}
        for launch in range(-1, args.launches):
            for setting in args.settings:
                out = Path(tmp) / f"{setting}-{launch}.json"
                env = {**base_env, **SETTINGS[setting]["env"]}
                started = time.perf_counter()
                subprocess.run([sys.executable, __file__, "--worker", setting, "--out", str(out), "--seed",
                                str(args.seed), "--configs", str(args.configs), "--repeats", str(args.repeats)],
                               env=env, check=True, cwd=ROOT)
                if launch < 0:
                    continue  # the warm-up launch of each setting compiles its kernels; not counted
                for cid, ms in json.loads(out.read_text()).items():
                    medians[setting].setdefault(cid, []).append(ms)
                print(f"launch {launch + 1}/{args.launches} {setting}: {time.perf_counter() - started:.0f} s",
                      flush=True)
    load_after = os.getloadavg()
    rows, summary = [], {}
    for setting, by_config in medians.items():
        spreads = []
        for cid, values in by_config.items():
            mid = statistics.median(values)
            spread = (max(values) - min(values)) / mid
            spreads.append(spread)
            rows.append({"setting": setting, "config": cid, "median_ms": round(mid, 4),
                         "min_ms": round(min(values), 4), "max_ms": round(max(values), 4),
                         "spread_across_launches": round(spread, 4),
                         "launch_medians_ms": " ".join(f"{v:.3f}" for v in values)})
        summary[setting] = {"worst_spread": round(max(spreads), 4), "median_spread": round(statistics.median(spreads),
                                                                                             4)}
    notes = ("Whole-model forward latency (batch 1, quick-start DeiT on the untuned kernels) of the same 6 "
             f"architectures in {args.launches} separate launches per setting. spread_across_launches = (max - min) / "
             f"median of the per-launch medians. Load average before {load_before[0]:.2f}, after "
             f"{load_after[0]:.2f}. Settings: " + "; ".join(f"{k}: torch threads {v['threads']}, env {v['env']}"
                                                            for k, v in SETTINGS.items() if k in args.settings)
             + ". Summary per setting: " + json.dumps(summary))
    write("timing-reproducibility", rows, notes, {"summary": summary, "load_average": [load_before, load_after]})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
