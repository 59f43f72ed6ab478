"""Which SQLite settings let several search workers share one study file without "database is locked" failures.

Each configuration runs ``--workers`` processes against a fresh SQLite study; every process does ``--trials`` trials
the way a search worker does (heartbeat thread on, ask, suggest 8 block choices, 8 user attributes, ``--work-ms`` of
"training", tell), with no pause between trials, so the storage sees more contention than a real search, whose
trials train for seconds. Counted per configuration: trials that raised "database is locked", other errors, and the
trials stored COMPLETE (must equal workers x trials).

    python bench/sqlite_locking.py [--workers 4 8] [--trials 40] [--work-ms 0]

Configurations: Optuna's RDBStorage as it comes (SQLite's 5 s busy timeout, rollback journal); a 60 s busy timeout;
a 60 s busy timeout and WAL, which is what ``nas search`` opens (:func:`nas.search.storage.storage_of`).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

import optuna  # noqa: E402
from optuna.storages._heartbeat import get_heartbeat_thread  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

CONFIGS = ("optuna defaults (5 s timeout)", "60 s busy timeout", "60 s busy timeout + WAL (nas search)")


def _storage(config: str, url: str) -> optuna.storages.RDBStorage:
    from nas.search.storage import storage_of

    warnings.simplefilter("ignore")
    if config == CONFIGS[2]:
        return storage_of(url, heartbeat_s=1)
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if config == CONFIGS[1] else {}
    return optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2, **kwargs)


def _worker(config: str, url: str, trials: int, work_ms: float, results) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    locked = other = 0
    study = optuna.load_study(study_name="bench", storage=_storage(config, url))
    for _ in range(trials):
        try:
            trial = study.ask()
            with get_heartbeat_thread(trial._trial_id, study._storage):
                for b in range(8):
                    trial.suggest_categorical(f"b{b}.attention", ["msa", "linear", "additive"])
                    trial.set_user_attr(f"attr{b}", "x" * 200)
                time.sleep(work_ms / 1000)
            study.tell(trial, [0.5, 1.0])
        except Exception as e:  # noqa: BLE001 - counting what fails is the point
            if "locked" in str(e):
                locked += 1
            else:
                other += 1
    results.put((locked, other))


def run(config: str, workers: int, trials: int, work_ms: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        optuna.create_study(study_name="bench", storage=_storage(config, url), directions=["maximize", "minimize"])
        context = mp.get_context("spawn")
        results = context.Queue()
        processes = [context.Process(target=_worker, args=(config, url, trials, work_ms, results))
                     for _ in range(workers)]
        start = time.perf_counter()
        for p in processes:
            p.start()
        counts = [results.get() for _ in processes]
        for p in processes:
            p.join()
        wall = time.perf_counter() - start
        study = optuna.load_study(study_name="bench", storage=url)
        complete = len(study.get_trials(states=(TrialState.COMPLETE,)))
    return {"configuration": config, "workers": workers, "trials_planned": workers * trials,
            "locked_errors": sum(c[0] for c in counts), "other_errors": sum(c[1] for c in counts),
            "complete": complete, "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--work-ms", type=float, default=0.0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for workers in args.workers:
        for config in CONFIGS:
            rows.append(run(config, workers, args.trials, args.work_ms))
            print(rows[-1], flush=True)
    write("sqlite-locking", rows, notes=(
        f"{' and '.join(map(str, args.workers))} processes on one SQLite study, {args.trials} trials each with no "
        "pause between them "
        f"(heartbeats on, {args.work_ms:g} ms of work per trial): trials lost to 'database is locked' per setting"))


if __name__ == "__main__":
    main()
