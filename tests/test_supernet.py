"""The weight-sharing supernet: its subnets are the models build_model makes, every choice trains under the sandwich
rule, its file resumes after a kill and is refused when it is not this study's, and supernet-mode searches run on
both backends, export inherited weights and fine-tune from them."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nas import attributes as attr
from nas import pipeline
from nas.cli import main
from nas.study import Study
from tiny import pvt, search, stored_trials
from search_spaces import ArchConfig, build_model
from search_spaces.reparam import create_model
from search_spaces.space import SearchSpace
from search_spaces.supernet import Supernet

PVT = pvt(num_classes=5)
SUPERNET = {"mode": "supernet", "supernet_steps": 6, "random_subnets": 2}


def _module_types(model: torch.nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules()]


@pytest.mark.parametrize("family", ["vit", "pvt_v2"])
def test_a_subnet_is_build_model_of_its_architecture_with_the_inherited_weights(family, tiny_spec):
    spec = tiny_spec if family == "vit" else PVT
    space = SearchSpace.from_dict({"moe": {"top_k": [1, 2]}}, spec)
    teacher = create_model(spec).eval()
    supernet = Supernet.from_dense(teacher, space)
    with torch.no_grad():  # the choices' own parameters away from their initial values, so copying them matters
        for name, p in supernet.named_parameters():
            if "options" in name or ".moe." in name:
                p.normal_(0, 0.2)
            else:
                p.add_(torch.randn_like(p) * 0.02)  # and the shared weights away from the teacher's
    supernet.eval()
    images = torch.randn(3, 3, spec.kwargs["img_size"], spec.kwargs["img_size"])
    rng = np.random.default_rng(0)
    configs = [space.sample(rng) for _ in range(12)]
    assert {b.attention for c in configs for b in c.blocks} == {"msa", "linear", "additive"}
    assert {b.mlp for c in configs for b in c.blocks} == {"dense", "shift", "shift16", "int8", "moe"}
    for config in configs:
        subnet = supernet.extract(config)
        expected = build_model(config, teacher)
        assert _module_types(subnet) == _module_types(expected)  # the same types, in the same places
        assert subnet.state_dict().keys() == expected.state_dict().keys()
        with torch.no_grad():
            inherited = subnet(images)
            shared = supernet.activate(config)(images)
            teacher_built = expected(images)
        torch.testing.assert_close(inherited, shared, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(inherited, teacher_built, atol=1e-3)  # it inherited the supernet's weights
    # the supernet keeps one copy of the shared weights: only the choices' own parameters come on top
    own = sum(p.numel() for n, p in supernet.named_parameters() if "options" in n or ".moe." in n)
    assert sum(p.numel() for p in supernet.parameters()) == sum(p.numel() for p in teacher.parameters()) + own


def test_a_config_outside_the_space_is_refused(tiny_spec):
    space = SearchSpace.from_dict({"choices": {"attention": ["msa", "linear"]}}, tiny_spec)
    supernet = Supernet.from_dense(create_model(tiny_spec), space)
    config = ArchConfig.from_dict({"model": tiny_spec.to_dict(), "blocks": [
        {"attention": "additive", "qkv": "dense", "proj": "dense", "mlp": "dense"}] * 2})
    with pytest.raises(Exception, match="not in this space"):
        supernet.activate(config)


def _study(searchable, folder: Path, **evaluation) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return searchable(folder, evaluation={**SUPERNET, **evaluation})


def test_every_choice_trains_under_the_sandwich_rule(searchable, tmp_path):
    from nas import pipeline
    from nas.training.teacher import load_teacher

    study = Study.load(_study(searchable, tmp_path, supernet_steps=8, random_subnets=3))
    before = Supernet.from_dense(load_teacher(study), study.space)
    initial = {n: p.detach().clone() for n, p in before.named_parameters()}
    result = pipeline.supernet(study)
    assert not result.cached and result.steps == 8
    from latency_model.predictor import Predictor

    predictor = Predictor.load(study.latency.predictor)
    rng = np.random.default_rng(1)
    drawn = [predictor.predict(study.space.sample(rng)).total_ms for _ in range(30)]
    assert predictor.predict(result.cheapest).total_ms <= min(drawn)  # the sandwich's cheap anchor is the cheapest
    from nas.training.supernet_file import load_supernet

    trained = load_supernet(study, load_teacher(study))
    unmoved = [n for n, p in trained.named_parameters()
               if torch.equal(p.detach(), initial[n]) and not n.endswith("noise.weight")]
    # every shared weight, each attention's own conv and each router moved (the noise gate starts at zero and
    # receives gradient only through the smoothed load of top-k < experts; it is checked by the MoE tests)
    assert unmoved == []
    assert pipeline.supernet(study).cached  # a second run is a cache hit


def test_a_sub_supernet_of_one_fixed_decision_starts_from_its_parent(searchable, tmp_path):
    """Few-shot splitting: a sub-supernet (block 0's attention fixed) continues from the one-shot supernet's
    weights, not from the teacher's."""
    from nas import pipeline
    from nas.training.supernet_file import load_supernet
    from nas.training.teacher import load_teacher

    parent = Study.load(_study(searchable, tmp_path / "parent", supernet_steps=4))
    pipeline.supernet(parent)
    parent_weights = dict(load_supernet(parent, load_teacher(parent)).named_parameters())
    sub = Study.load(searchable(tmp_path / "parent", name="tiny-b0-linear",
                                space={**yaml.safe_load(parent.path.read_text())["space"],
                                       "blocks": {0: {"attention": ["linear"]}}},
                                evaluation={**SUPERNET, "supernet_steps": 1, "supernet_lr": 1e-12}))
    assert sub.supernet_path != parent.supernet_path
    pipeline.supernet(sub, start_from=parent.supernet_path)
    trained = load_supernet(sub, load_teacher(sub))
    fresh = dict(Supernet.from_dense(load_teacher(sub), sub.space).named_parameters())
    names = [n for n, _ in trained.named_parameters()]
    assert names and all(n in parent_weights for n in names)  # the sub-space's weights are a subset of its parent's
    assert all(torch.allclose(p, parent_weights[n], atol=1e-6) for n, p in trained.named_parameters())
    assert any(not torch.allclose(p, fresh[n], atol=1e-4) for n, p in trained.named_parameters())
    with pytest.raises(Exception, match="not a readable supernet file"):
        pipeline.supernet(Study.load(sub.path), force=True, start_from=sub.path)  # a study file is no supernet


def test_a_killed_training_resumes_from_its_last_checkpoint(searchable, tmp_path):
    from nas.training.supernet_file import fingerprint, read_checkpoint
    from nas.training.teacher import load_teacher

    study_file = _study(searchable, tmp_path, supernet_steps=400)
    study = Study.load(study_file)
    code = ("import nas.training.supernet_trainer as s; s.CHECKPOINT_EVERY_S = 0.2; from nas.cli import main; "
            f"main(['supernet', {str(study_file)!r}])")
    worker = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    fp = fingerprint(study, load_teacher(study))
    deadline = time.monotonic() + 240
    step = 0
    while time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.3)
        if study.supernet_path.is_file():
            try:
                step = int(read_checkpoint(study.supernet_path, fp)[0]["step"])
            except Exception:  # noqa: BLE001 - caught between the two halves of os.replace: try again
                continue
            if step >= 3:
                break
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    assert 3 <= step < 400, "the worker did not checkpoint in time"
    checkpointed = int(read_checkpoint(study.supernet_path, fp)[0]["step"])
    short = Study.load(_study(searchable, tmp_path, supernet_steps=400))
    from nas import pipeline

    result = pipeline.supernet(short)
    assert result.resumed_from == checkpointed and result.steps == 400
    meta, _ = read_checkpoint(study.supernet_path, fp)
    assert meta["step"] == "400"


def test_a_file_of_another_space_truncated_or_edited_is_refused_with_one_line(searchable, tmp_path, capsys):
    study_file = _study(searchable, tmp_path / "a", supernet_steps=2)
    assert main(["supernet", str(study_file)]) == 0
    path = Study.load(study_file).supernet_path
    good = path.read_bytes()
    search = ["search", str(study_file), "--n-trials", "1"]

    original = study_file.read_text()
    other = yaml.safe_load(original)
    other["space"] = {"choices": {"attention": ["msa", "linear"], "mlp": ["dense", "shift"]}}
    study_file.write_text(yaml.safe_dump(other))
    capsys.readouterr()
    assert main(search) == 2
    err = capsys.readouterr().err
    assert "trained for another space than this study's" in err and "Traceback" not in err
    assert path.read_bytes() == good  # refused, not rewritten

    study_file.write_text(original)
    path.write_bytes(good[: len(good) // 2])
    assert main(search) == 2
    assert "truncated or corrupt" in capsys.readouterr().err

    edited = bytearray(good)
    edited[-5] ^= 0xFF  # a weight's bytes changed, the header intact
    path.write_bytes(bytes(edited))
    assert main(search) == 2
    assert "checksum differs" in capsys.readouterr().err

    assert main(["supernet", str(study_file)]) == 0  # training sets the damaged file aside and starts afresh
    out = " ".join(capsys.readouterr().out.split())  # as printed, wrapped where the console's width falls
    assert "not used" in out and "checksum differs" in out
    assert path.with_name(path.name.replace(".safetensors", ".stale.safetensors")).read_bytes() == bytes(edited)


@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_a_supernet_mode_search_exports_inherited_weights_and_finetunes_from_them(backend, searchable, tmp_path):
    from nas.training.checkpoints import load_weights
    from nas.training.supernet_file import load_supernet
    from nas.training.teacher import load_teacher

    study_file = _study(searchable, tmp_path, finetune_steps=2 if backend == "ray" else 0)
    pipeline.supernet(Study.load(study_file))
    search(study_file, backend, n_trials=3)
    trials = [t for t in stored_trials(study_file) if t.state.name == "COMPLETE"]
    assert len(trials) == 3
    assert {t.user_attrs[attr.EVALUATION] for t in trials} == {"supernet"}
    assert not any(attr.TEST_ACCURACY in t.user_attrs for t in trials)  # a trial scores the search split only
    study = Study.load(study_file)
    supernet = load_supernet(study, load_teacher(study))

    out = tmp_path / "export"
    assert main(["export", str(study_file), "--trial", "pareto", "--out", str(out)]) == 0
    exported = sorted(out.glob("trial-*.yaml"))
    assert exported
    config = ArchConfig.load(exported[0])
    weights = exported[0].with_suffix(".safetensors")
    provenance = yaml.safe_load(exported[0].read_text())["provenance"]
    assert provenance["weights"] == weights.name
    # the export evaluated the test split of the trials it wrote (as the trial would have), and kept it for the
    # report; the samplers never see it
    if backend == "optuna":  # (the ray trial took finetune_steps of training: its model is not the bare subnet)
        from nas.training.evaluator import Evaluator

        expected = Evaluator(study).evaluate_test(supernet.extract(config)).accuracy
        assert provenance["test_accuracy"] == pytest.approx(expected)
    assert 0 <= provenance["test_accuracy"] <= 1 and provenance["test_se"] > 0
    report = tmp_path / "report"
    assert main(["report", str(study_file), "--out", str(report)]) == 0
    tested = {row["trial"]: row["test_accuracy"] for row in csv.DictReader((report / "trials.csv").open())}
    assert float(tested[str(provenance["trial"])]) == pytest.approx(provenance["test_accuracy"], abs=1e-4)
    model = load_weights(build_model(config), weights).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(images), supernet.extract(config)(images))
    if backend == "optuna":
        assert main(["finetune", str(exported[0]), "--epochs", "1", "--out", str(tmp_path / "ft"),
                     "--no-measure"]) == 0
        arch = yaml.safe_load((tmp_path / "ft" / "arch.yaml").read_text())["provenance"]
        assert arch["finetune_from"] == str(weights)


def test_nas_run_trains_the_supernet_after_the_teacher_and_reuses_it(searchable, tmp_path, capsys):
    study_file = _study(searchable, tmp_path, supernet_steps=3)
    study_file.write_text(study_file.read_text().replace("n_trials: 3", "n_trials: 2"))
    out = tmp_path / "run"
    assert main(["run", str(study_file), "--kernel-trials", "0", "--out", str(out)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "1/7 profile" in said and "measured 0, already in the table" in said  # profiled before: nothing new
    assert "2/7 latency predictor:" in said and "(up to date)" in said and "3/7 teacher:" in said
    assert "3/7 supernet" in said and "trained the supernet for 3 steps" in said
    assert "2 trial(s) finished in this run" in said and "Pareto front" in said and "best: " in said
    assert {t.user_attrs[attr.EVALUATION] for t in stored_trials(study_file)} == {"supernet"}
    assert next((out / "best").glob("trial-*.safetensors"))  # the best trial's inherited weights
    assert main(["run", str(study_file), "--kernel-trials", "0", "--out", str(out)]) == 0
    assert "(cached)" in " ".join(capsys.readouterr().out.split()).split("3/7 supernet")[1]


def test_two_drivers_started_together_train_one_teacher_and_one_supernet_and_draw_apart(searchable, tmp_path):
    # two `nas run` on one study at once (two terminals): the second waits for the teacher and the supernet the
    # first is training (a lock beside each file) instead of training its own, and the two drivers' samplers are
    # seeded apart, each trial recording its sampler's seed
    study_file = _study(searchable, tmp_path, supernet_steps=3)
    data = yaml.safe_load(study_file.read_text())
    data["model"].pop("checkpoint")  # the teacher is trained by `nas run`
    data["budget"].update(n_trials=4, pretrain_epochs=1)
    study_file.write_text(yaml.safe_dump(data))
    runs = [subprocess.Popen([sys.executable, "-m", "nas.cli", "run", str(study_file), "--kernel-trials", "0",
                              "--out", str(tmp_path / f"out{i}")], env={**os.environ, "COLUMNS": "200"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    said = [" ".join(run.communicate(timeout=900)[0].split()) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], said
    both = " ".join(said)
    assert both.count("trained the teacher for") == 1 and both.count("trained the supernet for") == 1, said
    seeds = [int(s.split("driver seed ")[1].split()[0]) for s in said]
    assert seeds[0] != seeds[1]
    trials = stored_trials(study_file)
    assert len(trials) == 4
    references = [t.user_attrs[attr.REFERENCE] for t in trials if attr.REFERENCE in t.user_attrs]
    assert references and len(references) == len(set(references))  # the study was created once
    by_worker: dict[str, set] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs[attr.WORKER], set()).add(t.user_attrs[attr.SAMPLER_SEED])
    assert all(len(s) == 1 for s in by_worker.values())  # one sampler per worker process
    if len(by_worker) == 2:  # both drivers ran trials: their samplers differ
        assert len(set.union(*by_worker.values())) == 2
