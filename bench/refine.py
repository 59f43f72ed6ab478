"""How far the search's proxy can be trusted, and what refining its front costs, on the quick-starts.

    python bench/refine.py [--studies studies/quickstart.yaml studies/pvt_quickstart.yaml] [--top 6] [--seeds 1]
                           [--epochs 3] [--workers 2]

For each study: its search as ``make demo`` runs it (``nas run --no-refine`` with untuned kernels and 2 workers;
every step a cache hit when done), then ``nas refine`` of the front's ``--top`` candidates and the dense model,
``--seeds`` x ``--epochs`` each, on ``--workers`` local workers, into a copy of the study's storage (the study's own
refine stays as it is). Recorded:

1. ``refine``: one row per study: the architectures refined, Kendall's tau between their inherited (search) accuracy
   and their refined test accuracy, whether the refined order differs from the search's, and the cost: the
   refine's wall time against one fine-tune's (the jobs' mean) per worker slot, i.e. ``wall / (ceil(jobs /
   workers) x job)`` (1.0: no worker idle while jobs remain and no overhead).
2. ``refine-architectures``: one row per refined architecture: inherited accuracy, refined search and test accuracy,
   predicted and measured latency, energy.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

from nas import attributes as attr  # noqa: E402
from nas import pipeline  # noqa: E402
from nas.search.storage import open_refine_study, refine_study_name  # noqa: E402
from nas.study import Study  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def searched(path: Path, workers: int) -> Study:
    """The study with its search done (as ``make demo`` runs it, without the refine)."""
    study = Study.load(path)
    options = pipeline.RunOptions(search=pipeline.SearchOptions(workers=workers, driver_seed=0), kernel_trials=0,
                                  refine=False)
    result = pipeline.run(study, options)
    if result.stopped:
        raise SystemExit(f"{path}: the run stopped before the search: {result.stopped}")
    return study


def refine_copy(study: Study, scratch: Path, args) -> tuple[pipeline.RefineResult, float, Study]:
    """``nas refine`` into a copy of the study's SQLite storage."""
    url = study.storage
    if not url.startswith("sqlite:///"):
        raise SystemExit(f"{study.path}: this bench copies SQLite storage only, not {url}")
    copy = scratch / f"{study.name}.db"
    shutil.copyfile(url.removeprefix("sqlite:///"), copy)
    study = Study.load(study.path, storage=f"sqlite:///{copy}")
    if open_refine_study(study, create=False) is not None:  # the study's own refine: every job trained afresh here
        optuna.delete_study(study_name=refine_study_name(study), storage=study.storage)
    started = time.perf_counter()
    result = pipeline.refine(study, pipeline.RefineOptions(top=args.top, seeds=args.seeds, epochs=args.epochs,
                                                           workers=args.workers))
    return result, time.perf_counter() - started, study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", nargs="+", type=Path,
                        default=[ROOT / "studies" / "quickstart.yaml", ROOT / "studies" / "pvt_quickstart.yaml"])
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows, architectures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.studies:
            study = searched(path, args.workers)
            result, wall, copy = refine_copy(study, Path(tmp), args)
            jobs = [t for t in open_refine_study(copy, create=False).get_trials(deepcopy=False)
                    if t.state.name == "COMPLETE"]
            job_s = statistics.mean(t.user_attrs[attr.WALL_S] for t in jobs)
            ideal = math.ceil(len(jobs) / args.workers) * job_s
            rows.append({"study": study.name, "refined": len(result.points), "jobs": result.jobs,
                         "kendall_tau": round(result.trust.tau, 3),
                         "order_differs": bool(result.trust.disagreement), "workers": args.workers,
                         "refine_s": round(wall, 1), "job_s": round(job_s, 1),
                         "wall_over_one_job_per_slot": round(wall / ideal, 2),
                         "disagreement": result.trust.disagreement or "-"})
            print(rows[-1], flush=True)
            front = {id(p) for p in result.front}
            for p in sorted(result.points, key=lambda p: -p.accuracy):
                architectures.append({
                    "study": study.name, "architecture": p.label, "inherited_accuracy": round(p.inherited, 4),
                    "refined_search_accuracy": round(p.accuracy, 4), "refined_test_accuracy": round(p.test_accuracy, 4),
                    "test_se": round(p.test_se, 4), "refined_front": id(p) in front,
                    "predicted_ms": round(p.latency_ms, 4),
                    "measured_ms": None if p.measured_ms is None else round(p.measured_ms, 4),
                    "energy_uj": round(p.energy_uj, 2), "blocks": p.config.compact()})
    notes = (f"Each study searched as `make demo` does (untuned kernels, {args.workers} workers, supernet mode), "
             f"then its front's top {args.top} (spread along it) and the dense model fine-tuned from the teacher, "
             f"{args.seeds} seed(s) x {args.epochs} epochs, on {args.workers} local workers. kendall_tau: inherited "
             "(supernet) search accuracy vs refined test accuracy over the refined architectures. "
             "wall_over_one_job_per_slot: the refine's wall time over ceil(jobs / workers) x the mean job time "
             "(1.0: no idle worker, no overhead); it includes timing each architecture on the kernels.")
    write("refine", rows, notes, extra={"architectures": architectures})


if __name__ == "__main__":
    main()
