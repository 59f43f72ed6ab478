"""Trials per hour of the same study on the Optuna and Ray backends, 1 and 2 concurrent trials, on this machine.

Needs the study's predictor and teacher (run ``make demo`` or ``nas run`` first). Each configuration searches a fresh
SQLite study of ``--trials`` trials (same study file, same budget per trial):

    python bench/search_backends.py [--study studies/quickstart.yaml] [--trials 8]

Per configuration: wall time of the whole ``search`` call (Ray: including starting and stopping the local Ray),
trials per hour, the mean objective time (``train_s``: fine-tune, validation, prediction) and the rest per trial
(``wall / trials * concurrency - train_s``: process start, storage, scheduling), so the two backends' overhead per
trial compares in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

import optuna  # noqa: E402

from nas import pipeline  # noqa: E402
from nas.study import Study  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="studies/quickstart.yaml")
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend, concurrency in (("optuna", 1), ("optuna", 2), ("ray", 1), ("ray", 2)):
            study = Study.load(args.study, storage=f"sqlite:///{tmp}/{backend}-{concurrency}.db")
            study = replace(study, budget=replace(study.budget, n_trials=args.trials))
            start = time.perf_counter()
            cpus = 2 / concurrency if backend == "ray" else 1.0
            pipeline.search(study, backend, pipeline.SearchOptions(args.trials, workers=concurrency,
                                                                   cpus_per_trial=cpus))
            wall = time.perf_counter() - start
            trials = optuna.load_study(study_name=study.name, storage=study.storage).get_trials()
            done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
            train = statistics.fmean(t.user_attrs["train_s"] for t in done if "train_s" in t.user_attrs)
            per_trial = wall / len(done)
            rows.append({"backend": backend, "concurrent": concurrency, "trials": len(done),
                         "wall_s": round(wall, 1), "trials_per_hour": round(3600 / per_trial, 1),
                         "mean_train_s": round(train, 2),
                         "overhead_per_trial_s": round(per_trial * concurrency - train, 2)})
            print(rows[-1], flush=True)
    by = {(r["backend"], r["concurrent"]): r for r in rows}
    extra = {f"{b}_scaling_2_vs_1": round(by[(b, 2)]["trials_per_hour"] / by[(b, 1)]["trials_per_hour"], 3)
             for b in ("optuna", "ray")}
    write("search-backends", rows, extra=extra, notes=(
        f"{args.trials} trials of {args.study} per configuration; scaling 2 vs 1 concurrent trials: optuna "
        f"{extra['optuna_scaling_2_vs_1']}x, ray {extra['ray_scaling_2_vs_1']}x (2 cores: the two trials share them)"))


if __name__ == "__main__":
    main()
