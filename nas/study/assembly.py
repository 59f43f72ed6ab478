"""The :class:`Study`: a study file read, each section validated by its reader, and assembled into one value with
the paths it implies (teacher, supernet, storage); the plugins it names imported first."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import timm
import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from latency_model.db import anchor_sqlite
from latency_model.energy import EnergySettings, check_priceable
from latency_model.settings import LatencySettings
from search_spaces.config import ConfigError, ModelSpec
from search_spaces.schema import check_keys
from search_spaces.space import SearchSpace
from search_spaces.supernet import check_shareable

from ..device import check_device
from .sections import (
    PRUNERS,
    SAMPLERS,
    Budget,
    Choice,
    DataSpec,
    EvaluationSettings,
    Objectives,
    RefineSettings,
    SearchSettings,
    TrainSettings,
)

SECTIONS = ("name", "model", "plugins", "data", "space", "objectives", "latency", "energy", "budget", "train",
            "evaluation", "refine", "sampler", "pruner", "storage", "search", "artifacts")


@dataclass(frozen=True)
class Study:
    """A validated study file."""

    path: Path
    name: str
    model: ModelSpec
    checkpoint: Path | None
    data: DataSpec
    space: SearchSpace
    objectives: Objectives
    latency: LatencySettings
    budget: Budget
    train: TrainSettings
    sampler: Choice
    pruner: Choice
    storage: str
    search: SearchSettings = SearchSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    refine: RefineSettings = RefineSettings()
    energy: EnergySettings = EnergySettings()
    plugins: tuple[str, ...] = ()
    artifacts: str = ""  # where optuna-dashboard's artifacts go (Study.artifact_location: the default)
    pretrained: bool | Path = False  # nas pretrain starts from timm's published weights: True (the hub) or a file
    # the latency: section as written, before the defaults that depend on the target and the folder were filled in
    declared_latency: LatencySettings = field(default=LatencySettings(), repr=False, compare=False)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def latency_with(self, **overrides: Any) -> LatencySettings:
        """The latency settings with ``overrides`` (e.g. from the command line; None values ignored) applied before
        the defaults that depend on them (device name, predictor path) are filled in."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self.declared_latency, **given).resolved(self.folder) if given else self.latency

    def on_device(self, device: str | None) -> "Study":
        """The study with ``train.device`` set from the command line (``--device``; None: as it is)."""
        if device is None:
            return self

        return replace(self, train=replace(self.train, device=check_device(device, "--device")))

    @property
    def teacher_path(self) -> Path:
        """The dense weights: the study's checkpoint, else where ``nas pretrain`` writes them."""
        return self.checkpoint or self.folder / f"{self.name}-teacher.safetensors"

    @property
    def artifact_location(self) -> str:
        """Where optuna-dashboard's artifacts go: the ``artifacts:`` setting, or ``runs/<name>/artifacts`` next to the
        file."""
        return self.artifacts or str(self.folder / "runs" / self.name / "artifacts")

    @property
    def supernet_path(self) -> Path:
        """Where ``nas supernet`` writes the study's weight-sharing supernet."""
        return self.folder / f"{self.name}-supernet.safetensors"

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> "Study":
        """Read and validate a study file; every error names the file and the key. ``overrides`` replace top-level
        sections after validation (``storage=``)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError("", f"cannot read study file: {e.strerror}", str(path)) from None
        return cls.parse(text, path, **overrides)

    @classmethod
    def parse(cls, text: str, path: str | Path, **overrides: Any) -> "Study":
        """A study from the text of its file (``path`` locates relative paths; e.g. on a Ray node without the
        file)."""
        path = Path(path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError("", f"not valid YAML: {e}", str(path)) from None
        try:
            study = cls.from_dict(data, path)
        except ConfigError as e:
            raise e.in_file(path) from None
        return replace(study, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> "Study":
        data = check_keys(data, "", ("name", "model"), SECTIONS[2:])
        name = data["name"]
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError("name", f"expected a name of letters, digits, '-', '_' or '.', got {name!r}")
        folder = path.parent
        plugins = load_plugins(data.get("plugins"), folder)  # before the space: it may name their primitives
        model_data = check_keys(data["model"], "model", ("name",), ("kwargs", "checkpoint", "pretrained"))
        checkpoint = model_data.get("checkpoint")
        if checkpoint is not None and (not isinstance(checkpoint, str) or not checkpoint):
            raise ConfigError("model.checkpoint", f"expected a file path, got {checkpoint!r}")
        pretrained = model_data.get("pretrained", False)
        if isinstance(pretrained, str) and pretrained:
            pretrained = folder / pretrained
        elif not isinstance(pretrained, bool):
            raise ConfigError("model.pretrained", f"expected true, false or a weights file, got {pretrained!r}")
        if pretrained and checkpoint is not None:
            raise ConfigError("model.pretrained", "give pretrained (nas pretrain fine-tunes published weights) or a "
                                                  "checkpoint (the teacher as it is), not both")
        model = ModelSpec.from_dict({k: v for k, v in model_data.items() if k not in ("checkpoint", "pretrained")})

        if not timm.is_model(model.name):
            raise ConfigError("model.name", f"unknown timm model {model.name!r} (see timm.list_models())")
        objectives = Objectives.from_dict(data.get("objectives"))
        pruner = Choice.from_dict(data.get("pruner"), "pruner", PRUNERS, "none")
        if pruner.name != "none" and objectives.multi:
            raise ConfigError("pruner.name", f"Optuna prunes single-objective studies only; use {{name: none}} with "
                                             f"metrics {list(objectives.metrics)}, or metrics [accuracy] to prune")
        storage = data.get("storage") or f"sqlite:///{folder / name}.db"
        if not isinstance(storage, str) or "://" not in storage:
            shown = "a value that is not a URL (not shown: it may hold a password)" \
                if isinstance(storage, str) and ("@" in storage or ":" in storage) else repr(storage)
            raise ConfigError("storage", f"expected a database URL like sqlite:///studies/x.db or "
                                         f"postgresql://user@host/db, got {shown}")
        _check_database_url(storage)
        if data.get("storage"):
            storage = anchor_sqlite(storage, folder)
        declared_latency = LatencySettings.from_dict(data.get("latency"))
        artifacts = data.get("artifacts")
        if artifacts is not None and (not isinstance(artifacts, str) or not artifacts):
            raise ConfigError("artifacts", f"expected a folder or an s3:// or gs:// URL, got {artifacts!r}")
        if artifacts and "://" not in artifacts:
            artifacts = str(folder / artifacts)
        elif artifacts and artifacts.split("://")[0] not in ("s3", "gs", "file"):
            raise ConfigError("artifacts", f"unknown artifact store {artifacts!r}: a folder, s3://BUCKET[/PREFIX] or "
                                           "gs://BUCKET[/PREFIX]")
        space = SearchSpace.from_dict(data.get("space"), model)
        energy = EnergySettings.from_dict(data.get("energy"))
        if objectives.uses_energy:
            check_priceable(space, model=energy.model)
        evaluation = EvaluationSettings.from_dict(data.get("evaluation"))
        if evaluation.supernet:
            check_shareable(space)
        return cls(
            path=path, name=name, model=model, checkpoint=folder / checkpoint if checkpoint else None,
            data=DataSpec.from_dict(data.get("data"), folder),
            space=space,
            objectives=objectives, latency=declared_latency.resolved(folder), budget=Budget.from_dict(data.get("budget")),
            train=TrainSettings.from_dict(data.get("train")),
            sampler=Choice.from_dict(data.get("sampler"), "sampler", SAMPLERS, "tpe"), pruner=pruner,
            storage=storage, search=SearchSettings.from_dict(data.get("search")), plugins=plugins,
            evaluation=evaluation, energy=energy, refine=RefineSettings.from_dict(data.get("refine")),
            artifacts=artifacts or "", declared_latency=declared_latency, pretrained=pretrained,
        )


def load_plugins(names: Any, folder: Path) -> tuple[str, ...]:
    """Import the modules a study names under ``plugins:`` (importable from the study's folder too), so the
    primitives they register exist before the space is read. Importing one twice is harmless."""

    if names is None:
        return ()
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError("plugins", f"expected a list of Python module names, got {names!r}")
    if str(folder.resolve()) not in sys.path:
        sys.path.append(str(folder.resolve()))
    for i, name in enumerate(names):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a plugin's import can fail in any way; say which and why
            raise ConfigError(f"plugins[{i}]", f"cannot import {name!r}: {type(e).__name__}: {e}") from None
    return tuple(names)


def _check_database_url(url: str) -> None:
    """A URL SQLAlchemy can parse, of a database kind it knows (its driver may still need installing)."""

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("storage", "not a database URL (like sqlite:///studies/x.db or "
                                     "postgresql://user@host/db)") from None
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise ConfigError("storage", f"unknown database kind {parsed.drivername!r} in "
                                     f"{parsed.render_as_string(hide_password=True)} (sqlite, postgresql, mysql...)") \
            from None
    except ImportError:
        pass  # a known kind whose driver is missing: said when the search opens it


__all__ = ["SECTIONS", "Study", "load_plugins"]
