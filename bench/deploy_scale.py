"""At deployment scale on this CPU: does any allocation of each space beat the dense model, and by how much?

For each study at 224 x 224 (``studies/deit_tiny_224.yaml``, ``studies/pvt_v2_b0_224.yaml``) and each runtime
(``latency.runtime``: eager, compiled), in one run: profile the study's space into a scratch table (as ``nas profile``
does, untuned kernels unless ``--trials``), fit the predictor on it, then price and time three models at batch 1:

- the **dense** model;
- the **paper's allocation**: additive attention, shift qkv and proj, an MoE of a dense and a shift expert (top-1) in
  every block; and the same on int16 activations (**paper's allocation, shift16**: shift16 qkv, proj and expert;
  measured, and predicted where the profile timed a shift16 expert: on ViT blocks, where an expert is the MLP);
- **shift MLPs**, **shift16 MLPs** and **shift16 linears** (qkv, proj and MLP) in every block;
- **int8 linears**: the ``int8`` choice (the dense layer quantized to int8, per-token activations) in every block,
  the CPU user's alternative to shift layers, priced and measured like the others; and, as a reference measured
  only (eagerly), torch's dynamic int8 quantization of every linear layer (``quantize_dynamic``: per-tensor
  activations, fbgemm);
- the **cheapest allocation the predictor finds**: exact, because the prediction is additive over blocks
  (``a · parts + b · blocks on kernels + c``), so each block takes the choice whose own priced time is lowest;
- when that is the dense model, the **cheapest with a primitive**: dense but for the one block and choice priced
  nearest to dense, measured to check that the predictor is right that nothing pays.

Each model is measured three times round-robin (the median of the three medians), and predicted at the split its
untrained routers actually make (as ``nas latency --measure`` compares). Weights are random: latency does not depend
on them beyond the routing. Neither the data nor the published weights are needed.

    python bench/deploy_scale.py [--studies deit_tiny_224 pvt_v2_b0_224] [--runtimes eager compiled]
                                 [--trials 0] [--repeats 9] [--calibration 4]

Writes ``bench/results/deploy-scale.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import replace
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kernels.runtime import to_kernels  # noqa: E402
from latency_model import db  # noqa: E402
from latency_model.decomposition import ModelDims  # noqa: E402
from latency_model.prediction import LOO, PredictorError  # noqa: E402
from latency_model.predictor import Predictor, router_loads  # noqa: E402
from latency_model.calibration import family_key  # noqa: E402
from latency_model.profile import profile, table_kernels  # noqa: E402
from latency_model.timing import time_model  # noqa: E402
from nas.study import Study  # noqa: E402
from search_spaces import ArchConfig, BlockConfig, SearchSpace, build_model  # noqa: E402
from search_spaces.space import BLOCK_SLOTS  # noqa: E402

STUDIES = Path(__file__).resolve().parent.parent / "studies"
PAPER = {"attention": "additive", "qkv": "shift", "proj": "shift", "mlp": "moe", "moe_top_k": 1}
PAPER16 = {**PAPER, "qkv": "shift16", "proj": "shift16"}  # and its MoE's shift expert shift16 (paper16 below)
PAPER16_NAME = "paper's allocation, shift16"
# every block on one choice, where the study's space offers it
UNIFORM = {"shift MLPs": {"attention": "msa", "qkv": "dense", "proj": "dense", "mlp": "shift"},
           "shift16 MLPs": {"attention": "msa", "qkv": "dense", "proj": "dense", "mlp": "shift16"},
           "shift16 linears": {"attention": "msa", "qkv": "shift16", "proj": "shift16", "mlp": "shift16"},
           "int8 linears": {"attention": "msa", "qkv": "int8", "proj": "int8", "mlp": "int8"}}
TORCH_INT8 = "torch dynamic int8 (eager, reference)"


def uniform(space: SearchSpace, choice: dict) -> ArchConfig:
    """Every block on one choice (names as :meth:`SearchSpace.suggest` gives them)."""
    return space.from_params({f"b{i}.{k}": v for i in range(space.depth) for k, v in choice.items()})


def block_candidates(space: SearchSpace) -> list[dict]:
    """Every choice a block of the space can take (the space is searched per block: ``tied: false``)."""
    choices = space.blocks[0]
    out = []
    for values in itertools.product(*(choices.get(key) for key in BLOCK_SLOTS)):
        choice = dict(zip(BLOCK_SLOTS, values))
        for top_k in space.moe_top_k if choice["mlp"] == "moe" else (None,):
            out.append(choice if top_k is None else {**choice, "moe_top_k": top_k})
    return out


def cheapest(space: SearchSpace, predictor: Predictor, batch: int = 1) -> tuple[ArchConfig, ArchConfig]:
    """The allocation of least predicted latency (per block, the choice whose calibrated own time is lowest), and
    the cheapest one with at least one block off dense (the nearest miss, when the first is the dense model)."""
    candidates = [uniform(space, c) for c in block_candidates(space)]
    a, b, _ = predictor.calibration.get((family_key(candidates[0]), batch), (1.0, 0.0, 0.0))
    priced = [predictor.predict(config, batch).blocks for config in candidates]
    costs = np.array([[a * sum(blocks[i].values()) + b * config.blocks[i].on_kernels for i in range(space.depth)]
                      for config, blocks in zip(candidates, priced)])  # [candidate, block]
    best = [candidates[int(np.argmin(costs[:, i]))].blocks[i] for i in range(space.depth)]
    dense = next(j for j, c in enumerate(candidates) if c.blocks[0] == BlockConfig())
    extra = costs - costs[dense]
    extra[dense] = np.inf
    j, i = np.unravel_index(int(np.argmin(extra)), extra.shape)
    nearest = list(candidates[dense].blocks)
    nearest[i] = candidates[j].blocks[i]
    return ArchConfig(space.model, tuple(best)), ArchConfig(space.model, tuple(nearest))


def paper16(space: SearchSpace) -> ArchConfig:
    """The paper's allocation with every shift layer a shift16 one, its MoE's experts dense and shift16 (a space's
    MoE experts are one fixed pair, so this is built here rather than drawn from the space)."""
    config = uniform(space, PAPER16)
    return ArchConfig(config.model, tuple(replace(b, moe=replace(b.moe, experts=("dense", "shift16")))
                                          for b in config.blocks))


def run(study: Study, runtime: str, args, scratch: Path) -> list[dict]:
    settings = study.latency_with(db=f"sqlite:///{scratch / f'{study.name}-{runtime}.db'}", trials=args.trials,
                                  repeats=args.repeats, calibration=args.calibration, runtime=runtime, batch_sizes=(1,))
    started = time.perf_counter()
    summary = profile(study.space, settings, kernel_root=None if args.trials else scratch / "kernels",
                      on_start=lambda job, i, n: print(f"  [{study.name} {runtime} {i + 1}/{n}] {job.label}",
                                                       flush=True))
    profiled_s = time.perf_counter() - started
    engine = db.connect(settings.db)
    predictor, accuracy = Predictor.fit(db.latest(engine, settings.device), settings.device,
                                        models=db.model_rows(engine, settings.device))
    best, nearest = cheapest(study.space, predictor)
    configs = {"dense": ArchConfig.dense(study.space.model, study.space.depth),
               "paper's allocation": uniform(study.space, PAPER),
               **({PAPER16_NAME: paper16(study.space)}
                  if {"shift16"} <= set(study.space.blocks[0].qkv) & set(study.space.blocks[0].mlp) else {}),
               **{name: uniform(study.space, choice) for name, choice in UNIFORM.items()
                  if choice["mlp"] in study.space.blocks[0].mlp and choice["qkv"] in study.space.blocks[0].qkv},
               "cheapest predicted": best}
    if best == configs["dense"]:  # then measure the nearest miss: is the predictor right that nothing pays?
        configs["cheapest with a primitive"] = nearest
    kernels = table_kernels(settings, args.trials, None if args.trials else scratch / "kernels")
    img = ModelDims.of(study.model).img
    models = {name: to_kernels(build_model(config), kernels) for name, config in configs.items()}
    models[TORCH_INT8] = torch.ao.quantization.quantize_dynamic(build_model(configs["dense"]).eval(),
                                                                {torch.nn.Linear}, dtype=torch.qint8)
    timings: dict[str, list] = {name: [] for name in models}
    compile_s: dict[str, float] = {}
    for _ in range(3):  # round-robin: drift of the machine spreads over all three alike
        for name, model in models.items():
            timings[name].append(time_model(model, 1, img, args.repeats, settings.compiled and name != TORCH_INT8,
                                            lambda s, name=name: compile_s.setdefault(name, s)))
    rows = []
    for name in models:
        config = configs.get(name)
        measured = float(np.median([t.median_ms for t in timings[name]]))
        try:
            predicted = (None if config is None
                         else predictor.predict(config, 1, moe_loads=router_loads(models[name])).total_ms)
        except PredictorError:  # a shift16 expert on PVTv2's grid: a part the space (experts dense, shift) never times
            if name != PAPER16_NAME:
                raise
            predicted = None
        rows.append({"study": study.name, "runtime": runtime, "model": name,
                     "blocks": "every linear int8" if config is None else config.compact(),
                     "predicted_ms": None if predicted is None else round(predicted, 3),
                     "measured_ms": round(measured, 3),
                     "error": None if predicted is None else round(predicted / measured - 1, 3),
                     "spread": round(max(t.spread for t in timings[name]), 3),
                     "contention": round(max(t.contention for t in timings[name]), 3),
                     "compile_s": round(compile_s.get(name, 0.0), 1) if settings.compiled else None,
                     "profile_s": round(profiled_s), "profiled_ops": len(summary.measured),
                     "models_loo_mape": round(accuracy[LOO].mape, 3) if LOO in accuracy else None})
    dense = next(r for r in rows if r["model"] == "dense")
    for row in rows:
        row["measured vs dense"] = round(row["measured_ms"] / dense["measured_ms"], 3)
        row["predicted vs dense"] = (None if row["predicted_ms"] is None
                                     else round(row["predicted_ms"] / dense["predicted_ms"], 3))
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", nargs="+", default=["deit_tiny_224", "pvt_v2_b0_224"])
    parser.add_argument("--runtimes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--trials", type=int, default=0, help="MetaSchedule trials per kernel (default: untuned)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--calibration", type=int, default=4, help="whole models the profile times to calibrate")
    parser.add_argument("--name", default="deploy-scale", help="results file name (default: deploy-scale; e.g. "
                                                               "deploy-scale-znver5 to keep another CPU's record)")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.studies:
            study = Study.load(STUDIES / f"{name}.yaml")
            for runtime in args.runtimes:
                rows.extend(run(study, runtime, args, Path(scratch)))
    notes = ("At 224 x 224, batch 1, random weights. 'measured vs dense' < 1: faster than the dense model, measured "
             "in the same run and runtime. predicted: the predictor fitted on this run's own profile (untuned kernels "
             f"unless trials > 0: trials {args.trials}; {args.calibration} whole models calibrate the composition), at "
             "the split the untrained routers made; measured: median of three round-robin medians of "
             f"{args.repeats} repeats. compile_s: the compiled model's first call. Whole bench: "
             f"{time.perf_counter() - started:.0f} s.")
    write(args.name, rows, notes)


if __name__ == "__main__":
    main()
