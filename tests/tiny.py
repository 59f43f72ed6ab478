"""Tiny models and studies, written once for every test: a DeiT and a PVTv2 small enough that a forward and backward
pass takes milliseconds (:func:`vit`, :func:`pvt`, each with the changes a test needs), a tiny study ready to search
(its predictor, profiled with untuned kernels, and its teacher are made once per session by ``conftest.searchable``;
each test writes its own study file with its own storage, so tests cannot see each other's trials), and helpers
that read what a search stored.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import yaml

from search_spaces import ModelSpec

VIT_KWARGS = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2, "num_classes": 10}
PVT_KWARGS = {"img_size": 32, "depths": [1, 1], "embed_dims": [16, 32], "num_heads": [1, 2], "sr_ratios": [2, 1],
              "mlp_ratios": [2, 2], "num_classes": 10}


def vit(**changes) -> ModelSpec:
    """A two-block DeiT at 16x16 (``changes`` replace its timm kwargs)."""
    return ModelSpec("deit_tiny_patch16_224", {**VIT_KWARGS, **changes})


def pvt(**changes) -> ModelSpec:
    """A two-stage, one-block-per-stage PVTv2 at 32x32 (``changes`` replace its timm kwargs)."""
    return ModelSpec("pvt_v2_b0", {**PVT_KWARGS, **changes})


def model_section(spec: ModelSpec) -> dict:
    """A study file's ``model:`` section for ``spec``."""
    return spec.to_dict()


TINY_MODEL = model_section(vit())  # the model of the tiny studies
TINY_SPACE = {"choices": {"attention": ["msa", "linear", "additive"], "qkv": ["dense", "shift"],
                          "proj": ["dense"], "mlp": ["dense", "shift", "moe"]}}


# 3 repeats of sub-millisecond ops, beside whatever else a shared test machine runs: the tests that exercise the
# plumbing accept any spread, CPU contention and whole-model error; the noise checks have tests of their own
# (test_noise.py) with the product's thresholds
PLUMBING_NOISE = {"max_spread": 10.0, "max_contention": 10.0, "max_model_error": 10.0}


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stored_trials(study_file) -> list:
    """The trials the study file's storage holds, read straight from Optuna."""
    import optuna

    from nas.study import Study

    study = Study.load(study_file)
    return optuna.load_study(study_name=study.name, storage=study.storage).get_trials()


def trial_notes(study_file) -> dict[int, tuple[str, list[str]]]:
    """Each stored trial's optuna-dashboard note and the file names of its artifacts, by trial number."""
    import optuna
    from optuna_dashboard import get_note

    from nas.study import Study

    study = Study.load(study_file)
    ostudy = optuna.load_study(study_name=study.name, storage=study.storage)
    return {t.number: (get_note(optuna.trial.Trial(ostudy, t._trial_id)),
                       [a.filename for a in optuna.artifacts.get_all_artifact_meta(t, storage=ostudy._storage)])
            for t in ostudy.get_trials()}


def base_study(root: Path) -> dict:
    return {
        "name": "tiny",
        "model": dict(TINY_MODEL),
        "space": TINY_SPACE,
        "latency": {"db": f"sqlite:///{root / 'latency.db'}", "predictor": str(root / "predictor.json"),
                    "trials": 0, "repeats": 3, "calibration": 4, **PLUMBING_NOISE},
        "budget": {"n_trials": 3, "epochs": 2, "steps_per_epoch": 2, "pretrain_epochs": 2, "finetune_epochs": 1},
        "train": {"batch_size": 32},
    }


def prepare(root: Path) -> Path:
    """Profile, fit and pretrain the tiny study in ``root`` through the pipeline; returns the teacher checkpoint."""
    from nas import pipeline
    from nas.study import Study

    os.environ.setdefault("SHIFTADD_CACHE", str(root / "kernels"))
    study = Study.load(write_study(root / "base.yaml", base_study(root)))
    profiled = pipeline.profile(study)
    assert not profiled.failed and not profiled.noisy, (profiled.failed, profiled.noisy)
    fitted = pipeline.fit_latency(study)
    assert fitted.refused is None, fitted.refused
    return Path(pipeline.pretrain(study).path)


def search(study_file: Path, backend: str = "optuna", **options):
    """``nas search`` on the study file through the API (``options``: of :class:`nas.pipeline.SearchOptions`);
    returns its summary."""
    from nas import pipeline
    from nas.study import Study

    return pipeline.search(Study.load(study_file), backend, pipeline.SearchOptions(**options))


def write_study(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
