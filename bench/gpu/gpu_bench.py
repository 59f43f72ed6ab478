"""What a GPU does with the product, run where only the TVM runtime is installed (``bench/gpu/run.sh`` calls this).

For each quick-start study (copied into ``--work`` with ``latency.target: cuda:<arch>``, ``latency.prebuilt``: the
CUDA kernels ``bench/gpu/prepare.sh`` built on the build machine, and ``train.device: cuda``):

1. **kernels vs torch**: every matshift / shiftlinear / additive task of the space at batch 1, on the prebuilt kernels,
   against torch's matmul of the same product (the attention's torch mixing for ``additive``) in fp32, bf16 and
   (where ``torch._int_mm`` takes the shape) int8;
2. **profile + fit** on CUDA (kernels, modules, 8 calibration models), then the predictor's held-out check:
   ``--held-out`` architectures measured in turn with the dense model and predicted (Kendall tau, within 10 %);
3. **the paper's allocation against dense**, measured;
4. **training**: pretrain, supernet and a ``--trials``-trial search on the GPU, timed (images per second).

Writes ``gpu-kernels``, ``gpu-predictor``, ``gpu-training`` records (``bench/record.py``; ``$BENCH_RESULTS``
redirects them, e.g. to the device run's ``$OUT``). ``--dry-run``: the same steps on the CPU with CPU-built
prebuilt kernels, tiny budgets (what ``run.sh --dry-run`` checks on the build machine).

    python bench/gpu/gpu_bench.py --kernels build/gpu/kernels --work /tmp/gpu-work [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))
from ranking import kendall_tau  # noqa: E402
from record import write  # noqa: E402

ROOT = BENCH.parent
STUDIES = ("quickstart", "pvt_quickstart")
PAPER = {"attention": "additive", "qkv": "shift", "proj": "shift", "mlp": "moe", "moe_top_k": 1}


def paper_allocation(space) -> dict:
    """The paper's allocation in the space's own shift layers (the quick-starts offer shift16, not shift)."""
    shift = next(c for c in ("shift", "shift16") if c in space.blocks[0].qkv)
    return {**PAPER, "qkv": shift, "proj": shift}


def study_copy(name: str, args) -> Path:
    """The quick-start study for this run: the prebuilt kernels, the GPU (or, dry, the CPU), small budgets."""
    data = yaml.safe_load((ROOT / "studies" / f"{name}.yaml").read_text())
    folder = args.work / name
    folder.mkdir(parents=True, exist_ok=True)
    cuda = not args.dry_run
    data["latency"] = {**data.get("latency", {}), "target": f"cuda:{args.arch}" if cuda else "cpu",
                       "device": f"cuda-{args.arch}-prebuilt" if cuda else "cpu-prebuilt",
                       "prebuilt": str((args.kernels / name).resolve()), "trials": 0,
                       "repeats": 3 if args.dry_run else 10, "calibration": 4 if args.dry_run else 8,
                       "max_model_error": 10.0}
    data["train"] = {**data.get("train", {}), "device": "cuda" if cuda else "cpu"}
    data["budget"] = {**data.get("budget", {}), "n_trials": args.trials,
                      **({"pretrain_epochs": 1, "epochs": 1, "steps_per_epoch": 2} if args.dry_run else {})}
    data["evaluation"] = {**data.get("evaluation", {}), "mode": "supernet",
                          "supernet_steps": 4 if args.dry_run else data.get("evaluation", {}).get("supernet_steps", 500)}
    if args.dry_run:
        data["data"] = {**data.get("data", {}), "images": 400}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _in_torch(spec, device: torch.device, dtype: torch.dtype):
    """What the task computes, in torch at ``dtype``: the product of its shape; for the fused ``additive`` kernel,
    the attention's torch mixing (codes, the two products, the norm, the token conv)."""
    from search_spaces.ops.attention import TOKEN_CONV_TAPS, angular_codes, angular_mix

    if spec.kernel == "additive":
        qkv = torch.randn(spec.batch, spec.M, 3, spec.N, spec.K, device=device, dtype=dtype)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        taps = torch.randn(spec.N, 1, TOKEN_CONV_TAPS, 1, device=device, dtype=dtype)
        return torch.no_grad()(lambda: angular_mix(*angular_codes(q, k), v, taps))
    a = torch.randn(spec.batch, spec.M, spec.K, device=device, dtype=dtype)
    b = torch.randn(spec.batch, spec.K, spec.N, device=device, dtype=dtype)
    return lambda: torch.bmm(a, b)


def kernels_vs_torch(study, device: torch.device, repeats: int) -> list[dict]:
    """Each shift / additive task of the space at batch 1 on the prebuilt kernels, and torch's product of the same
    shape (the additive attention's torch mixing for the fused ``additive`` kernel) in fp32, bf16 and int8."""
    from kernels.measure import time_prebuilt
    from kernels.prebuilt import PrebuiltKernels
    from latency_model.decomposition import kernel_tasks
    from latency_model.timing import time_callable

    prebuilt = PrebuiltKernels.load(Path(study.latency.prebuilt))
    rows = []
    for spec in kernel_tasks(study.space, [1], every_candidate=True):
        batch, m, k, n = spec.batch, spec.M, spec.K, spec.N
        row = {"study": study.name, "kernel": f"{spec.kernel}/{spec.variant}", "shape": f"{batch}x{m}x{k}x{n}",
               "tvm_ms": round(time_prebuilt(prebuilt, spec, repeats).median_ms, 5)}
        for dtype, name in ((torch.float32, "torch_fp32_ms"), (torch.bfloat16, "torch_bf16_ms")):
            row[name] = round(time_callable(_in_torch(spec, device, dtype), repeats, device=device).median_ms, 5)
        if device.type == "cuda" and spec.kernel != "additive" and batch == 1 and m > 16 and k % 8 == 0 and n % 8 == 0:
            x8 = torch.randint(-8, 8, (m, k), dtype=torch.int8, device=device)
            w8 = torch.randint(-8, 8, (k, n), dtype=torch.int8, device=device)
            row["torch_int8_ms"] = round(time_callable(lambda: torch._int_mm(x8, w8), repeats,
                                                       device=device).median_ms, 5)
        row["tvm_over_fp32"] = round(row["tvm_ms"] / row["torch_fp32_ms"], 3)
        rows.append(row)
    return rows


def predictor_check(study, held_out: int, seed: int) -> tuple[list[dict], dict]:
    """Held-out architectures measured in turn with the dense model (3 rounds) against the predictor."""
    from kernels.runtime import to_kernels
    from latency_model.decomposition import ModelDims
    from latency_model.predictor import Predictor, router_loads
    from latency_model.profile import table_kernels, torch_device
    from latency_model.timing import time_model
    from search_spaces import ArchConfig, build_model

    settings = study.latency
    predictor = Predictor.load(settings.predictor, device=settings.device)
    kernels = table_kernels(settings)
    device = torch_device(kernels)
    img, batch = ModelDims.of(study.model).img, settings.batch_sizes[0]
    rng = np.random.default_rng(seed)
    configs = {}
    while len(configs) < held_out:
        config = study.space.sample(rng)
        configs.setdefault(config.id, config)
    dense = ArchConfig.dense(study.model, study.space.depth)
    space = study.space  # the paper's allocation: every block additive, shift qkv and proj, a dense+shift MoE
    paper = space.from_params({f"b{i}.{k}": v for i in range(space.depth)
                               for k, v in paper_allocation(space).items()})
    models = {key: to_kernels(build_model(c), kernels).to(device) for key, c in configs.items()}
    models["dense"] = to_kernels(build_model(dense), kernels).to(device)
    models["paper"] = to_kernels(build_model(paper), kernels).to(device)
    times: dict[str, list[float]] = {key: [] for key in models}
    for _ in range(3):
        for key, model in models.items():
            times[key].append(time_model(model, batch, img, repeats=settings.repeats, device=device).median_ms)
    measured = {key: statistics.median(v) for key, v in times.items()}
    rows = []
    for key, config in configs.items():
        predicted = predictor.predict(config, batch, moe_loads=router_loads(models[key])).total_ms
        rows.append({"study": study.name, "arch": key, "measured_ms": round(measured[key], 4),
                     "predicted_ms": round(predicted, 4), "measured_over_dense": round(measured[key] /
                                                                                       measured["dense"], 3),
                     "error": round(predicted / measured[key] - 1, 3)})
    summary = {"study": study.name, "held_out": len(rows), "device": settings.device,
               "kendall_tau": round(kendall_tau([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]),
                                    3),
               "within_10pct": sum(abs(r["error"]) <= 0.10 for r in rows), "dense_ms": round(measured["dense"], 4),
               "fastest_over_dense": min(r["measured_over_dense"] for r in rows),
               "paper_ms": round(measured["paper"], 4), "paper_over_dense": round(measured["paper"] /
                                                                                  measured["dense"], 3)}
    return rows, summary


def training(path: Path, dry_run: bool) -> dict:
    """Profile and fit on the prebuilt kernels; pretrain, supernet, search on the study's train.device; seconds of
    each."""
    from nas import pipeline
    from nas.study import Study

    study = Study.load(path)

    def fit() -> None:  # a dry run shares the build machine with whatever runs there: its timings may be noisy
        fitted = pipeline.fit_latency(study, pipeline.FitOptions(max_model_error=10.0, allow_noisy=dry_run))
        if fitted.refused is not None:
            raise SystemExit(f"{study.name}: the predictor was refused: {fitted.refused}")
    seconds = {}
    for name, step in (("profile_s", lambda: pipeline.profile(study)), ("fit_s", fit),
                       ("pretrain_s", lambda: pipeline.pretrain(study)),
                       ("supernet_s", lambda: pipeline.supernet(study)),
                       ("search_s", lambda: pipeline.search(study))):
        start = time.perf_counter()
        step()
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"{study.name}: {name[:-2]} in {seconds[name]} s", flush=True)
    return {"study": study.name, "device": study.train.device, "trials": study.budget.n_trials, **seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=Path, required=True, help="prepare.sh's kernels folder (one per study)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-work"))
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--studies", nargs="+", default=list(STUDIES))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--held-out", type=int, default=12)
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny budgets: check every step here")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible: run on the GPU machine, or with --dry-run here")
    from nas.study import Study

    device = torch.device("cpu" if args.dry_run else "cuda")
    kernel_rows, predictor_rows, summaries, trainings = [], [], [], []
    for name in args.studies:
        path = study_copy(name, args)
        trainings.append(training(path, args.dry_run))  # profile + fit first: the predictor check needs them
        study = Study.load(path)
        kernel_rows += kernels_vs_torch(study, device, 3 if args.dry_run else 15)
        rows, summary = predictor_check(study, 3 if args.dry_run else args.held_out, seed=2026)
        predictor_rows += rows
        summaries.append(summary)
        print(json.dumps(summary), flush=True)
    where = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    write("gpu-kernels" + ("-dry" if args.dry_run else ""), kernel_rows,
          f"Prebuilt TVM kernels (untuned, dlight schedules) against torch's matmul of the same shape on {where}.")
    write("gpu-predictor" + ("-dry" if args.dry_run else ""), predictor_rows,
          f"Held-out architectures measured on {where} in turn with the dense model, against the predictor fitted "
          f"on this run's profile.", {"summary": summaries})
    write("gpu-training" + ("-dry" if args.dry_run else ""), trainings,
          f"Profile, fit, pretrain, supernet and a {args.trials}-trial search on {where}.")


if __name__ == "__main__":
    main()
