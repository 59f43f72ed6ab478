"""The error hierarchy: every error the product raises on purpose is one of three kinds with a place to act on, keeps
its kind across files and processes, and the CLI reports any of them as one line; the drivers refuse what they
cannot honour before any work."""

import importlib
import inspect
import pickle
import pkgutil

import pytest

import kernels
import latency_model
import nas
import search_spaces
from nas.cli import main
from nas.search.driver import SearchOptions
from nas.search.backends import get_driver
from nas.study import Study
from tiny import TINY_MODEL, write_study
from search_spaces.errors import ConfigError, ResourceError, ShiftAddError, StateError

KINDS = (ConfigError, ResourceError, StateError)
# Exceptions used for control flow inside one module, never shown to a user.
INTERNAL = {"nas.training.evaluator.Pruned"}


def _product_modules():
    for package in (search_spaces, kernels, latency_model, nas):
        yield package
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.startswith("nas.upstream.ray") or info.name == "nas.search.ray_backend":
                continue  # importing Ray is slow and defines no error of ours beyond the driver's (checked below)
            yield importlib.import_module(info.name)


def test_every_error_of_the_product_is_one_of_three_kinds():
    found = {}
    for module in _product_modules():
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                found[f"{cls.__module__}.{name}"] = cls
    assert {"kernels.spec.KernelError", "latency_model.db.schema.LatencyDBError", "nas.search.storage.SearchError",
            "latency_model.prediction.PredictorError", "nas.training.trainer.TrainingDiverged"} <= set(found)
    for qualified, cls in found.items():
        if qualified in INTERNAL or cls in (ShiftAddError, *KINDS):
            continue
        assert issubclass(cls, KINDS), f"{qualified} is not a ConfigError, ResourceError or StateError"


@pytest.mark.parametrize("kind", [ConfigError, ResourceError, StateError, *{
    importlib.import_module("kernels.spec").KernelError, importlib.import_module("latency_model.db").LatencyDBError}])
def test_an_error_keeps_its_kind_where_and_file_across_files_and_processes(kind):
    error = kind("latency.db", "cannot open sqlite:///x.db")
    located = error.in_file("studies/x.yaml")
    assert type(located) is kind and located.where == "latency.db" and located.source == "studies/x.yaml"
    assert str(located) == "studies/x.yaml: latency.db: cannot open sqlite:///x.db"
    copy = pickle.loads(pickle.dumps(located))  # a worker process or a Ray trial sends it back
    assert type(copy) is kind and (copy.where, copy.detail, copy.source) == (error.where, error.detail, located.source)
    assert str(copy) == str(located)


def test_a_missing_step_and_a_broken_environment_are_one_line_naming_where(tmp_path, capsys):
    study = write_study(tmp_path / "s.yaml", {"name": "s", "model": TINY_MODEL})
    assert main(["export", str(study), "--out", str(tmp_path / "out")]) == 2  # nothing searched yet
    err = capsys.readouterr().err
    assert err.startswith(f"error: {study}: name: no study 's'") and "nas search" in err
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    assert main(["report", str(study), "--out", str(blocked / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out: cannot create folder") and "Traceback" not in err


def test_drivers_refuse_what_they_cannot_honour_before_any_work(tmp_path):
    study = Study.load(write_study(tmp_path / "s.yaml", {"name": "s", "model": TINY_MODEL,
                                                          "objectives": {"metrics": ["accuracy"]},
                                                          "pruner": {"name": "median"}}))
    with pytest.raises(ConfigError) as info:
        get_driver("optuna").check(study, SearchOptions(ray_address="127.0.0.1:6379"))
    assert info.value.where == "--ray-address"
    with pytest.raises(ConfigError) as info:
        get_driver("ray").check(study, SearchOptions())
    assert info.value.where == "pruner.name" and "asha" in info.value.detail
    with pytest.raises(ConfigError) as info:
        get_driver("slurm")
    assert info.value.where == "--backend"
    assert not (tmp_path / "s.db").exists()  # nothing was opened or written
