"""What optuna-dashboard shows of a search: trial notes, the study note, artifacts, objective names. Driven as a
real client: `nas dashboard` serves a finished tiny study and the test reads its HTTP API, as the browser does."""

import json
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from nas import attributes as attr
from nas.cli import main
from nas.search.dashboard import artifact_store
from nas.search.notes import architecture_table, trial_note
from nas.study import Study
from tiny import TINY_MODEL, free_port, search, stored_trials
from search_spaces import ArchConfig, BlockConfig, ConfigError, MoEConfig


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body


def _serve(study_file, port):
    server = subprocess.Popen([sys.executable, "-m", "nas.cli", "dashboard", str(study_file), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            return server, _get(f"http://127.0.0.1:{port}/api/studies")
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.terminate()
                raise AssertionError(f"dashboard did not answer: {server.stdout.read().decode()[-2000:]}")
            time.sleep(0.5)


def test_the_dashboard_shows_notes_and_artifacts_of_a_finished_search(searchable, tmp_path):
    study_file = searchable(tmp_path)
    search(study_file)
    assert main(["report", str(study_file)]) == 0
    for _ in range(2):  # a report written again replaces the charts, it does not add more
        assert main(["report", str(study_file)]) == 0
    trials = stored_trials(study_file)

    port = free_port()
    server, studies = _serve(study_file, port)
    try:
        (summary,) = studies["study_summaries"]
        base = f"http://127.0.0.1:{port}"
        detail = _get(f"{base}/api/studies/{summary['study_id']}")
        assert detail["objective_names"] == ["search_accuracy", "predicted_latency_ms"]

        note = detail["note"]["body"]
        for text in ("## tiny", f"`{study_file}` (sha256", "deit_tiny_patch16_224", "digits",
                     "predicted for device `cpu-", "within ±10 %", "**untuned**",
                     "variants run (fastest measured per shape): matshift:",
                     "trial 0, the all-dense model (the teacher's architecture) (complete): search accuracy",
                     "trial 1, the paper's allocation", f"nas run {study_file}"):
            assert text in note, f"{text!r} not in the study note:\n{note}"

        assert "### Energy" in note and "recorded, not searched on" in note and "unit costs `horowitz45nm`" in note
        assert sorted(a["filename"] for a in detail["artifacts"]) == ["allocation.png", "pareto-energy.png",
                                                                      "pareto.png", "pays.png", "trials.csv"]
        assert "### Where each choice pays" in note and "| blocks 0-1 (17 tokens, 32 channels) | qkv | shift |" in note
        chart = next(a for a in detail["artifacts"] if a["filename"] == "pareto.png")
        assert _get(f"{base}/artifacts/{summary['study_id']}/{chart['artifact_id']}")[:8] == b"\x89PNG\r\n\x1a\n"

        assert len(detail["trials"]) == 3
        for shown, stored in zip(detail["trials"], trials):
            body, attrs = shown["note"]["body"], stored.user_attrs
            config = ArchConfig.from_json(attrs[attr.CONFIG])
            assert body.startswith(f"## Trial {stored.number}: complete")
            assert "| block | attention | qkv | proj | mlp |" in body
            for i, block in enumerate(config.blocks):  # one row per block, with its choices and a price
                row = next(line for line in body.splitlines() if line.startswith(f"| {i} | "))
                assert f"| {block.qkv} | {block.proj} | {block.mlp} |" in row
                block_ms, block_uj = row.rstrip(" |").rsplit("|", 2)[-2:]
                assert float(block_ms) > 0 and float(block_uj.split("(")[0]) > 0
            assert f"**{attrs['latency_ms']:.3g} ms**" in body
            assert f"**{attrs['energy_uj']:.4g} µJ**" in body
            assert f"search split (what selects): {attrs['search_accuracy']:.4f}" in body
            assert f"test split (what to report): {attrs['test_accuracy']:.4f}" in body
            assert f"{attrs['weights']['total']:,}" in body
            assert ("**Reference trial**" in body) == (stored.number < 2)

            (artifact,) = shown["artifacts"]
            assert artifact["filename"] == f"trial-{stored.number}.yaml"
            text = _get(f"{base}/artifacts/{summary['study_id']}/{shown['trial_id']}/{artifact['artifact_id']}")
            exported = yaml.safe_load(text)
            assert exported["provenance"]["trial"] == stored.number
            assert exported["provenance"]["study_file"] == str(study_file.resolve())  # what nas finetune reads
            assert ArchConfig.from_dict(exported) == config
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_refit_updates_the_study_note_and_an_unchanged_one_is_not_rewritten(searchable, tmp_path):
    from optuna_dashboard import get_note

    from nas.search.dashboard import publish_study
    from nas.search.storage import open_study

    study_file = searchable(tmp_path, budget={"n_trials": 1})
    search(study_file)
    study = Study.load(study_file)
    ostudy = open_study(study, create=False)
    before = get_note(ostudy)
    assert not publish_study(study, ostudy)  # nothing changed: no new version of the note

    predictor = json.loads(open(study.latency.predictor).read())
    predictor["meta"]["fitted_at"] = "2031-01-01T00:00:00+00:00"  # as a refit would change it
    moved = tmp_path / "refit.json"
    moved.write_text(json.dumps(predictor))
    data = yaml.safe_load(study_file.read_text())
    data["latency"]["predictor"] = str(moved)
    study_file.write_text(yaml.safe_dump(data))
    assert publish_study(Study.load(study_file), ostudy)
    after = get_note(ostudy)
    assert "fitted 2031-01-01" in after and str(moved) in after and after != before


def test_a_trial_note_says_what_a_person_needs(tiny_spec):
    config = ArchConfig(tiny_spec, (BlockConfig("additive", "shift", "dense", "moe", MoEConfig(1, ("dense", "shift"))),
                                    BlockConfig()))
    breakdown = {"total_ms": 1.5, "fixed_ms": 0.1, "composition_ms": 0.2,
                 "blocks": [{"norms+residuals": 0.05, "attention": 0.4, "router": 0.02, "expert:dense": 0.2,
                             "expert:shift": 0.3}, {"norms+residuals": 0.05, "attention": 0.1, "mlp": 0.08}]}
    rows = architecture_table(config, breakdown, {"0": [0.75, 0.25]})
    assert rows[2] == ("| 0 | additive (tensor) | shift | dense | moe | top-1: dense, shift (75% / 25%) | 0.4 | 0.52 | "
                       "0.05 | 0.97 |  |")
    assert rows[3] == "| 1 | msa | dense | dense | dense |  | 0.1 | 0.08 | 0.05 | 0.23 |  |"
    energy = {"table": "horowitz45nm", "energy_uj": 9.0, "compute_uj": 3.0, "memory_uj": 6.0,
              "frame": {"compute_uj": 1.0, "memory_uj": 2.0},
              "blocks": [{"compute_uj": 1.5, "memory_uj": 2.5}, {"compute_uj": 0.5, "memory_uj": 1.5}]}
    rows = architecture_table(config, breakdown, {"0": [0.75, 0.25]}, energy)
    assert rows[2].endswith("| 0.97 | 4 (1.5 + 2.5) |") and rows[3].endswith("| 0.23 | 2 (0.5 + 1.5) |")
    note = trial_note(5, TrialState.COMPLETE, {"config": config.to_json(), "latency_breakdown": breakdown,
                                               "energy_breakdown": energy}, "cpu-x")
    assert "unit costs `horowitz45nm` (weights read once from DRAM, activations on chip): **9 µJ** = compute 3 + " \
           "memory 6 µJ" in note and "not a measurement" in note
    accelerator = {**energy, "model": "accelerator", "table": "accelerator", "accelerator_latency_ms": 0.25}
    note = trial_note(5, TrialState.COMPLETE, {"config": config.to_json(), "energy_breakdown": accelerator}, "cpu-x")
    assert "energy model `accelerator`" in note and "accelerator latency 0.25 ms): **9 µJ**" in note

    duplicate = trial_note(7, TrialState.COMPLETE, {"config": config.to_json(), "duplicate_of": 3,
                                                    "latency_breakdown": breakdown}, "cpu-x")
    assert "**Duplicate** of trial 3" in duplicate and "Predicted for `cpu-x`: **1.5 ms**" in duplicate
    failed = trial_note(8, TrialState.FAIL, {"fail_reason": "TrainingDiverged: loss is nan"}, "cpu-x")
    assert failed.startswith("## Trial 8: fail") and "**Failed**: TrainingDiverged: loss is nan" in failed
    pruned = trial_note(9, TrialState.PRUNED, {"config": config.to_json()}, "cpu-x")
    assert f"Architecture id `{config.id}`." in pruned and "artifact" not in pruned  # only complete trials have one


def test_artifact_stores(tmp_path):
    store = artifact_store(str(tmp_path / "a" / "b"))
    assert isinstance(store, optuna.artifacts.FileSystemArtifactStore) and (tmp_path / "a" / "b").is_dir()
    with pytest.raises(ConfigError, match="s3://BUCKET"):
        artifact_store("s3://")
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "model": TINY_MODEL, "artifacts": "ftp://host/x"}))
    with pytest.raises(ConfigError, match="artifacts: unknown artifact store"):
        Study.load(study)
    study.write_text(yaml.safe_dump({"name": "s", "model": TINY_MODEL, "artifacts": "charts"}))
    assert Study.load(study).artifacts == str(tmp_path / "charts")
