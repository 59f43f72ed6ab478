"""Every private use of Optuna and Ray in nas.upstream, on the real libraries: an upgrade that moves one fails here,
by name."""

import pickle
import time

import optuna
import pytest
from optuna.trial import TrialState

from nas import attributes as attr
from nas.upstream import optuna_internals, ray_internals


def _study(tmp_path, **storage_options):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}", **storage_options)
    return optuna.create_study(study_name="s", storage=storage)


def test_a_trial_run_under_heartbeat_is_failed_once_its_worker_goes_silent(tmp_path):
    study = _study(tmp_path, heartbeat_interval=1, grace_period=1)
    beating, silent = study.ask(), study.ask()
    with optuna_internals.heartbeat(study, beating):
        time.sleep(0.2)
    time.sleep(2.5)  # past the grace period (the storage's clock counts whole seconds): the thread stopped
    optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    # only a trial that ever beat can go stale: the heartbeat reached the storage
    assert states == {beating.number: TrialState.FAIL, silent.number: TrialState.RUNNING}
    optuna_internals.record_heartbeat(study, silent)
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[silent.number].state == TrialState.FAIL


def test_a_worker_killed_right_after_its_claim_leaves_a_trial_that_goes_stale(tmp_path):
    """The claims of the refine (a queued trial) and of the search (a new one) beat at once: a worker killed before
    its heartbeat thread's first beat (the claims here start none) does not leave a trial RUNNING for ever."""
    study = _study(tmp_path, heartbeat_interval=1, grace_period=1)
    study.enqueue_trial({})
    claimed = optuna_internals.claim_waiting(study)
    asked = optuna_internals.ask_beating(study)
    assert claimed is not None and optuna_internals.claim_waiting(study) is None  # nothing else waits
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    assert {t.number: t.state for t in study.get_trials()} == {claimed.number: TrialState.FAIL,
                                                               asked.number: TrialState.FAIL}


def test_claims_on_a_storage_without_heartbeats_only_claim(tmp_path):
    study = _study(tmp_path)
    study.enqueue_trial({"x": 1})
    claimed = optuna_internals.claim_waiting(study)
    asked = optuna_internals.ask_beating(study)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.RUNNING]
    assert (claimed.number, asked.number) == (0, 1)


def test_fail_trial_fails_a_running_trial_from_its_frozen_copy(tmp_path):
    study = _study(tmp_path)
    study.ask()
    frozen = study.get_trials(states=(TrialState.RUNNING,))[0]
    optuna_internals.fail_trial(study, frozen, "left running")
    trial = study.get_trials()[0]
    assert trial.state == TrialState.FAIL and trial.user_attrs[attr.FAIL_REASON] == "left running"


def test_the_ray_searchers_optuna_trials_metric_and_state(tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    searcher = OptunaSearch(space=lambda trial: {"x": trial.suggest_int("x", 0, 3)}, metric="accuracy", mode="max",
                            study_name="s", storage=storage)
    assert ray_internals.metric(searcher) == "accuracy"
    assert searcher.suggest("ray-1") is not None
    trial = ray_internals.pending_trial(searcher, "ray-1")
    assert isinstance(trial, optuna.Trial) and ray_internals.pending_trial(searcher, "ray-2") is None
    ray_internals.tell(searcher, "ray-1", 0.5, TrialState.COMPLETE)
    assert ray_internals.pending_trial(searcher, "ray-1") is None  # told once
    stored = optuna.load_study(study_name="s", storage=storage).trials
    assert [(t.state, t.value) for t in stored] == [(TrialState.COMPLETE, 0.5)]
    state = ray_internals.picklable_state(searcher)
    assert pickle.loads(pickle.dumps(state))["_metric"] == "accuracy"  # what Ray's experiment state pickles
    with pytest.raises(Exception):
        pickle.dumps(searcher.__dict__)  # without the fix it does not pickle


def test_study_artifacts_and_removing_one(tmp_path):
    study = _study(tmp_path)
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path))
    (tmp_path / "chart.png").write_bytes(b"png")
    kept, removed = (optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(tmp_path / "chart.png"),
                                                      study_or_trial=study) for _ in range(2))
    assert optuna_internals.study_artifacts(study) == {kept: "chart.png", removed: "chart.png"}
    optuna_internals.remove_study_artifact(study, store, removed)
    assert optuna_internals.study_artifacts(study) == {kept: "chart.png"}
    assert (tmp_path / kept).is_file() and not (tmp_path / removed).exists()


def test_the_cluster_token_a_driver_would_present(tmp_path, monkeypatch):
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ray_internals.cluster_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-the-head\n")  # where `ray start --head` writes it
    assert ray_internals.cluster_token() == "from-the-head"
    (tmp_path / "elsewhere").write_text("from-a-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "elsewhere"))
    assert ray_internals.cluster_token() == "from-a-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-the-environment")
    assert ray_internals.cluster_token() == "from-the-environment"
    from ray._raylet import AuthenticationTokenLoader, Config  # what use_token_authentication refreshes

    assert callable(Config.initialize) and callable(AuthenticationTokenLoader.instance().reset_cache)
