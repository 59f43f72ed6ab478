"""The refine stage: the front's candidates and the dense model fine-tuned for real, per architecture and seed, on
the study's storage; it fills the refined front the report draws and the export picks from, never trains one job
twice (two drivers at once), resumes after a killed worker without redoing finished jobs (and gives the numbers an
uninterrupted run gives), and runs as Ray tasks too."""

import csv
import multiprocessing
import os
import signal
import threading
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from nas import attributes as attr
from nas import pipeline
from nas.search import refine as jobs_of
from nas.search.refined import combine, kendall_tau
from nas.search.storage import open_refine_study
from nas.study import Study

REFINE = {"top": 2, "seeds": 2, "epochs": 1}


def _searched(searchable, folder, n_trials: int = 4, **changes) -> Study:
    folder.mkdir(parents=True, exist_ok=True)
    study = Study.load(searchable(folder, budget={"n_trials": n_trials}, refine=REFINE, **changes))
    pipeline.search(study, "optuna", pipeline.SearchOptions(driver_seed=1))
    return study


def _jobs(study: Study) -> list[optuna.trial.FrozenTrial]:
    return open_refine_study(study, create=False).get_trials(deepcopy=False)


def _finished_once(study: Study) -> dict[str, float]:
    """Each job's test accuracy; fails if some job finished twice."""
    done: dict[str, float] = {}
    for t in _jobs(study):
        if t.state == TrialState.COMPLETE:
            key = t.user_attrs[attr.REFINE_JOB]
            assert key not in done, f"job {key} trained twice"
            done[key] = t.user_attrs[attr.TEST_ACCURACY]
    return done


def _refine_with_two_drivers(study: Study) -> list[pipeline.RefineResult]:
    """Two ``nas refine`` at once on one study (two terminals), one worker each."""
    results, errors = [], []

    def drive() -> None:
        try:
            results.append(pipeline.refine(study, pipeline.RefineOptions()))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    drivers = [threading.Thread(target=drive) for _ in range(2)]
    for d in drivers:
        d.start()
    for d in drivers:
        d.join()
    assert errors == []
    return results


def test_refine_fills_the_refined_front_that_report_and_export_use(searchable, tmp_path):
    study = _searched(searchable, tmp_path)
    results = _refine_with_two_drivers(study)
    assert len(_finished_once(study)) == results[0].jobs == results[1].jobs  # each job trained once
    result = pipeline.refine(study, pipeline.RefineOptions(workers=2))  # all done: nothing retrained
    assert result.ran == 0
    planned = jobs_of.plan(study, optuna.load_study(study_name=study.name, storage=study.storage), **result.settings)
    labels = {job.label for job in planned}
    assert "dense" in labels and 2 <= len(labels) <= 3  # two of the front (one may be dense) and the dense model
    assert result.jobs == len(planned) == 2 * len(labels)
    assert {p.label for p in result.points} == labels
    for p in result.points:
        assert p.seeds == 2 and p.epochs == 1
        assert 0 <= p.test_accuracy <= 1 and p.test_se > 0 and 0 <= p.accuracy <= 1
        assert p.measured_ms is not None and p.measured_ms > 0
        assert all(os.path.isfile(w) for w in p.weights)
        assert p.inherited == p.trial.user_attrs[attr.SEARCH_ACCURACY]
    assert result.front and set(map(id, result.front)) <= set(map(id, result.points))
    assert result.trust.n == len(result.points)


    rep = pipeline.report(study, tmp_path / "report")
    rows = list(csv.DictReader((tmp_path / "report" / "refined.csv").open()))
    assert {r["label"] for r in rows} == labels and (tmp_path / "report" / "refined.png").is_file()
    by_label = {p.label: p for p in result.points}
    for r in rows:
        assert float(r["test_accuracy"]) == pytest.approx(by_label[r["label"]].test_accuracy, abs=1e-4)
        assert r["seeds"] == "2"
    assert len(rep.refined) == len(result.points) and rep.trust.n == len(result.points)

    best = pipeline.export(study, "best", tmp_path / "best")[0]
    origin = yaml.safe_load(best.read_text())["provenance"]
    assert origin["chosen_from"] == "refined front"
    assert origin["trial"] in {p.trial.number for p in result.front}
    assert origin["refined"]["seeds"] == 2 and (best.parent / origin["weights"]).is_file()
    assert origin["weights_from"].startswith("refine")
    front = pipeline.export(study, "pareto", tmp_path / "front")
    assert {yaml.safe_load(f.read_text())["provenance"]["trial"] for f in front} == \
        {p.trial.number for p in result.front}

    from optuna_dashboard import get_note

    note = get_note(optuna.load_study(study_name=study.name, storage=study.storage))
    assert "picks from the **refined** front" in note and rep.trust.text in note


def _kill_a_worker_mid_job(study: Study) -> None:
    """A refine worker of its own process, SIGKILLed once it finished a job and is running the next."""
    context = multiprocessing.get_context("spawn")
    # as many threads as the one worker of pipeline.refine, so its numbers are the same
    worker = context.Process(target=jobs_of._local_worker, args=(str(study.path), study.storage, os.cpu_count(), "cpu"))
    worker.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        states = [t.state for t in _jobs(study)]
        if TrialState.COMPLETE in states and TrialState.RUNNING in states:
            break
        assert worker.is_alive(), "the worker ended before it could be killed"
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()


def test_a_killed_worker_loses_only_its_job_and_the_rerun_matches_an_uninterrupted_one(searchable, tmp_path):
    # a heartbeat every 2 s: stale after 4 s, which a loaded 2-core machine's live workers do not miss
    changes = {"search": {"heartbeat_s": 2, "retries": 0}}
    study = _searched(searchable, tmp_path / "killed", n_trials=3, **changes)
    ostudy = optuna.load_study(study_name=study.name, storage=study.storage)
    settings = {**REFINE, "seeds": 1, "epochs": 3}  # jobs long enough to be caught mid-way
    jobs = jobs_of.plan(study, ostudy, **settings)
    rstudy = open_refine_study(study)
    rstudy.set_user_attr("settings", settings)
    jobs_of.enqueue(study, rstudy, jobs)
    _kill_a_worker_mid_job(study)
    finished_before = {t.user_attrs[attr.REFINE_JOB]: t.number for t in _jobs(study) if t.state == TrialState.COMPLETE}
    killed = [t.user_attrs[attr.REFINE_JOB] for t in _jobs(study) if t.state == TrialState.RUNNING]
    assert finished_before and len(killed) == 1

    # what the next claim of any worker does (on the storage that watches heartbeats): once the killed worker's
    # heartbeat is stale (2 x heartbeat_s after its last beat; later on a loaded machine), its job is queued again
    deadline = time.monotonic() + 60
    waiting: list[str] = []
    while killed[0] not in waiting:
        assert time.monotonic() < deadline, "the killed worker's job was never queued again"
        time.sleep(0.5)
        jobs_of._requeue_stale(open_refine_study(study, heartbeat=True))
        waiting = [t.user_attrs[attr.REFINE_JOB] for t in _jobs(study) if t.state == TrialState.WAITING]
    result = pipeline.refine(study, pipeline.RefineOptions(seeds=1, epochs=3, measure=False))
    assert result.ran == len(jobs) - len(finished_before)
    trials = _jobs(study)
    assert [t.user_attrs[attr.REFINE_JOB] for t in trials if t.state == TrialState.FAIL] == killed
    for key, number in finished_before.items():  # finished jobs were not trained again
        assert [t.number for t in trials if t.user_attrs[attr.REFINE_JOB] == key] == [number]
    resumed = _finished_once(study)

    # the same study, searched the same way and refined without a kill, gives the same numbers
    fresh = _searched(searchable, tmp_path / "fresh", n_trials=3, **changes)
    pipeline.refine(fresh, pipeline.RefineOptions(seeds=1, epochs=3, measure=False))
    assert _finished_once(fresh) == resumed


def test_refine_runs_as_ray_tasks(searchable, tmp_path):
    study = _searched(searchable, tmp_path, n_trials=3)
    result = pipeline.refine(study, pipeline.RefineOptions(backend="ray", workers=2, seeds=1, measure=False))
    assert result.ran == result.jobs and len(result.points) == result.jobs
    workers = {t.user_attrs[attr.WORKER] for t in _jobs(study) if t.state == TrialState.COMPLETE}
    assert len(workers) >= 1 and all(f":{os.getpid()}" not in w for w in workers)  # in Ray's worker processes


def test_refine_refuses_a_study_without_trials_and_bad_options(searchable, tmp_path):
    from search_spaces.errors import ConfigError, StateError

    study = Study.load(searchable(tmp_path))
    with pytest.raises(StateError):
        pipeline.refine(study)
    with pytest.raises(ConfigError, match="--backend"):
        pipeline.refine(study, pipeline.RefineOptions(backend="slurm"))
    with pytest.raises(ConfigError, match="--ray-address"):
        pipeline.refine(study, pipeline.RefineOptions(ray_address="127.0.0.1:1"))


def test_the_refined_standard_error_counts_images_and_seeds():
    # one seed: its binomial standard error; seeds that agree add nothing; seeds that disagree add their spread
    assert combine([0.9], [0.01]) == (0.9, pytest.approx(0.01))
    assert combine([0.9, 0.9], [0.01, 0.01]) == (pytest.approx(0.9), pytest.approx(0.01))
    mean, se = combine([0.8, 0.9], [0.01, 0.01])
    assert mean == pytest.approx(0.85) and se == pytest.approx((0.01**2 + 0.005 / 2) ** 0.5)
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == 1 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1
