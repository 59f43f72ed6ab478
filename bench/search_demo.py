"""What the quick-start search found, and what the search machinery costs per trial.

Run after the search (``make demo``, i.e. ``nas run studies/quickstart.yaml --kernel-trials 0 --workers 2``):

    python bench/search_demo.py [--study studies/quickstart.yaml] [--epochs 5]

1. ``search-demo-front``: every Pareto trial of the study and the two reference trials (all-dense, the paper's
   allocation), each fine-tuned again from the teacher for ``--epochs`` full passes, with its search accuracy (what
   chose it), its test accuracy ± one binomial standard error after the trial and after that fine-tune (what to
   report), its predicted latency, and its latency measured on the kernels (the study's target and tuning trials)
   in the same run.
2. ``search-demo-overhead``: from the stored trials, where a trial's time goes: the objective's own work (fine-tune,
   validation, prediction: ``train_s``), the storage writes inside the objective (``wall_s - train_s``), the
   ask/tell bookkeeping around it (Optuna's start/complete stamps minus ``wall_s``) and the gap before a worker's
   next trial (claiming it: lock, count, ask).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

from nas.finetune import finetune  # noqa: E402
from nas.search.report import pareto_front, points  # noqa: E402
from nas.search.storage import open_study  # noqa: E402
from nas.study import Study  # noqa: E402


def front_rows(study: Study, ostudy, epochs: int) -> list[dict]:
    pts = points(ostudy)
    front = pareto_front(pts)
    chosen = front + [p for p in pts if p.reference and p not in front]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in chosen:
            result = finetune(study, p.config, epochs, Path(tmp) / str(p.trial.number))
            rows.append({
                "point": p.reference or "pareto", "trial": p.trial.number, "pareto": p in front,
                "search_accuracy": round(p.accuracy, 4), "trial_test_accuracy": round(p.test_accuracy, 4),
                "trial_test_se": round(p.test_se, 4), "finetuned_test_accuracy": round(result.test_accuracy, 4),
                "finetuned_test_se": round(result.test_se, 4),
                "predicted_ms": round(result.predicted_ms, 4), "measured_ms": round(result.measured_ms, 4),
                "predicted/measured": round(result.predicted_ms / result.measured_ms, 3),
                "architecture": "; ".join(f"{i}:{b.describe()}" for i, b in enumerate(p.config.blocks)),
            })
            print(rows[-1], flush=True)
    return rows


def overhead_rows(ostudy) -> tuple[list[dict], dict]:
    finished = [t for t in ostudy.get_trials(deepcopy=False)
                if t.datetime_complete and "wall_s" in t.user_attrs]
    trials = [t for t in finished if "duplicate_of" not in t.user_attrs]  # repeats reuse a result: no training
    span = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    wall = [t.user_attrs["wall_s"] for t in trials]
    train = [t.user_attrs["train_s"] for t in trials]
    repeats = [t.user_attrs["wall_s"] for t in finished if "duplicate_of" in t.user_attrs]
    gaps = []
    by_worker: dict[str, list] = {}
    for t in finished:
        by_worker.setdefault(t.user_attrs.get("worker", "?"), []).append(t)
    for runs in by_worker.values():
        runs.sort(key=lambda t: t.datetime_start)
        gaps += [(b.datetime_start - a.datetime_complete).total_seconds() for a, b in zip(runs, runs[1:])]
    mean = statistics.fmean
    parts = {
        "objective work (train_s)": mean(train),
        "storage writes inside the objective (wall_s - train_s)": mean(w - t for w, t in zip(wall, train)),
        "ask/tell around the objective (span - wall_s)": mean(s - w for s, w in zip(span, wall)),
        "claiming the next trial (gap between a worker's trials)": mean(gaps) if gaps else 0.0,
    }
    total = sum(parts.values())
    rows = [{"part": k, "mean_s": round(v, 4), "share": round(v / total, 4)} for k, v in parts.items()]
    summary = {"trials": len(trials), "repeats": len(repeats),
               "repeat_wall_s": round(statistics.fmean(repeats), 4) if repeats else None, "workers": len(by_worker),
               "overhead_share": round(1 - parts["objective work (train_s)"] / total, 4)}
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="studies/quickstart.yaml")
    parser.add_argument("--epochs", type=int, default=5, help="full passes of the re-fine-tune of each point")
    args = parser.parse_args()
    study = Study.load(args.study)
    ostudy = open_study(study, create=False)
    rows, summary = overhead_rows(ostudy)
    write("search-demo-overhead", rows, notes=(
        f"{summary['trials']} trained trials of {study.name} by {summary['workers']} worker process(es); machinery "
        f"(storage + driver) is {summary['overhead_share']:.2%} of a trial's time. {summary['repeats']} more trials "
        f"repeated an architecture and reused its result in {summary['repeat_wall_s']} s each"), extra=summary)
    front = front_rows(study, ostudy, args.epochs)
    write("search-demo-front", front, notes=(
        f"Pareto front of {study.name} ({len(ostudy.trials)} trials) and the reference points, each fine-tuned "
        f"again for {args.epochs} full epochs from the teacher; latency on {study.latency.device}, kernels with "
        f"{study.latency.trials} tuning trials per kernel unless the profile used fewer (make demo: 0, untuned)"))


if __name__ == "__main__":
    main()
