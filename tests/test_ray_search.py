"""The Ray Tune backend on a real local Ray: trials land in the Optuna RDB study with the right states."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from optuna.trial import TrialState

from nas import attributes as attr
from nas import pipeline
from nas.search.storage import open_refine_study
from nas.study import Study

from tiny import search, stored_trials, trial_notes

pytestmark = pytest.mark.timeout(900)


def test_two_concurrent_ray_trials_land_in_the_study_and_export(searchable, tmp_path):
    study_file = searchable(tmp_path, budget={"n_trials": 4},
                            objectives={"metrics": ["accuracy", "latency_ms", "energy_uj"]})
    search(study_file, "ray", workers=2)
    trials = stored_trials(study_file)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert [t.user_attrs.get(attr.REFERENCE) for t in trials[:2]] == ["dense", "paper"]
    for t in trials:
        attrs = t.user_attrs
        assert attrs[attr.RAY_TRIAL_ID] and attrs["ray_hostname"] and attrs["ray_node_ip"] and attrs["ray_node_id"]
        assert t.values == [attrs[attr.SEARCH_ACCURACY], attrs[attr.LATENCY_MS], attrs[attr.ENERGY_UJ]]
        assert attrs[attr.ENERGY_UJ] > 0 and attrs[attr.ENERGY_BREAKDOWN]["table"] == "horowitz45nm"
        assert attr.TEST_ACCURACY in attrs
        assert {"config", "latency_breakdown", "moe_split", "weights"} <= set(attrs)
    assert len({t.user_attrs[attr.RAY_TRIAL_ID] for t in trials}) == 4
    for number, (note, artifacts) in trial_notes(study_file).items():  # what optuna-dashboard shows of each
        assert note.startswith(f"## Trial {number}: complete") and "| block | attention |" in note
        assert artifacts == [f"trial-{number}.yaml"]
    assert all(path.is_file() for path in pipeline.export(Study.load(study_file), "best", tmp_path / "best"))
    # resuming: the same command with a larger budget runs only the missing trials
    search(study_file, "ray", n_trials=5)
    again = stored_trials(study_file)
    assert len(again) == 5 and [t.datetime_complete for t in again[:4]] == [t.datetime_complete for t in trials]
    # past the timeout no trial starts (the Optuna backend's meaning of budget.timeout_s / --timeout)
    search(study_file, "ray", n_trials=8, timeout_s=0.001)
    assert len(stored_trials(study_file)) == 5


def test_asha_stopped_trials_are_pruned_not_complete(searchable, tmp_path):
    study_file = searchable(tmp_path, objectives={"metrics": ["accuracy"], "latency_budget_ms": 1000.0},
                            pruner={"name": "asha"},
                            budget={"n_trials": 6, "epochs": 4, "steps_per_epoch": 2})
    search(study_file, "ray", workers=2)
    trials = stored_trials(study_file)
    states = [t.state for t in trials]
    assert len(trials) == 6 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert TrialState.PRUNED in states  # ASHA with halving stops some of 6 trials of 4 epochs
    assert TrialState.COMPLETE in states  # ... and lets the others run to their end
    for t in trials:
        assert t.user_attrs[attr.CONFIG] and t.user_attrs["ray_node_id"]
        if t.state == TrialState.PRUNED:
            # Optuna keeps a pruned trial's last intermediate value, as with its own pruners; no final attributes
            assert len(t.intermediate_values) < 4 and attr.SEARCH_ACCURACY_HISTORY not in t.user_attrs
        else:
            assert len(t.user_attrs[attr.SEARCH_ACCURACY_HISTORY]) == 4
            assert sorted(t.intermediate_values) == [1, 2, 3, 4] and t.intermediate_values[4] == t.value
            assert t.constraints == {"latency_ms": pytest.approx(t.user_attrs[attr.LATENCY_MS] - 1000.0)}
    notes = trial_notes(study_file)
    for t in trials:
        assert notes[t.number][0].startswith(f"## Trial {t.number}: {t.state.name.lower()}")


def test_the_cluster_recipe_as_written_runs_trials_on_both_nodes(searchable, tmp_path):
    """README's recipe, step by step, on this machine: a head, a second node that joins with the head's token copied
    to its home, and a driver that joins with --ray-address and presents the token it finds."""
    study_file = searchable(tmp_path, budget={"n_trials": 4})
    port = 20000 + os.getpid() % 20000
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    head_home, node_home = tmp_path / "head", tmp_path / "node"
    node_home.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}

    def ray_cli(home, *args, **env):
        done = subprocess.run([ray, *args], env={**clean, "HOME": str(home), **env}, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    head_home.mkdir()
    try:
        ray_cli(head_home, "get-auth-token", "--generate")
        ray_cli(head_home, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus",
                "1", "--include-dashboard", "false", "--disable-usage-stats", RAY_AUTH_MODE="token")
        (node_home / ".ray").mkdir()
        (node_home / ".ray" / "auth_token").write_text((head_home / ".ray" / "auth_token").read_text())  # "scp"
        ray_cli(node_home, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                "--num-cpus", "1", "--disable-usage-stats", RAY_AUTH_MODE="token")
        joined = subprocess.run([sys.executable, "-m", "nas.cli", "search", str(study_file), "--backend", "ray",
                                 "--ray-address", f"127.0.0.1:{port}", "--workers", "2"],
                                env={**clean, "HOME": str(node_home)}, capture_output=True, text=True)
        assert joined.returncode == 0, joined.stdout[-2000:] + joined.stderr[-2000:]
        # the refine's jobs as Ray tasks on the same cluster: one task per node, both training (three seeds: enough
        # jobs that a task reaching its first claim a little late still finds one)
        refined = subprocess.run([sys.executable, "-m", "nas.cli", "refine", str(study_file), "--backend", "ray",
                                  "--ray-address", f"127.0.0.1:{port}", "--workers", "2", "--top", "2", "--seeds",
                                  "3", "--epochs", "1", "--no-measure"],
                                 env={**clean, "HOME": str(node_home)}, capture_output=True, text=True)
        assert refined.returncode == 0, refined.stdout[-2000:] + refined.stderr[-2000:]
    finally:
        subprocess.run([ray, "stop", "--force"], env={**clean, "HOME": str(head_home)}, capture_output=True)
    trials = stored_trials(study_file)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert len({t.user_attrs["ray_node_id"] for t in trials}) == 2  # one CPU per node: both ran trials
    jobs = [t for t in open_refine_study(Study.load(study_file), create=False).get_trials()
            if t.state == TrialState.COMPLETE]
    assert len(jobs) >= 2 and len({t.user_attrs["ray_node_id"] for t in jobs}) == 2  # both nodes trained jobs


def test_a_local_ray_starts_its_own_whatever_cluster_this_machine_points_to(searchable, tmp_path):
    """A cluster that ended without `ray stop` leaves its address behind (RAY_ADDRESS, /tmp/ray/ray_current_cluster);
    a search that asked for a local Ray starts one of its own anyway."""
    study_file = searchable(tmp_path, budget={"n_trials": 1})
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}  # nothing listens there
    done = subprocess.run([sys.executable, "-m", "nas.cli", "search", str(study_file), "--backend", "ray"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # the first reference ran; the second stays queued (budget.n_trials 1)
    assert [t.state for t in stored_trials(study_file)] == [TrialState.COMPLETE, TrialState.WAITING]
    unreachable = subprocess.run([sys.executable, "-m", "nas.cli", "search", str(study_file), "--backend", "ray",
                                  "--ray-address", "127.0.0.1:9", "--n-trials", "2"], env=env, capture_output=True,
                                 text=True, timeout=300)
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr
    assert "--ray-address: cannot join the Ray cluster at 127.0.0.1:9" in unreachable.stderr


def _first_epoch_stored(study_file) -> bool:
    """Whether the study holds a running trial's first epoch (the searcher stores each epoch as Ray receives it)."""
    return any(t.state == TrialState.RUNNING and t.intermediate_values for t in stored_trials(study_file))


def _trial_workers(search: subprocess.Popen) -> list[psutil.Process]:
    """The Ray trial workers under this search's process (a Ray an earlier test shut down may leave its own behind
    for a moment: killing one of those fails nothing)."""
    found = []
    try:
        family = psutil.Process(search.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for p in family:
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "ray::ImplicitFunc" in cmd or "ray::_Inner" in cmd or "ray::trainable" in cmd:
            found.append(p)
    return found


def test_a_killed_trial_worker_fails_that_trial_and_the_rest_complete(searchable, tmp_path):
    study_file = searchable(tmp_path, objectives={"metrics": ["accuracy"], "latency_budget_ms": 1000.0},
                            budget={"n_trials": 3, "epochs": 4, "steps_per_epoch": 150})
    search = subprocess.Popen([sys.executable, "-m", "nas.cli", "search", str(study_file), "--backend", "ray"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # The worker dies inside its trial: once the trial's first epoch is stored, three epochs (seconds) before its
        # end (the study exists once a worker runs; one objective, so the epochs are stored as they come).
        deadline = time.monotonic() + 240
        while not (_trial_workers(search) and _first_epoch_stored(study_file)):
            assert search.poll() is None and time.monotonic() < deadline, search.stdout.read().decode()[-3000:]
            time.sleep(0.1)
        victim = _trial_workers(search)[0]
        victim.send_signal(signal.SIGKILL)
        output = search.communicate(timeout=600)[0].decode()
    finally:
        if search.poll() is None:
            search.kill()
    assert search.returncode == 0, output[-3000:]
    states = [t.state for t in stored_trials(study_file)]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 2, output[-3000:]
    failed = next(t for t in stored_trials(study_file) if t.state == TrialState.FAIL)
    assert "died" in failed.user_attrs[attr.FAIL_REASON]
