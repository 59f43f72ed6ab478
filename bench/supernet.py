"""Does a supernet rank architectures as their own fine-tunes do, and what does it save? Supernet mode against
fine-tune mode on the quick-start studies.

For each study (a copy in ``--work``, with a copy of this machine's ``studies/latency.db`` if there is one):

1. the teacher is pretrained with the study's recipe, then the supernet is trained (``nas supernet``: the sandwich
   rule, ``--supernet-steps`` steps, ``--random-subnets`` random subnets per step);
2. ``--archs`` architectures are drawn from the space with a fixed seed, none of them a sandwich anchor (the densest
   and the predicted-cheapest subnet);
3. each is scored three ways, on the test split: with the weights it inherits from the supernet; after
   ``--finetune-steps`` steps of the trial recipe from there; and stand-alone, fine-tuned from the teacher with the
   per-trial recipe (``budget.epochs`` x ``steps_per_epoch``), once per ``--seeds`` (the seed-to-seed agreement is the
   ceiling any proxy can reach);
   with ``--split b<i>.<key>`` (few-shot splitting), also with the weights of the sub-supernet of its own option of
   that decision: one per option, that decision fixed, each trained ``--split-steps`` more steps from the one-shot
   supernet's weights (Zhao et al., ICML 2021);
4. Kendall's tau and Spearman's rho between each proxy and the stand-alone accuracy (seed 0); with
   ``--reference-epochs N``, also against each architecture fine-tuned N epochs (as long as the final fine-tune), the
   reference a user's exported model is closer to;
5. cost: the supernet's training time and the seconds per trial of each mode (as a search runs it: a fine-tune-mode
   trial scores the search and the test split, a supernet-mode trial the search split only), hence trials per hour
   for a 200-trial study, supernet training included, and per trial alone;
6. equal wall time: fine-tune mode spends the stand-alone runs' time on its ``--archs`` trials; supernet mode spends the
   same time on its training plus as many inherited-weight trials as fit. Each mode's Pareto set (its own search
   accuracy x predicted latency) is then fine-tuned stand-alone, and the fronts compared by hypervolume on that test
   accuracy x predicted latency.

    python bench/supernet.py [--studies quickstart pvt_quickstart] [--archs 24] [--seeds 0 1]

Writes ``bench/results/supernet.{json,md}``; ``summary`` holds ``kendall_tau``, ``spearman_rho``,
``trials_per_hour_ratio`` and the rest per study. Stand-alone results are cached in ``--work`` (a rerun skips them).
Latency is the predictor's, fitted on a profile of the space with untuned kernels (``--kernel-trials``, as
``make demo`` does), not a fresh measurement of each architecture.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ranking import kendall_tau, spearman_rho  # noqa: E402
from record import write  # noqa: E402

from nas import pipeline  # noqa: E402
from nas.training.evaluator import Evaluator  # noqa: E402
from nas.study import Study  # noqa: E402
from search_spaces import ArchConfig  # noqa: E402
from search_spaces.supernet import densest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "studies"


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """(accuracy, latency, id): those no other point beats on both (higher accuracy, lower latency)."""
    return [p for p in points if not any((q[0] >= p[0] and q[1] <= p[1]) and (q[0] > p[0] or q[1] < p[1])
                                         for q in points)]


def hypervolume(points: list[tuple[float, float]], reference_ms: float) -> float:
    """Area dominated by (accuracy, latency) points above accuracy 0 and below ``reference_ms``."""
    area, best = 0.0, 0.0
    front = sorted((p for p in points if p[1] < reference_ms), key=lambda p: p[1])
    for i, (accuracy, latency) in enumerate(front):
        best = max(best, accuracy)
        right = front[i + 1][1] if i + 1 < len(front) else reference_ms
        area += best * (right - latency)
    return area


def _copy_study(name: str, work: Path, args) -> Path:
    data = yaml.safe_load((STUDIES / f"{name}.yaml").read_text())
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "latency.db").exists() and (STUDIES / "latency.db").exists():  # this machine's table (the
        shutil.copyfile(STUDIES / "latency.db", folder / "latency.db")  # bench profiles what it lacks)
    data["latency"] = {**data.get("latency", {}), "trials": args.kernel_trials}
    data["evaluation"] = {"mode": "supernet", "supernet_steps": args.supernet_steps,
                          "random_subnets": args.random_subnets, "finetune_steps": 0}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _scored(evaluator: Evaluator, config: ArchConfig, seed: int | None = None, epochs: int | None = None) -> dict:
    """A trial as a search runs it, timed (a fine-tune-mode trial evaluates the test split, a supernet-mode trial
    does not), and its test accuracy (evaluated after the timing where the trial did not). ``epochs``: of the trial
    recipe, instead of the study's budget."""
    start = time.perf_counter()
    result, model = evaluator.run(config, seed=seed, epochs=epochs)
    seconds = time.perf_counter() - start
    test = result.test or evaluator.evaluate_test(model)
    return {"search": result.search.accuracy, "test": test.accuracy, "latency_ms": result.latency_ms,
            "seconds": seconds}


def _draw(study: Study, count: int, seed: int, exclude: set[str]) -> list[ArchConfig]:
    rng = np.random.default_rng(seed)
    drawn: dict[str, ArchConfig] = {}
    while len(drawn) < count:
        config = study.space.sample(rng)
        if config.id not in exclude:
            drawn.setdefault(config.id, config)
    return list(drawn.values())


def bench_study(name: str, args) -> tuple[list[dict], dict]:
    path = _copy_study(name, args.work, args)
    cache_file = path.with_name("standalone.json")
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}

    def standalone(config: ArchConfig, seed: int, epochs: int | None = None) -> dict:
        key = f"{config.id}:{seed}:{epochs or study.budget.epochs}x{study.budget.steps_per_epoch}"
        if key not in cache:
            cache[key] = _scored(finetune, config, seed, epochs)
            cache_file.write_text(json.dumps(cache, indent=1))
        return cache[key]

    study = Study.load(path)
    if args.standalone_from:
        _recorded_standalone(args.standalone_from, name, study, args.seeds, cache)
    profiled = pipeline.profile(study)  # what the table lacks for this space, as `make demo` does
    if pipeline.needs_fit(study, profiled):
        fitted = pipeline.fit_latency(study, pipeline.FitOptions(max_model_error=10.0))
        assert fitted.refused is None, fitted.refused
    pretrained = pipeline.pretrain(study)
    print(f"{name}: teacher {'cached' if pretrained.cached else f'trained in {pretrained.seconds:.0f} s'}", flush=True)
    if args.retrain and study.supernet_path.exists():
        study.supernet_path.unlink()
    trained = pipeline.supernet(study)
    train_s = trained.seconds if not trained.cached else float(json.loads(
        path.with_name("supernet-seconds.json").read_text())["seconds"])
    if not trained.cached:
        path.with_name("supernet-seconds.json").write_text(json.dumps({"seconds": trained.seconds}))
    print(f"{name}: supernet {args.supernet_steps} steps in {train_s:.0f} s", flush=True)

    inherited = Evaluator(study)
    tuned = Evaluator(Study.load(path) if args.finetune_steps == 0 else _with_steps(path, args.finetune_steps))
    finetune = Evaluator(study, mode="finetune")
    from latency_model.predictor import Predictor

    predictor = Predictor.load(study.latency.predictor)
    from nas.training.supernet_trainer import cheapest

    anchors = {densest(study.space).id, cheapest(study, predictor, study.latency.batch_sizes[0]).id}
    archs = _draw(study, args.archs, args.seed, anchors)
    if args.standalone_from and archs:  # a recorded figure is used only where this machine reproduces one
        key = f"{archs[0].id}:{args.seeds[0]}:{study.budget.epochs}x{study.budget.steps_per_epoch}"
        recorded = cache.pop(key, None)
        fresh = standalone(archs[0], args.seeds[0])
        if recorded is not None and abs(recorded["test"] - fresh["test"]) > 1e-3:
            raise SystemExit(f"--standalone-from {args.standalone_from}: {key} recorded test accuracy "
                             f"{recorded['test']}, measured now {fresh['test']}: not the same teacher or recipe")
    split = _few_shot(study, path, args) if args.split else None
    rows = []
    for i, config in enumerate(archs):
        row = {"study": name, "arch": config.id, "describe": "; ".join(b.describe() for b in config.blocks)}
        zero = _scored(inherited, config)
        steps = _scored(tuned, config)
        row.update({"inherited_test": zero["test"], "inherited_search": zero["search"],
                    f"after_{args.finetune_steps}_steps_test": steps["test"],
                    "latency_ms": round(zero["latency_ms"], 4),
                    "inherited_s": round(zero["seconds"], 2), "steps_s": round(steps["seconds"], 2)})
        if split is not None:
            option, evaluator = split.evaluator(config)
            row.update({"split_option": option, "few_shot_test": _scored(evaluator, config)["test"]})
        for seed in args.seeds:
            alone = standalone(config, seed)
            row[f"standalone_test_seed{seed}"] = alone["test"]
            row[f"standalone_search_seed{seed}"] = alone["search"]
            row[f"standalone_s_seed{seed}"] = round(alone["seconds"], 1)
            if args.reference_epochs:
                long = standalone(config, seed, args.reference_epochs)
                row[f"long_test_seed{seed}"] = long["test"]
                row[f"long_s_seed{seed}"] = round(long["seconds"], 1)
        rows.append(row)
        print(f"{name} {i + 1}/{len(archs)} {config.id}: inherited {zero['test']:.3f}, "
              f"after steps {steps['test']:.3f}, "
              f"stand-alone {row[f'standalone_test_seed{args.seeds[0]}']:.3f}", flush=True)

    reference = [r[f"standalone_test_seed{args.seeds[0]}"] for r in rows]
    summary = {"study": name, "archs": len(rows), "supernet_steps": args.supernet_steps,
               "random_subnets": args.random_subnets,
               "kendall_tau": round(kendall_tau([r["inherited_test"] for r in rows], reference), 3),
               "spearman_rho": round(spearman_rho([r["inherited_test"] for r in rows], reference), 3),
               f"kendall_tau_after_{args.finetune_steps}_steps": round(kendall_tau(
                   [r[f"after_{args.finetune_steps}_steps_test"] for r in rows], reference), 3),
               f"spearman_rho_after_{args.finetune_steps}_steps": round(spearman_rho(
                   [r[f"after_{args.finetune_steps}_steps_test"] for r in rows], reference), 3)}
    if split is not None:
        few_shot = [r["few_shot_test"] for r in rows]
        summary.update({"split": args.split, "split_steps": args.split_steps, "split_options": len(split.studies),
                        "split_train_s": round(split.seconds, 1),
                        "kendall_tau_few_shot": round(kendall_tau(few_shot, reference), 3),
                        "spearman_rho_few_shot": round(spearman_rho(few_shot, reference), 3)})
    if len(args.seeds) > 1:
        other = [r[f"standalone_test_seed{args.seeds[1]}"] for r in rows]
        summary["kendall_tau_seed_to_seed"] = round(kendall_tau(other, reference), 3)
        summary["spearman_rho_seed_to_seed"] = round(spearman_rho(other, reference), 3)
    if args.reference_epochs:  # the same architectures fine-tuned as long as the final fine-tune would
        long = [r[f"long_test_seed{args.seeds[0]}"] for r in rows]
        summary.update({"reference_epochs": args.reference_epochs,
                        "kendall_tau_long": round(kendall_tau([r["inherited_test"] for r in rows], long), 3),
                        "kendall_tau_long_vs_trial": round(kendall_tau(reference, long), 3)})
        if split is not None:
            summary["kendall_tau_few_shot_long"] = round(kendall_tau([r["few_shot_test"] for r in rows], long), 3)
        if len(args.seeds) > 1:
            summary["kendall_tau_long_seed_to_seed"] = round(kendall_tau(
                [r[f"long_test_seed{args.seeds[1]}"] for r in rows], long), 3)
    trial_supernet = float(np.mean([r["inherited_s"] for r in rows]))
    trial_finetune = float(np.mean([r[f"standalone_s_seed{args.seeds[0]}"] for r in rows]))
    trials = 200
    summary.update({"supernet_train_s": round(train_s, 1), "seconds_per_trial_supernet": round(trial_supernet, 2),
                    f"seconds_per_trial_supernet_{args.finetune_steps}_steps": round(float(np.mean(
                        [r["steps_s"] for r in rows])), 2),
                    "seconds_per_trial_finetune": round(trial_finetune, 2),
                    "trials_per_hour_supernet": round(3600 * trials / (train_s + trials * trial_supernet), 1),
                    "trials_per_hour_finetune": round(3600 / trial_finetune, 1),
                    "trials_per_hour_ratio": round(trials * trial_finetune / (train_s + trials * trial_supernet), 2),
                    "seconds_per_trial_ratio": round(trial_finetune / trial_supernet, 2)})

    # equal wall time: fine-tune mode's trials are the drawn architectures (a random sampler); supernet mode gets the
    # same time for its training and its trials
    wall = trial_finetune * len(rows)
    budget_trials = max(0, int((wall - train_s) / trial_supernet))
    more = _draw(study, budget_trials, args.seed + 1, anchors) if budget_trials else []
    scored = {config.id: _scored(inherited, config) for config in more}
    configs = {c.id: c for c in more}
    finetune_front = pareto([(r[f"standalone_search_seed{args.seeds[0]}"], r["latency_ms"], r["arch"]) for r in rows])
    supernet_front = pareto([(s["search"], s["latency_ms"], key) for key, s in scored.items()])
    by_id = {r["arch"]: r for r in rows}
    final = {}
    for _, latency, key in supernet_front:  # what a user gets: each front member fine-tuned the trial way
        config = configs[key]
        final[key] = (standalone(config, args.seeds[0])["test"], latency)
    finetune_points = [(by_id[key][f"standalone_test_seed{args.seeds[0]}"], latency) for _, latency, key in
                       finetune_front]
    supernet_points = list(final.values())
    reference_ms = 1.1 * max([p[1] for p in finetune_points + supernet_points] + [r["latency_ms"] for r in rows])
    summary.update({"equal_wall_s": round(wall, 1), "supernet_mode_trials_in_that_time": len(more),
                    "finetune_front_size": len(finetune_points), "supernet_front_size": len(supernet_points),
                    "hypervolume_finetune": round(hypervolume(finetune_points, reference_ms), 5),
                    "hypervolume_supernet": round(hypervolume(supernet_points, reference_ms), 5),
                    "hypervolume_reference_ms": round(reference_ms, 4)})
    return rows, summary


class _FewShot:
    """The sub-supernets of one decision (one per option) and an evaluator for each."""

    def __init__(self, decision: str, studies: dict[str, Study], seconds: float) -> None:
        self.block, self.key = int(decision[1:decision.index(".")]), decision.split(".", 1)[1]
        self.studies, self.seconds = studies, seconds
        self.evaluators = {option: Evaluator(sub) for option, sub in studies.items()}

    def evaluator(self, config: ArchConfig) -> tuple[str, Evaluator]:
        option = getattr(config.blocks[self.block], self.key)
        return option, self.evaluators[option]


def _few_shot(study: Study, path: Path, args) -> _FewShot:
    """Split the trained one-shot supernet on ``args.split`` (``b<i>.<key>``): per option, a study of the space with
    that decision fixed, its supernet trained ``args.split_steps`` steps from the one-shot weights."""
    block, key = args.split.split(".", 1)
    index = int(block[1:])
    if study.space.tied or not block.startswith("b") or not 0 <= index < len(study.space.blocks):
        raise SystemExit(f"--split {args.split}: expected b<block index>.<key> of an untied space with "
                         f"{len(study.space.blocks)} blocks")
    options = study.space.blocks[index].get(key)
    data = yaml.safe_load(path.read_text())
    studies, seconds = {}, 0.0
    for option in options:
        sub = dict(data, name=f"{data['name']}-{block}-{key}-{option}",
                   model={**data["model"], "checkpoint": str(study.teacher_path)},
                   evaluation={**data["evaluation"], "supernet_steps": args.split_steps})
        sub["space"] = {**data["space"], "blocks": {**(data["space"].get("blocks") or {}), index: {key: [option]}}}
        sub_path = path.with_name(f"{sub['name']}.yaml")
        sub_path.write_text(yaml.safe_dump(sub, sort_keys=False))
        studies[option] = Study.load(sub_path)
        if args.retrain and studies[option].supernet_path.exists():
            studies[option].supernet_path.unlink()
        trained = pipeline.supernet(studies[option], start_from=study.supernet_path)
        seconds_file = sub_path.with_name(f"{sub['name']}-seconds.json")
        if not trained.cached:
            seconds_file.write_text(json.dumps({"seconds": trained.seconds}))
        seconds += float(json.loads(seconds_file.read_text())["seconds"])
        print(f"{study.name}: sub-supernet {key}={option} of block {index}, {args.split_steps} steps", flush=True)
    return _FewShot(args.split, studies, seconds)


def _recorded_standalone(path: Path, name: str, study: Study, seeds: list[int], cache: dict) -> None:
    """Stand-alone results of a recorded run of this bench (its rows) into the cache, under the study's budget."""
    rows = [r for r in json.loads(path.read_text())["rows"] if r["study"] == name]
    for row in rows:
        for seed in seeds:
            if f"standalone_test_seed{seed}" in row:
                cache.setdefault(f"{row['arch']}:{seed}:{study.budget.epochs}x{study.budget.steps_per_epoch}", {
                    "search": row[f"standalone_search_seed{seed}"], "test": row[f"standalone_test_seed{seed}"],
                    "latency_ms": row["latency_ms"], "seconds": row[f"standalone_s_seed{seed}"]})


def _with_steps(path: Path, steps: int) -> Study:
    data = yaml.safe_load(path.read_text())
    data["evaluation"]["finetune_steps"] = steps
    other = path.with_name(path.stem + f"-steps{steps}.yaml")
    other.write_text(yaml.safe_dump(data, sort_keys=False))
    study = Study.load(other)
    # the same supernet file (its name follows the study's): share it
    target = study.supernet_path
    if not target.exists():
        shutil.copyfile(Study.load(path).supernet_path, target)
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", nargs="+", default=["quickstart", "pvt_quickstart"])
    parser.add_argument("--archs", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--seed", type=int, default=2026, help="of the drawn architectures")
    parser.add_argument("--supernet-steps", type=int, default=300)
    parser.add_argument("--random-subnets", type=int, default=1)
    parser.add_argument("--finetune-steps", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("/tmp/supernet-bench"))
    parser.add_argument("--retrain", action="store_true", help="train the supernet again (its time is measured)")
    parser.add_argument("--kernel-trials", type=int, default=0, help="of the profile the predictor is fitted on "
                                                                      "(default 0: untuned, as `make demo`)")
    parser.add_argument("--reference-epochs", type=int, default=0,
                        help="also fine-tune each architecture this many epochs of the trial recipe (as long as the "
                             "final fine-tune), per seed, and rank against that too")
    parser.add_argument("--standalone-from", type=Path,
                        help="the stand-alone results of a recorded run (bench/results/*.json rows) instead of "
                             "fine-tuning again; the first is fine-tuned again and must agree")
    parser.add_argument("--split", help="few-shot splitting on this decision, b<block>.<key> (e.g. b0.attention): "
                                        "one sub-supernet per option, scored beside the one-shot supernet")
    parser.add_argument("--split-steps", type=int, default=250, help="steps of each sub-supernet from the one-shot "
                                                                     "weights")
    parser.add_argument("--name", default="supernet")
    args = parser.parse_args()
    rows, summaries = [], []
    for name in args.studies:
        study_rows, summary = bench_study(name, args)
        rows += study_rows
        summaries.append(summary)
        print(json.dumps(summary, indent=1), flush=True)
    first = summaries[0]
    notes = (f"{args.archs} architectures per study drawn with seed {args.seed} (no sandwich anchor); test split. "
             "inherited: the supernet's weights as they are; after_K_steps: K steps of the trial recipe from them; "
             "standalone: the per-trial fine-tune from the teacher. Latency: predicted. "
             f"Quick-start: tau {first['kendall_tau']} (seed-to-seed ceiling "
             f"{first.get('kendall_tau_seed_to_seed', 'n/a')}), trials/hour x{first['trials_per_hour_ratio']}."
             + (f" Few-shot ({args.split}, {first['split_options']} sub-supernets x {args.split_steps} steps from "
                f"the one-shot weights, {first['split_train_s']} s more training): tau "
                f"{first['kendall_tau_few_shot']}." if args.split else "")
             + (f" Against {args.reference_epochs}-epoch fine-tunes (long_*): tau {first['kendall_tau_long']} "
                f"(seed-to-seed {first.get('kendall_tau_long_seed_to_seed', 'n/a')}; the trial-length fine-tunes "
                f"rank them with tau {first['kendall_tau_long_vs_trial']})." if args.reference_epochs else ""))
    write(args.name, rows, notes, {"summary": {"kendall_tau": first["kendall_tau"],
                                               "spearman_rho": first["spearman_rho"],
                                               "trials_per_hour_ratio": first["trials_per_hour_ratio"]},
                                   "per_study": summaries})


if __name__ == "__main__":
    main()
