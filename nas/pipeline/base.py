"""What every step shares: the study's working folder, its data, its validation, where training runs, where the
report goes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from latency_model.decomposition import ModelDims
from latency_model.predictor import Predictor, PredictorError
from search_spaces.errors import ConfigError, ShiftAddError
from search_spaces.reparam import create_model

from ..device import resolve
from ..study import Study, create_pruner, create_sampler
from ..training import data
from ..training.checkpoints import load_published
from ..training.teacher import load_teacher

if TYPE_CHECKING:

    from ..device import Placement
    from ..training.data import Splits


@contextmanager
def in_study(study: Study) -> Iterator[None]:
    """Errors about a study's files and settings name the study file too."""
    try:
        yield
    except ShiftAddError as e:
        raise (e.in_file(study.path) if e.source is None else e) from None


def load_data(study: Study) -> "Splits":
    """The study's train / search / test splits, checked against its model."""
    dims = ModelDims.of(study.model)
    with in_study(study):
        return data.load(study.data, dims.img, dims.classes)


# ---- validate -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Validation:
    study: Study
    splits: "Splits"
    placement: "Placement"  # where training runs on this machine


def validate(study: Study) -> Validation:
    """Check what a study needs without running anything: its sampler and pruner arguments, its data, its teacher
    checkpoint or published weights file (when given) and its predictor file (when there is one)."""
    with in_study(study):
        create_sampler(study)  # their arguments are checked when built
        create_pruner(study)
        placement = training_placement(study)
        splits = load_data(study)
        if study.checkpoint is not None:
            load_teacher(study)  # the checkpoint reads and fits the model
        if isinstance(study.pretrained, Path):
            load_published(create_model(study.model), study.pretrained)  # the weights file reads and fits it
        if Path(study.latency.predictor).is_file():
            try:
                Predictor.load(study.latency.predictor, device=study.latency.device)  # fitted for this device
            except PredictorError as e:
                raise ConfigError("latency.predictor", str(e)) from None
    return Validation(study, splits, placement)


def training_placement(study: Study) -> "Placement":
    """Where the study trains on this machine: ``train.device`` and ``train.precision`` resolved; ``cuda`` on a
    machine without one is a :class:`ConfigError` here, before any work."""
    with in_study(study):
        return resolve(study.train.device, study.train.precision)


# ---- report, export, finetune ---------------------------------------------------------------------------------------
def report_folder(study: Study) -> Path:
    return study.folder / "runs" / study.name
