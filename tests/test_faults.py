"""Faults a long search must survive, caused for real: killed workers, many writers on one SQLite file."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from nas import attributes as attr
from nas import pipeline
from nas.cli import main
from nas.study import Study
from tiny import search


def _study(study_file):
    study = Study.load(study_file)
    return optuna.load_study(study_name=study.name, storage=study.storage)


def test_a_worker_killed_mid_trial_is_failed_retried_and_the_rerun_finishes(searchable, tmp_path):
    study_file = searchable(tmp_path, budget={"n_trials": 3, "epochs": 3, "steps_per_epoch": 15},
                            search={"heartbeat_s": 1, "retries": 1})
    searching = subprocess.Popen([sys.executable, "-m", "nas.cli", "search", str(study_file)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        victim = None
        while victim is None:
            assert searching.poll() is None and time.monotonic() < deadline, searching.stdout.read().decode()[-3000:]
            try:
                running = _study(study_file).get_trials(states=(TrialState.RUNNING,))
            except KeyError:  # the study is not created yet
                running = []
            # "config" is set once the trial's architecture is sampled: the kill lands in its training
            victim = next((t for t in running if t.number >= 1 and attr.CONFIG in t.user_attrs), None)
            time.sleep(0.2)
        os.kill(int(victim.user_attrs[attr.WORKER].rsplit(":", 1)[1]), signal.SIGKILL)
        output = searching.communicate(timeout=120)[0].decode()
    finally:
        if searching.poll() is None:
            searching.kill()
    assert searching.returncode == 2 and "stopped early" in output and "Traceback" not in output
    before = {t.number: t for t in _study(study_file).get_trials() if t.state == TrialState.COMPLETE}
    assert _study(study_file).trials[victim.number].state == TrialState.RUNNING  # nobody has noticed yet

    time.sleep(2.5)  # past the grace period of two missed beats
    search(study_file)
    trials = _study(study_file).get_trials()
    assert trials[victim.number].state == TrialState.FAIL  # not RUNNING forever
    retry = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == victim.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    for number, old in before.items():  # nothing stored before is lost or changed
        assert (trials[number].values, trials[number].params) == (old.values, old.params)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_four_workers_on_one_study(database, searchable, tmp_path, request):
    storage = {"storage": request.getfixturevalue("postgres_url")} if database == "postgresql" else {}
    study_file = searchable(tmp_path, budget={"n_trials": 8, "epochs": 1, "steps_per_epoch": 1}, **storage)
    search(study_file, workers=4)
    trials = _study(study_file).get_trials()
    assert [t.number for t in trials] == list(range(8))
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get(attr.FAIL_REASON) for t in trials]
    assert len({t.user_attrs[attr.WORKER] for t in trials}) >= 2


def test_storage_passwords_never_reach_the_output(searchable, tmp_path, capsys):
    study_file = searchable(tmp_path, storage="postgresql://nas:s3cret-pw@127.0.0.1:9/studies")
    assert main(["validate", str(study_file)]) == 0
    assert main(["search", str(study_file)]) == 2  # no server there: one clear line
    out, err = capsys.readouterr()
    assert "s3cret-pw" not in out + err and "nas:***@127.0.0.1" in out + err
    assert "Traceback" not in err and err.startswith("error: ")

    (tmp_path / "typo").mkdir()
    not_a_url = searchable(tmp_path / "typo", storage="nas:s3cret-pw@127.0.0.1/studies")  # the scheme forgotten
    assert main(["validate", str(not_a_url)]) == 2
    err = capsys.readouterr().err
    assert "storage" in err and "not a URL" in err and "s3cret-pw" not in err


def test_profile_killed_midway_keeps_its_rows_and_measures_only_the_rest(tmp_path, monkeypatch):

    from latency_model import db
    from tiny import PLUMBING_NOISE, TINY_MODEL, write_study

    study_file = write_study(tmp_path / "p.yaml", {
        "name": "p", "model": TINY_MODEL,
        "space": {"choices": {"attention": ["msa", "linear"], "qkv": ["dense", "shift"], "proj": ["dense"],
                              "mlp": ["dense", "shift"]}},
        "latency": {"trials": 0, "repeats": 3, "calibration": 4, **PLUMBING_NOISE}})
    env = {**os.environ, "SHIFTADD_CACHE": str(tmp_path / "kernels")}
    engine_url = f"sqlite:///{tmp_path / 'latency.db'}"
    profiling = subprocess.Popen([sys.executable, "-m", "nas.cli", "profile", str(study_file)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert profiling.poll() is None and time.monotonic() < deadline, "profile ended before it was killed"
            if (tmp_path / "latency.db").exists():
                try:
                    engine = db.connect(engine_url)
                    stored = sum(len(db.latest(engine, device)) for device in db.devices(engine))
                except Exception:  # noqa: BLE001 - the schema may be being created right now
                    stored = 0
                if stored >= 5:
                    break
            time.sleep(0.2)
        profiling.send_signal(signal.SIGKILL)
        profiling.wait(timeout=30)
    finally:
        if profiling.poll() is None:
            profiling.kill()
    engine = db.connect(engine_url)
    device = db.devices(engine)[0]
    kept = {(r.op, r.variant, str(r.shape)) for r in db.latest(engine, device)}
    assert len(kept) >= 5

    monkeypatch.setenv("SHIFTADD_CACHE", env["SHIFTADD_CACHE"])
    summary = pipeline.profile(Study.load(study_file))
    assert not summary.failed and not summary.noisy
    assert summary.skipped >= len(kept) and summary.measured  # only what was missing
    rows = db.latest(engine, device)
    assert kept <= {(r.op, r.variant, str(r.shape)) for r in rows}  # nothing measured before was lost


def test_a_full_disk_or_read_only_folder_stops_before_any_work(searchable, tmp_path, monkeypatch, capsys):
    """Both faults are mocked: the tests run as root (permissions do not stop it) on a disk with room."""
    import shutil
    from collections import namedtuple

    from nas import disk

    study_file = searchable(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30, 3 * 2**20))
    assert main(["search", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert "storage" in err and "only 3 MB free" in err and str(tmp_path) in err
    assert not (tmp_path / "tiny.db").exists()  # nothing was started
    for command in (["run"], ["profile"]):  # the other commands that write check first too
        assert main([*command, str(study_file)]) == 2
        err = capsys.readouterr().err
        assert "only 3 MB free" in err and "Traceback" not in err, (command, err)
    assert not (tmp_path / "tiny.db").exists()

    monkeypatch.setattr(disk.shutil, "disk_usage", shutil.disk_usage)
    monkeypatch.setattr(disk.os, "access", lambda path, mode: False)
    assert main(["search", str(study_file)]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_serving_the_dashboard_beyond_loopback_warns(searchable, tmp_path):
    import socket

    study_file = searchable(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "nas.cli", "dashboard", str(study_file), "--host", "0.0.0.0",
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        while not any("Ctrl-C" in line for line in lines):  # up to the line with the URL
            line = server.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
    finally:
        server.terminate()
        server.wait(timeout=30)
    said = " ".join("".join(lines).split())  # rich wraps long lines
    assert "warning: serving on 0.0.0.0" in said and "no authentication" in said


def test_a_shape_that_fails_to_compile_is_recorded_and_the_profile_goes_on(tmp_path, capsys):
    from kernels import target as targets
    from kernels.tuning import task_dir
    from latency_model import db
    from latency_model.decomposition import kernel_tasks
    from nas.study import Study
    from tiny import PLUMBING_NOISE, TINY_MODEL, write_study

    study_file = write_study(tmp_path / "p.yaml", {
        "name": "p", "model": TINY_MODEL,
        "space": {"choices": {"attention": ["msa"], "qkv": ["dense", "shift"], "proj": ["dense"], "mlp": ["dense"]}},
        "latency": {"trials": 0, "repeats": 3, "calibration": 0, **PLUMBING_NOISE}})
    study = Study.load(study_file)
    cache = tmp_path / "kernels"
    # a real fault: a file stands where one kernel's cache folder has to be created, so only that shape's build fails
    broken = sorted(kernel_tasks(study.space, (1,)), key=lambda spec: spec.key)[0]
    blocker = task_dir(broken, targets.resolve("cpu"), cache)
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")

    assert main(["profile", str(study_file), "--cache", str(cache)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "failed" in out and broken.kernel in out
    engine = db.connect(study.latency.db)
    recorded = db.failures(engine, study.latency.device)
    assert recorded and all(reason for _, reason, _ in recorded)
    assert any(broken.kernel in job for job, _, _ in recorded)
    measured = db.latest(engine, study.latency.device)
    assert len(measured) > len(recorded)  # the other shapes were measured

    blocker.unlink()
    fixed = pipeline.profile(study, pipeline.ProfileOptions(kernel_cache=cache))  # only the missing ones now
    assert not fixed.failed and fixed.measured
    assert len(db.latest(engine, study.latency.device)) > len(measured)


def test_a_rerun_before_a_dead_workers_trial_expires_says_so(searchable, tmp_path, capsys):
    from nas.search.storage import open_study
    from nas.upstream.optuna_internals import record_heartbeat

    study_file = searchable(tmp_path, budget={"n_trials": 2})  # heartbeat_s 60: a silent trial expires after 120 s
    ostudy = open_study(Study.load(study_file), heartbeat=True)
    orphan = ostudy.ask()  # claimed by a worker that then died: it beat once and never told
    record_heartbeat(ostudy, orphan)
    assert main(["search", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert "1 trial(s) are still RUNNING" in err and "120 s" in err and "Traceback" not in err
    assert [t.state for t in _study(study_file).get_trials()] == [TrialState.RUNNING, TrialState.COMPLETE]


def test_a_measurement_table_that_takes_no_writes_stops_the_profile_with_one_line(tmp_path, capsys, monkeypatch):
    """Mocked: a disk that fills up mid-profile cannot be caused here (root, no room-limited mount)."""
    from sqlalchemy.exc import OperationalError

    from latency_model import db
    from tiny import PLUMBING_NOISE, TINY_MODEL, write_study

    study_file = write_study(tmp_path / "p.yaml", {
        "name": "p", "model": TINY_MODEL,
        "space": {"choices": {"attention": ["msa"], "qkv": ["dense"], "proj": ["dense"], "mlp": ["dense"]}},
        "latency": {"trials": 0, "repeats": 3, "calibration": 0, **PLUMBING_NOISE}})

    def full(*args, **kwargs):
        raise OperationalError("INSERT INTO measurements", {}, Exception("database or disk is full"))

    monkeypatch.setattr(db, "add_measurement", full)
    monkeypatch.setattr(db, "add_failure", full)
    assert main(["profile", str(study_file), "--cache", str(tmp_path / "kernels")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: latency.db: cannot write to the measurement table") and "disk is full" in err
    assert "Traceback" not in err


def test_a_lock_held_elsewhere_is_said_then_waited_for_and_a_dead_holder_releases_it(tmp_path):
    from nas.disk import lock_beside

    teacher = tmp_path / "t-teacher.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from nas.disk import lock_beside\n"
                               f"with lock_beside(Path({str(teacher)!r})):\n"
                               "    print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waited = []

        def on_wait():  # the holder dies while this process waits: the kernel releases its lock
            waited.append(time.monotonic())
            holder.send_signal(signal.SIGKILL)

        with lock_beside(teacher, on_wait):
            assert len(waited) == 1
        with lock_beside(teacher, on_wait):  # free now: taken without waiting
            assert len(waited) == 1
    finally:
        holder.kill()
        holder.wait()
