"""The search end to end on real parts: Optuna RDB storage (SQLite), worker processes, timm, the digits data."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from nas import attributes as attr
from nas.training.checkpoints import load_model
from nas.cli import main
from nas import pipeline
from nas.search.storage import open_study
from nas.study import Study
from search_spaces import ArchConfig
from search_spaces.errors import ConfigError, StateError

from tiny import free_port, search, stored_trials


def test_search_export_finetune_and_rebuild(searchable, tmp_path):
    study_file = searchable(tmp_path)
    search(study_file)
    trials = stored_trials(study_file)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # the two reference points are queued first, then the sampler's choices
    assert [t.user_attrs.get(attr.REFERENCE) for t in trials[:2]] == ["dense", "paper"]
    for t in trials:
        attrs = t.user_attrs
        config = ArchConfig.from_json(attrs[attr.CONFIG])
        assert config.depth == 2 and attrs[attr.CONFIG_ID] == config.id
        assert t.values == [attrs[attr.SEARCH_ACCURACY], attrs[attr.LATENCY_MS]]
        assert 0 <= attrs[attr.SEARCH_ACCURACY] <= 1
        # the test accuracy is stored, with its standard error, and is not the objective
        assert 0 <= attrs[attr.TEST_ACCURACY] <= 1 and attrs[attr.TEST_IMAGES] == 359
        assert attrs[attr.TEST_SE] == pytest.approx(
            (attrs[attr.TEST_ACCURACY] * (1 - attrs[attr.TEST_ACCURACY]) / 359) ** 0.5, abs=1e-6)
        assert len(attrs[attr.LATENCY_BREAKDOWN]["blocks"]) == 2 and attrs[attr.LATENCY_MS] > 0
        assert attrs[attr.WEIGHTS]["total"] > 0 and attrs[attr.WALL_S] > 0
        assert len(attrs[attr.SEARCH_ACCURACY_HISTORY]) == 2
        moe_blocks = [str(i) for i, b in enumerate(config.blocks) if b.mlp == "moe"]
        assert sorted(attrs[attr.MOE_SPLIT]) == moe_blocks
        for shares in attrs[attr.MOE_SPLIT].values():
            assert sum(shares) == pytest.approx(1.0, abs=1e-5)

    out = tmp_path / "export"
    exported = sorted(pipeline.export(Study.load(study_file), "pareto", out))
    assert exported and exported == sorted(out.glob("trial-*.yaml"))
    data = yaml.safe_load(exported[0].read_text())
    assert data["provenance"]["study"] == "tiny" and data["provenance"]["latency_ms"] > 0
    assert data["provenance"]["test_accuracy"] == trials[data["provenance"]["trial"]].user_attrs[attr.TEST_ACCURACY]
    assert data["provenance"]["test_se"] > 0
    config = ArchConfig.load(exported[0])
    assert config.to_json() == trials[data["provenance"]["trial"]].user_attrs[attr.CONFIG]

    tuned = tmp_path / "finetuned"
    finetuned = pipeline.finetune(pipeline.FinetuneJob.of(exported[0], epochs=1), tuned)
    result = json.loads((tuned / "result.json").read_text())
    assert result["test_accuracy"] == finetuned.test_accuracy and result["measured_ms"] == finetuned.measured_ms
    assert result["measured_ms"] > 0 and result["predicted_ms"] > 0
    assert result["energy_uj"] == result["energy_breakdown"]["energy_uj"] > 0  # at the fine-tuned routers' split
    # the trial it came from says so in its note on the dashboard
    from optuna_dashboard import get_note

    ostudy = optuna.load_study(study_name="tiny", storage=Study.load(study_file).storage)
    note = get_note(optuna.trial.Trial(ostudy, ostudy.trials[data["provenance"]["trial"]]._trial_id))
    assert f"after `nas finetune` (1 epoch): test {result['test_accuracy']:.4f}" in note
    # the documented one-call rebuild gives the fine-tuned model: same test accuracy
    from nas.training import data as datasets
    from nas.training.trainer import evaluate

    model = load_model(tuned / "arch.yaml", tuned / "model.safetensors")
    test = datasets.load(Study.load(study_file).data, 16, 10).test
    assert evaluate(model, test).accuracy == pytest.approx(result["test_accuracy"])
    assert result["test_se"] == pytest.approx(evaluate(model, test).standard_error, abs=1e-6)


def test_search_resumes_the_stored_study(searchable, tmp_path):
    study_file = searchable(tmp_path)
    # one driver seed for both runs: what draws them apart is the trials stored when each started
    assert search(study_file, n_trials=3, driver_seed=7).ran == 3
    first = stored_trials(study_file)
    assert search(study_file, n_trials=5, driver_seed=7).ran == 2
    again = stored_trials(study_file)
    assert [t.state for t in again] == [TrialState.COMPLETE] * 5
    for old, new in zip(first, again[:3]):  # the stored trials are untouched, not re-run
        assert (old.number, old.params, old.values, old.datetime_complete) == \
               (new.number, new.params, new.values, new.datetime_complete)
    # the continued run's sampler is seeded apart from the first run's: it draws new architectures, not repeats
    assert first[2].user_attrs[attr.CONFIG_ID] not in {t.user_attrs[attr.CONFIG_ID] for t in again[3:]}
    assert not any(attr.DUPLICATE_OF in t.user_attrs for t in again)
    assert search(study_file, n_trials=5).ran == 0  # nothing left to do
    assert len(stored_trials(study_file)) == 5


def test_two_workers_share_one_sqlite_study_exactly(searchable, tmp_path):
    study_file = searchable(tmp_path, budget={"n_trials": 5})
    assert search(study_file, workers=2).ran == 5
    trials = stored_trials(study_file)
    assert [t.number for t in trials] == list(range(5))
    assert all(t.state == TrialState.COMPLETE for t in trials)  # none lost, none extra
    assert len({t.user_attrs[attr.WORKER] for t in trials}) == 2  # both worked


def test_diverging_trials_fail_with_their_reason_and_keep_the_study(searchable, tmp_path, capsys):
    study_file = searchable(tmp_path, budget={"n_trials": 2})
    assert main(["search", str(study_file)]) == 0
    # the same study continued with a learning rate that makes every loss blow up
    searchable(tmp_path, budget={"n_trials": 4}, train={"batch_size": 32, "lr": 1.0e12})
    capsys.readouterr()
    assert main(["search", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert "trials finished" in err and "TrainingDiverged" in err and "Traceback" not in err
    trials = stored_trials(study_file)
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE] * 2  # what was stored survives
    failed = trials[2:]
    assert len(failed) == 3 and all(t.state == TrialState.FAIL for t in failed)
    assert all("loss is" in t.user_attrs[attr.FAIL_REASON] for t in failed)


def test_single_objective_with_a_latency_budget_and_pruner(searchable, tmp_path):
    study_file = searchable(tmp_path, objectives={"metrics": ["accuracy"], "latency_budget_ms": 1e-6,
                                                  "energy_budget_uj": 1e9}, energy={"model": "accelerator"},
                            pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    search(study_file)
    trials = stored_trials(study_file)
    assert len(trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(len(t.values) == 1 for t in complete)
    # nothing is faster than 1 ns: every complete trial is infeasible, so there is no best to export
    assert complete and all(t.constraints["latency_ms"] > 0 for t in complete)
    assert all(t.constraints["energy_uj"] == t.user_attrs[attr.ENERGY_UJ] - 1e9 < 0 for t in complete)
    assert all(t.user_attrs[attr.ENERGY_BREAKDOWN]["model"] == "accelerator" for t in complete)  # the study's model
    # going on under another energy model is refused: the stored trials' energy would not compare
    data = yaml.safe_load(study_file.read_text())
    study_file.write_text(yaml.safe_dump({**data, "energy": {"model": "op_counts"}}))
    with pytest.raises(ConfigError, match=r"energy.model.*priced its trials' energy with model accelerator"):
        open_study(Study.load(study_file))
    assert len(stored_trials(study_file)) == 3
    study_file.write_text(yaml.safe_dump(data))
    with pytest.raises(StateError, match="feasible"):
        pipeline.export(Study.load(study_file), "best", tmp_path / "x")


def test_a_three_objective_search_reports_both_trade_offs(searchable, tmp_path, capsys):
    study_file = searchable(tmp_path, objectives={"metrics": ["accuracy", "latency_ms", "energy_uj"]},
                            energy={"table": "shiftaddnas"}, sampler={"name": "nsga2", "seed": 0})
    assert main(["search", str(study_file)]) == 0
    trials = stored_trials(study_file)
    assert all(t.values == [t.user_attrs[k] for k in ("search_accuracy", "latency_ms", "energy_uj")] for t in trials)
    out = tmp_path / "report"
    assert main(["report", str(study_file), "--out", str(out)]) == 0
    assert "energy µJ" in capsys.readouterr().out
    import csv

    rows = list(csv.DictReader((out / "trials.csv").read_text().splitlines()))
    assert len(rows) == 3 and rows[0]["reference"] == "dense"
    assert all(0 <= float(r["test_accuracy"]) <= 1 and float(r["test_se"]) > 0 for r in rows)
    # the front is chosen on all three: a row is on it exactly when no other row beats it on every one
    values = [(float(r["search_accuracy"]), -float(r["latency_ms"]), -float(r["energy_uj"])) for r in rows]
    dominated = [any(all(o >= v for o, v in zip(other, mine)) and other != mine for other in values)
                 for mine in values]
    assert [int(r["pareto"]) for r in rows] == [int(not d) for d in dominated]
    for png in ("pareto.png", "pareto-energy.png", "allocation.png", "pays.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["export", str(study_file), "--out", str(tmp_path / "best")]) == 0
    exported = yaml.safe_load(next((tmp_path / "best").glob("trial-*.yaml")).read_text())["provenance"]
    assert exported["energy_uj"] > 0 and exported["energy_breakdown"]["table"] == "shiftaddnas"


def test_dashboard_serves_the_study_on_loopback(searchable, tmp_path):
    study_file = searchable(tmp_path, budget={"n_trials": 1})
    search(study_file)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "nas.cli", "dashboard", str(study_file), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.loads(response.read())
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"dashboard did not answer: {server.stdout.read().decode()[-2000:]}")
                time.sleep(0.5)
        assert [s["study_name"] for s in studies["study_summaries"]] == ["tiny"]
        # bound to loopback only: the machine's other addresses do not answer
        with socket.socket() as probe:
            probe.settimeout(2)
            other = socket.gethostbyname(socket.gethostname())
            if not other.startswith("127."):
                assert probe.connect_ex((other, port)) != 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_pretrain_is_cached_and_retrains_when_the_study_changes(tmp_path):
    from tiny import TINY_MODEL, write_study

    study_file = write_study(tmp_path / "p.yaml", {"name": "p", "model": TINY_MODEL,
                                                  "budget": {"pretrain_epochs": 1}, "train": {"batch_size": 64}})
    assert not pipeline.pretrain(Study.load(study_file)).cached
    teacher = tmp_path / "p-teacher.safetensors"
    stamp = teacher.stat().st_mtime_ns
    assert pipeline.pretrain(Study.load(study_file)).cached
    assert teacher.stat().st_mtime_ns == stamp
    write_study(study_file, {"name": "p", "model": TINY_MODEL, "budget": {"pretrain_epochs": 2},
                             "train": {"batch_size": 64}})
    assert pipeline.pretrain(Study.load(study_file)).epochs == 2
    assert teacher.stat().st_mtime_ns != stamp
    from safetensors import safe_open

    with safe_open(str(teacher), "pt") as f:
        metadata = f.metadata()
    assert metadata["epochs"] == "2" and 0 <= float(metadata["search_accuracy"]) <= 1


def test_every_trial_fine_tunes_all_weights_and_leaves_the_teacher_alone(searchable, tmp_path):
    from nas.training.evaluator import Evaluator

    study = Study.load(searchable(tmp_path))
    evaluator = Evaluator(study)
    teacher = {k: v.clone() for k, v in evaluator.teacher.state_dict().items()}
    dense = ArchConfig.dense(study.model, study.space.depth)
    for _ in range(2):  # a second trial in the same worker trains as the first did
        result, model = evaluator.run(dense)
        assert not torch.equal(model.head.weight, teacher["head.weight"])
        assert not torch.equal(model.blocks[0].attn.qkv.weight, teacher["blocks.0.attn.qkv.weight"])
    assert all(torch.equal(v, teacher[k]) for k, v in evaluator.teacher.state_dict().items())


def test_an_architecture_proposed_again_reuses_its_result(searchable, tmp_path):
    space = {"choices": {"attention": ["msa"], "qkv": ["dense"], "proj": ["dense"], "mlp": ["dense", "shift"]}}
    study_file = searchable(tmp_path, space=space, budget={"n_trials": 6})  # 4 architectures, 6 trials
    search(study_file)
    trials = stored_trials(study_file)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    repeats = [t for t in trials if attr.DUPLICATE_OF in t.user_attrs]
    assert len(repeats) >= 2
    for t in repeats:
        original = trials[t.user_attrs[attr.DUPLICATE_OF]]
        assert t.values == original.values and t.user_attrs[attr.CONFIG_ID] == original.user_attrs[attr.CONFIG_ID]
        assert t.user_attrs[attr.WALL_S] < original.user_attrs[attr.WALL_S]
    out = tmp_path / "pareto"
    exported = pipeline.export(Study.load(study_file), "pareto", out)
    ids = [yaml.safe_load(p.read_text())["provenance"]["trial"] for p in exported]
    assert len({trials[i].user_attrs[attr.CONFIG_ID] for i in ids}) == len(ids)  # each architecture once

    # another training recipe (here the learning rate): results trained under the old one are not reused
    searchable(tmp_path, space=space, budget={"n_trials": 8}, train={"batch_size": 32, "lr": 0.01})
    assert search(study_file).ran == 2
    later = stored_trials(study_file)[6:]
    assert len(later) == 2 and attr.DUPLICATE_OF not in later[0].user_attrs and attr.TRAIN_S in later[0].user_attrs
    assert all(t.user_attrs.get(attr.DUPLICATE_OF, 6) >= 6 for t in later)


def test_run_chains_the_steps_and_reuses_what_is_done(searchable, tmp_path):
    from nas import pipeline

    class Recorder(pipeline.RunEvents):
        def __init__(self) -> None:
            self.steps: list[tuple[str, bool]] = []
            self.results: dict[str, object] = {}

        def step(self, step):
            self.steps.append((step.name, step.runs))
            return super().step(step)

        def result(self, step, result) -> None:
            self.results[step.name] = result

    study_file = searchable(tmp_path, budget={"n_trials": 2})
    study = Study.load(study_file)
    out = tmp_path / "run"
    options = pipeline.RunOptions(kernel_trials=0, out=out)
    events = Recorder()
    result = pipeline.run(study, options, events)
    assert result.stopped is None and result.out == out
    # profiled before (nothing new), the predictor up to date, the teacher a checkpoint: only the search works
    assert events.steps == [("profile", True), ("fit-latency", False), ("pretrain", False), ("search", True),
                            ("refine", True), ("report", True), ("export", True)]
    assert result.profiled.measured == [] and result.fitted is None and result.pretrained is None
    assert result.searched.ran == 2 and events.results["search"] is result.searched
    assert (out / "report" / "pareto.png").is_file() and (out / "report" / "trials.csv").is_file()
    assert result.best.parent == out / "best" and ArchConfig.load(result.best).depth == 2
    assert events.results["export"] == result.best and events.results["report"] is result.report
    # the front and the dense model refined (the study's refine: defaults), the best exported from that front
    assert result.refined.ran == result.refined.jobs > 0 and events.results["refine"] is result.refined
    assert yaml.safe_load(result.best.read_text())["provenance"]["chosen_from"] == "refined front"
    again = pipeline.run(study, options)  # all done: no new trial, no job trained again
    assert again.searched.ran == 0 and again.refined.ran == 0 and again.best == result.best
    assert len(stored_trials(study_file)) == 2


def test_a_predictor_that_cannot_price_the_space_is_refitted(searchable, tmp_path):
    # the predictor file is local state beside a shared table: one fitted for another space (here: without shift
    # projections) must not pass for up to date, or every trial would fail at its first prediction
    from nas import pipeline

    assert not pipeline.needs_fit(Study.load(searchable(tmp_path)))
    wider = searchable(tmp_path, space={"choices": {"attention": ["msa"], "proj": ["dense", "shift"]}})
    assert pipeline.needs_fit(Study.load(wider))
