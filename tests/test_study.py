"""Study files: every section validated on load, errors that name the file, the key and the value."""

import optuna
import pytest
import yaml

from nas.cli import main
from nas.study import Study, create_pruner, create_sampler
from tiny import TINY_MODEL
from search_spaces import ConfigError


def _write(tmp_path, **sections):
    data = {"name": "s", "model": TINY_MODEL, **sections}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_and_paths_relative_to_the_study(tmp_path):
    study = Study.load(_write(tmp_path))
    assert study.storage == f"sqlite:///{tmp_path}/s.db"
    assert study.teacher_path == tmp_path / "s-teacher.safetensors"
    assert study.latency.db == f"sqlite:///{tmp_path}/latency.db"
    assert study.objectives.directions == ["maximize", "minimize"]
    assert study.space.depth == 2 and study.data.source == "digits"

    def draws(worker):
        ostudy = optuna.create_study(sampler=create_sampler(study, (0, worker)), directions=["maximize", "minimize"])
        return [study.space.suggest(ostudy.ask()).id for _ in range(4)]

    assert draws(0) == draws(0) and draws(0) != draws(1)  # reproducible, and parallel workers draw differently


def test_relative_sqlite_urls_are_relative_to_the_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # not the study's folder: SQLAlchemy alone would put the files here
    study = Study.load(_write(tmp_path, storage="sqlite:///runs/s.db", latency={"db": "sqlite:///m.db"}))
    assert study.storage == f"sqlite:///{tmp_path}/runs/s.db" and study.latency.db == f"sqlite:///{tmp_path}/m.db"
    absolute = Study.load(_write(tmp_path, storage=f"sqlite:///{tmp_path}/a.db", latency={"db": "sqlite://"}))
    assert absolute.storage == f"sqlite:///{tmp_path}/a.db" and absolute.latency.db == "sqlite://"
    other = Study.load(_write(tmp_path, storage="postgresql://u:secret@host/db"))
    assert other.storage == "postgresql://u:secret@host/db"


@pytest.mark.parametrize("sections, where, words", [
    ({"budgets": {}}, "unknown key(s) 'budgets'", ""),
    ({"budget": {"n_trials": 0}}, "budget.n_trials", ">= 1"),
    ({"budget": {"epochs": "two"}}, "budget.epochs", "'two'"),
    ({"train": {"lr": -1}}, "train.lr", "> 0"),
    ({"train": {"distill_alpha": 1.5}}, "train.distill_alpha", "<= 1"),
    ({"objectives": {"metrics": ["latency_ms"]}}, "objectives.metrics", "accuracy first"),
    ({"objectives": {"metrics": ["accuracy", "energy_uj", "energy_uj"]}}, "objectives.metrics", "once each"),
    ({"objectives": {"latency_budget_ms": 2}}, "objectives.latency_budget_ms", "not an objective"),
    ({"energy": {"table": "tsmc7"}}, "energy.table", "horowitz45nm, shiftaddnas"),
    ({"sampler": {"name": "cmaes"}}, "sampler.name", "tpe, nsga2, random"),
    ({"pruner": {"name": "median"}}, "pruner.name", "single-objective"),
    ({"storage": "studies/x.db"}, "storage", "database URL"),
    ({"data": {"source": "cifar"}}, "data.source", "shapes, digits, imagefolder"),
    ({"data": {"source": "imagefolder"}}, "data.path", "train/ and val/"),
    ({"space": {"choices": {"mlp": ["moe", "conv"]}}}, "space.choices.mlp[1]", "'conv'"),
    ({"latency": {"trials": -1}}, "latency.trials", ">= 0"),
])
def test_each_mistake_names_its_key(tmp_path, sections, where, words):
    path = _write(tmp_path, **sections)
    with pytest.raises(ConfigError) as error:
        Study.load(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and where in message and words in message


def test_sampler_and_pruner_arguments_are_checked_when_built(tmp_path):
    study = Study.load(_write(tmp_path, sampler={"name": "tpe", "n_startup": 3}))
    with pytest.raises(ConfigError, match="tpe does not take"):
        create_sampler(study)
    study = Study.load(_write(tmp_path, objectives={"metrics": ["accuracy"]},
                              pruner={"name": "median", "n_startup_trials": 2}))
    assert type(create_pruner(study)).__name__ == "MedianPruner"


def test_validate_builds_the_sampler_and_pruner(tmp_path, capsys):
    path = _write(tmp_path, objectives={"metrics": ["accuracy"]}, pruner={"name": "median", "n_warmup": 2})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: pruner") and "median does not take" in err and "Traceback" not in err


def test_validate_command(tmp_path, capsys):
    assert main(["validate", str(_write(tmp_path))]) == 0
    assert "1150 train / 288 search / 359 test" in capsys.readouterr().out
    bad = _write(tmp_path, model={**TINY_MODEL, "kwargs": {**TINY_MODEL["kwargs"], "num_classes": 3}})
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "num_classes" in err and "10 classes" in err and "Traceback" not in err


def test_loading_a_study_and_building_its_model_loads_no_heavy_optional_library(tmp_path, monkeypatch):
    """TVM, Ray, optuna-dashboard and matplotlib (and scikit-learn, scipy) load where they are used, not when any
    module of the project is imported (the Ray backend's own module aside: its classes extend Ray's), a study read
    (every command, every search worker) or a model built (training): the CPU's device name is remembered once TVM
    named it."""
    import json
    import subprocess
    import sys

    monkeypatch.setenv("SHIFTADD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "model": TINY_MODEL}))
    named = Study.load(path).latency.device  # the first naming asks TVM, and remembers
    code = f"""
import json, sys
import numpy as np
import importlib, pkgutil
import nas.cli.main, nas.pipeline  # the command and its steps
for package in ("search_spaces", "kernels", "latency_model", "nas"):  # and every other module
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        if info.name != "nas.search.ray_backend":
            importlib.import_module(info.name)
from nas.study import Study
from search_spaces import build_model
study = Study.load({str(path)!r})
build_model(study.space.sample(np.random.default_rng(0)))
heavy = [m for m in ("tvm", "ray", "optuna_dashboard", "matplotlib", "sklearn", "scipy") if m in sys.modules]
print(json.dumps([study.latency.device, heavy]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    device, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert device == named and named.startswith("cpu-") and loaded == []
