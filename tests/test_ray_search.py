"""The Ray Tune backend on a real local Ray: trials land in the Optuna RDB study with the right states."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from optuna.trial import TrialState

from nas.cli import main

from search_fixtures import stored_trials, trial_notes

pytestmark = pytest.mark.timeout(900)


def test_two_concurrent_ray_trials_land_in_the_study_and_export(searchable, tmp_path):
    study_file = searchable(tmp_path, budget={"n_trials": 4})
    assert main(["search", str(study_file), "--backend", "ray", "--workers", "2"]) == 0
    trials = stored_trials(study_file)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert [t.user_attrs.get("reference") for t in trials[:2]] == ["dense", "paper"]
    for t in trials:
        attrs = t.user_attrs
        assert attrs["ray_trial_id"] and attrs["ray_hostname"] and attrs["ray_node_ip"] and attrs["ray_node_id"]
        assert t.values == [attrs["search_accuracy"], attrs["latency_ms"]] and "test_accuracy" in attrs
        assert {"config", "latency_breakdown", "moe_split", "weights"} <= set(attrs)
    assert len({t.user_attrs["ray_trial_id"] for t in trials}) == 4
    for number, (note, artifacts) in trial_notes(study_file).items():  # what optuna-dashboard shows of each
        assert note.startswith(f"## Trial {number}: complete") and "| block | attention |" in note
        assert artifacts == [f"trial-{number}.yaml"]
    assert main(["export", str(study_file), "--trial", "best", "--out", str(tmp_path / "best")]) == 0
    # resuming: the same command with a larger budget runs only the missing trials
    assert main(["search", str(study_file), "--backend", "ray", "--n-trials", "5"]) == 0
    again = stored_trials(study_file)
    assert len(again) == 5 and [t.datetime_complete for t in again[:4]] == [t.datetime_complete for t in trials]
    # past the timeout no trial starts (the Optuna backend's meaning of budget.timeout_s / --timeout)
    assert main(["search", str(study_file), "--backend", "ray", "--n-trials", "8", "--timeout", "0.001"]) == 0
    assert len(stored_trials(study_file)) == 5


def test_asha_stopped_trials_are_pruned_not_complete(searchable, tmp_path):
    study_file = searchable(tmp_path, objectives={"metrics": ["accuracy"], "latency_budget_ms": 1000.0},
                            pruner={"name": "asha"},
                            budget={"n_trials": 6, "epochs": 4, "steps_per_epoch": 2})
    assert main(["search", str(study_file), "--backend", "ray", "--workers", "2"]) == 0
    trials = stored_trials(study_file)
    states = [t.state for t in trials]
    assert len(trials) == 6 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert TrialState.PRUNED in states  # ASHA with halving stops some of 6 trials of 4 epochs
    assert TrialState.COMPLETE in states  # ... and lets the others run to their end
    for t in trials:
        assert t.user_attrs["config"] and t.user_attrs["ray_node_id"]
        if t.state == TrialState.PRUNED:
            # Optuna keeps a pruned trial's last intermediate value, as with its own pruners; no final attributes
            assert len(t.intermediate_values) < 4 and "search_accuracy_history" not in t.user_attrs
        else:
            assert len(t.user_attrs["search_accuracy_history"]) == 4
            assert sorted(t.intermediate_values) == [1, 2, 3, 4] and t.intermediate_values[4] == t.value
            assert t.constraints == {"latency_ms": pytest.approx(t.user_attrs["latency_ms"] - 1000.0)}
    notes = trial_notes(study_file)
    for t in trials:
        assert notes[t.number][0].startswith(f"## Trial {t.number}: {t.state.name.lower()}")


def test_joins_a_cluster_started_with_ray_start(searchable, tmp_path):
    study_file = searchable(tmp_path, budget={"n_trials": 2})
    port = 20000 + os.getpid() % 20000
    env = {**os.environ, "RAY_ADDRESS": ""}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                    "--include-dashboard", "false", "--disable-usage-stats"], check=True, env=env,
                   capture_output=True)
    token_env = {**env, "RAY_AUTH_MODE": "token"}  # `ray start` enables token authentication
    try:
        joined = subprocess.run([sys.executable, "-m", "nas.cli", "search", str(study_file), "--backend", "ray",
                                 "--ray-address", f"127.0.0.1:{port}"], env=token_env, capture_output=True, text=True)
        assert joined.returncode == 0, joined.stdout[-2000:] + joined.stderr[-2000:]
        nodes = subprocess.run([sys.executable, "-c", "import json, ray; ray.init(address='127.0.0.1:%d'); "
                                "print(json.dumps([n['NodeID'] for n in ray.nodes()]))" % port],
                               env=token_env, capture_output=True, text=True, check=True)
        cluster_nodes = set(json.loads(nodes.stdout.strip().splitlines()[-1]))
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
    trials = stored_trials(study_file)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(t.user_attrs["ray_node_id"] in cluster_nodes for t in trials)  # ran on that cluster's node


def _trial_workers():
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ray::ImplicitFunc" in cmd or "ray::_Inner" in cmd or "ray::trainable" in cmd:
            found.append(p)
    return found


def test_a_killed_trial_worker_fails_that_trial_and_the_rest_complete(searchable, tmp_path):
    study_file = searchable(tmp_path, budget={"n_trials": 3, "epochs": 3, "steps_per_epoch": 20})
    search = subprocess.Popen([sys.executable, "-m", "nas.cli", "search", str(study_file), "--backend", "ray"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not _trial_workers():
            assert search.poll() is None and time.monotonic() < deadline, search.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # inside the trial, past its start
        victim = _trial_workers()[0]
        victim.send_signal(signal.SIGKILL)
        output = search.communicate(timeout=600)[0].decode()
    finally:
        if search.poll() is None:
            search.kill()
    assert search.returncode == 0, output[-3000:]
    states = [t.state for t in stored_trials(study_file)]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 2, output[-3000:]
    failed = next(t for t in stored_trials(study_file) if t.state == TrialState.FAIL)
    assert "died" in failed.user_attrs["fail_reason"]
