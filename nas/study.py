"""The study file: one YAML file holds everything a search needs, validated on load.

    name: quickstart                      # the Optuna study name; default storage sqlite:///<dir>/<name>.db
    plugins: []                           # Python modules to import first: they register primitives
                                          #   (search_spaces.registry), in every process that reads the study
    model:
      name: deit_tiny_patch16_224         # timm VisionTransformer + kwargs (see search_spaces.config)
      kwargs: {img_size: 32, patch_size: 4, depth: 4, embed_dim: 64, num_heads: 2, num_classes: 10}
      checkpoint: null                    # dense weights (.safetensors, or a torch file read with weights_only);
                                          #   null: `nas pretrain` trains them into <dir>/<name>-teacher.safetensors
      pretrained: false                   # true: `nas pretrain` starts from timm's published weights (downloaded;
                                          #   a new head when num_classes differs) instead of a random init;
                                          #   a file: those weights, downloaded elsewhere
    data:
      source: digits                      # shapes (generated) | digits (bundled) | imagefolder
      path: null                          # imagefolder: a folder with train/<class>/*.png and val/<class>/*.png
      images: 8000                        # shapes: how many images are generated (train, search and test together)
      test_fraction: 0.2                  # shapes, digits: share held out as the test set (imagefolder: its val/)
      search_fraction: 0.2                # share of the training data carved out (stratified) to score trials on
      seed: 0                             # seed of the search split (and of the shapes generator)
    space: {...}                          # see search_spaces.space
    objectives:
      metrics: [accuracy, latency_ms]     # accuracy (maximized), then any of latency_ms (predicted) and energy_uj
                                          #   (estimated), minimized: a Pareto search; [accuracy] alone: one objective
      latency_budget_ms: null             # configs predicted slower are infeasible (latency_ms not an objective)
      energy_budget_uj: null              # configs estimated to spend more are infeasible (energy_uj not one)
    latency: {...}                        # see latency_model.settings
    energy:                               # the unit-cost table energy_uj is priced with (latency_model.energy)
      table: horowitz45nm                 # horowitz45nm | shiftaddnas; ops: {shift.int32: 0.13, ...},
                                          #   dram_pj_per_byte, sram_pj_per_byte override its entries
    budget:
      n_trials: 20                        # trials that finish (complete or pruned); a re-run continues up to it
      timeout_s: null                     # stop starting trials after this many seconds (per `nas search` run)
      epochs: 2                           # fine-tuning epochs per trial (a validation score after each)
      steps_per_epoch: 20                 # null: one pass over the training set
      pretrain_epochs: 20                 # epochs of `nas pretrain` (when no checkpoint is given)
      finetune_epochs: 10                 # default epochs of `nas finetune`
    train:
      batch_size: 64
      lr: 0.001                           # fine-tuning (trials, nas finetune): AdamW, cosine decay over the run
      pretrain_lr: 0.002                  # pretraining the teacher
      weight_decay: 0.05
      distill_alpha: 0.5                  # weight of the KL to the teacher (1 - alpha: cross-entropy to the labels)
      distill_temperature: 2.0
      moe_loss_weight: 0.01               # weight of the latency-aware MoE balance loss
      seed: 0
      device: auto                        # auto (CUDA when there is one, else the CPU) | cpu | cuda | cuda:N
      precision: fp32                     # fp32 | bf16 (autocast) | fp16 (autocast + gradient scaler, CUDA)
      loader_workers: null                # DataLoader processes (null: 0 in memory, up to 4 for an imagefolder)
    evaluation:
      mode: finetune                      # finetune: each trial fine-tunes its own copy of the teacher (the budget
                                          #   above) | supernet: it inherits weights from the study's supernet
      finetune_steps: 0                   # supernet mode: steps of the trial recipe after inheriting (0: none)
      supernet_steps: 1000                # `nas supernet`: training steps (sandwich rule, distilled from the teacher)
      random_subnets: 2                   # per step, besides the densest and the predicted-cheapest subnet
      supernet_lr: null                   # null: train.lr
    sampler: {name: tpe, seed: 0}         # tpe | nsga2 | random
    pruner: {name: none}                  # none | median | hyperband | asha (single objective only; kwargs passed
                                          #   on). asha: Optuna's SuccessiveHalvingPruner, Ray's ASHAScheduler
    storage: null                         # any SQLAlchemy URL Optuna accepts; default sqlite:///<dir>/<name>.db
    search:
      heartbeat_s: 60                     # a worker's trials beat this often; one silent for 2 beats is FAIL
      retries: 1                          # a trial failed that way is queued again this many times
    artifacts: null                       # optuna-dashboard's artifact store: a folder (default runs/<name>/artifacts
                                          #   next to the file), s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX]

Relative paths (checkpoint, data path, storage file, artifacts) are relative to the study file's folder.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from latency_model.db import anchor_sqlite
from latency_model.energy import EnergySettings, check_priceable
from latency_model.settings import LatencySettings
from search_spaces.config import ConfigError, ModelSpec, _check_keys
from search_spaces.space import SearchSpace


SECTIONS = ("name", "model", "plugins", "data", "space", "objectives", "latency", "energy", "budget", "train",
            "evaluation", "sampler", "pruner", "storage", "search", "artifacts")
METRICS = ("accuracy", "latency_ms", "energy_uj")
BUDGETS = {"latency_ms": "latency_budget_ms", "energy_uj": "energy_budget_uj"}  # hardware metric -> its budget key
# name -> the Optuna class (in optuna.samplers, optuna.pruners), each name written here only
SAMPLERS = {"tpe": "TPESampler", "nsga2": "NSGAIISampler", "random": "RandomSampler"}
PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "hyperband": "HyperbandPruner",
           "asha": "SuccessiveHalvingPruner"}
DATA_SOURCES = ("shapes", "digits", "imagefolder")
DEFAULT_IMAGES = 8000  # the shapes task's size when a study does not give data.images
MAX_SHAPES_IMAGES = 200_000  # 2.4 GB of float32 images: more than that belongs in an imagefolder


def _number(data: Mapping, key: str, where: str, *, integer: bool = False, minimum: float | None = None,
            above: float | None = None, maximum: float | None = None, optional: bool = False) -> Any:
    """``data[key]`` checked to be a number in range; the error names ``where.key`` and the value."""
    value = data[key]
    if value is None and optional:
        return None
    kind = "an integer" if integer else "a number"
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    ok = ok and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (above is None or value > above)
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        bounds = [f">= {minimum}" if minimum is not None else "", f"> {above}" if above is not None else "",
                  f"<= {maximum}" if maximum is not None else ""]
        range_text = " and ".join(b for b in bounds if b)
        raise ConfigError(f"{where}.{key}", f"expected {kind}{' ' + range_text if range_text else ''}"
                                            f"{' or null' if optional else ''}, got {value!r}")
    return float(value) if not integer else value


def _section(cls, data: Any, where: str, checks: dict[str, dict[str, Any]]):
    """A dataclass section: unknown keys rejected, every given number checked by ``checks``."""
    names = tuple(f.name for f in fields(cls))
    data = _check_keys(data if data is not None else {}, where, (), names)
    values = {key: _number(data, key, where, **checks[key]) if key in checks else data[key] for key in data}
    return cls(**values)


@dataclass(frozen=True)
class DataSpec:
    source: str = "digits"
    path: str | None = None
    test_fraction: float = 0.2
    search_fraction: float = 0.2
    seed: int = 0
    images: int | None = None  # shapes only: the generated task's size (default DEFAULT_IMAGES)

    @classmethod
    def from_dict(cls, data: Any, base: Path) -> "DataSpec":
        if isinstance(data, Mapping) and "val_fraction" in data:
            raise ConfigError("data.val_fraction", "renamed to test_fraction: the held-out share is the test set, "
                                                   "reported and never searched on (trials are scored on "
                                                   "data.search_fraction of the training data)")
        spec = _section(cls, data, "data", {"test_fraction": {"above": 0, "maximum": 0.9},
                                            "search_fraction": {"above": 0, "maximum": 0.5},
                                            "seed": {"integer": True, "minimum": 0},
                                            "images": {"integer": True, "minimum": 100,
                                                       "maximum": MAX_SHAPES_IMAGES}})
        if spec.source not in DATA_SOURCES:
            raise ConfigError("data.source", f"unknown data source {spec.source!r} (choose from "
                                             f"{', '.join(DATA_SOURCES)})")
        if spec.source == "shapes":
            if spec.path is not None:
                raise ConfigError("data.path", f"the shapes task is generated and takes no path (got {spec.path!r})")
            return spec if spec.images is not None else replace(spec, images=DEFAULT_IMAGES)
        if spec.images is not None:
            raise ConfigError("data.images", f"only for the generated shapes task (this source is {spec.source})")
        if spec.source == "imagefolder":
            if "test_fraction" in data:
                raise ConfigError("data.test_fraction", "only for shapes and digits: an imagefolder's test set is "
                                                        "its val/ folder")
            if not isinstance(spec.path, str) or not spec.path:
                raise ConfigError("data.path", "imagefolder needs a path: a folder with train/ and val/ subfolders")
            return replace(spec, path=str(base / spec.path))
        if spec.path is not None:
            raise ConfigError("data.path", f"the digits source takes no path (got {spec.path!r})")
        return spec


@dataclass(frozen=True)
class Objectives:
    """What trials are scored on: ``accuracy`` (maximized) and any hardware metrics (minimized), plus budgets that
    make a trial over them infeasible, for a hardware metric that is not an objective."""

    metrics: tuple[str, ...] = ("accuracy", "latency_ms")
    latency_budget_ms: float | None = None
    energy_budget_uj: float | None = None

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    @property
    def hardware(self) -> tuple[str, ...]:
        """The hardware metrics searched on (minimized), in the order given."""
        return self.metrics[1:]

    @property
    def directions(self) -> list[str]:
        return ["maximize" if m == "accuracy" else "minimize" for m in self.metrics]

    @property
    def budgets(self) -> dict[str, float]:
        """Hardware metric -> its budget, for the budgets given."""
        given = {"latency_ms": self.latency_budget_ms, "energy_uj": self.energy_budget_uj}
        return {m: b for m, b in given.items() if b is not None}

    @property
    def uses_energy(self) -> bool:
        return "energy_uj" in self.metrics or self.energy_budget_uj is not None

    @classmethod
    def from_dict(cls, data: Any) -> "Objectives":
        data = _check_keys(data if data is not None else {}, "objectives", (), ("metrics", *BUDGETS.values()))
        metrics = data.get("metrics", ["accuracy", "latency_ms"])
        allowed = ", ".join(METRICS)
        if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
            raise ConfigError("objectives.metrics", f"expected a list like [accuracy, latency_ms, energy_uj], got "
                                                    f"{metrics!r}")
        for m in metrics:
            if m not in METRICS:
                raise ConfigError("objectives.metrics", f"unknown metric {m!r} (allowed: {allowed})")
        if metrics[0] != "accuracy" or len(set(metrics)) != len(metrics):
            raise ConfigError("objectives.metrics", f"expected accuracy first, then any of {', '.join(METRICS[1:])} "
                                                    f"once each, got {metrics!r}")
        budgets = {}
        for metric, name in BUDGETS.items():
            if name not in data:
                continue
            budgets[name] = _number(data, name, "objectives", above=0, optional=True)
            if budgets[name] is not None and metric in metrics:
                raise ConfigError(f"objectives.{name}", f"a budget is for a metric that is not an objective; with "
                                                        f"{metric} in objectives.metrics, remove it")
        return cls(tuple(metrics), **budgets)


@dataclass(frozen=True)
class Budget:
    n_trials: int = 20
    timeout_s: float | None = None
    epochs: int = 2
    steps_per_epoch: int | None = 20
    pretrain_epochs: int = 20
    finetune_epochs: int = 10

    @classmethod
    def from_dict(cls, data: Any) -> "Budget":
        positive = {"integer": True, "minimum": 1}
        return _section(cls, data, "budget", {
            "n_trials": positive, "epochs": positive, "pretrain_epochs": positive, "finetune_epochs": positive,
            "steps_per_epoch": {**positive, "optional": True}, "timeout_s": {"above": 0, "optional": True},
        })


@dataclass(frozen=True)
class TrainSettings:
    batch_size: int = 64
    lr: float = 1e-3
    pretrain_lr: float = 2e-3
    weight_decay: float = 0.05
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    moe_loss_weight: float = 0.01
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (nas.device)
    precision: str = "fp32"  # fp32 | bf16 | fp16
    loader_workers: int | None = None  # DataLoader processes; None: 0 for in-memory data, up to 4 for an imagefolder

    # Where and how fast a model trains, not what it learns: left out of the recipe a cached result is keyed by.
    PLACEMENT = ("device", "loader_workers")

    @classmethod
    def from_dict(cls, data: Any) -> "TrainSettings":
        from .device import check_device, check_precision

        settings = _section(cls, data, "train", {
            "batch_size": {"integer": True, "minimum": 1}, "lr": {"above": 0}, "pretrain_lr": {"above": 0}, "weight_decay": {"minimum": 0},
            "distill_alpha": {"minimum": 0, "maximum": 1}, "distill_temperature": {"above": 0},
            "moe_loss_weight": {"minimum": 0}, "seed": {"integer": True, "minimum": 0},
            "loader_workers": {"integer": True, "minimum": 0},
        })
        check_device(settings.device)
        check_precision(settings.precision)
        return settings

    def recipe(self) -> dict[str, Any]:
        """The settings a trained model depends on (a cache key): every field but where it trains; ``precision``
        only when it is not fp32, so results keyed before it existed stay valid."""
        values = {k: v for k, v in asdict(self).items() if k not in self.PLACEMENT}
        if values["precision"] == "fp32":
            del values["precision"]
        return values


EVALUATION_MODES = ("finetune", "supernet")


@dataclass(frozen=True)
class EvaluationSettings:
    """How a trial scores its architecture: ``finetune`` (its own short fine-tune from the teacher) or ``supernet``
    (weights inherited from the study's weight-sharing supernet, then ``finetune_steps`` steps of the same recipe);
    and how ``nas supernet`` trains that supernet."""

    mode: str = "finetune"
    finetune_steps: int = 0
    supernet_steps: int = 1000  # sandwich steps of `nas supernet`
    random_subnets: int = 2  # per step, besides the densest and the cheapest subnet (the sandwich rule)
    supernet_lr: float | None = None  # None: train.lr

    @classmethod
    def from_dict(cls, data: Any) -> "EvaluationSettings":
        settings = _section(cls, data, "evaluation", {
            "finetune_steps": {"integer": True, "minimum": 0}, "supernet_steps": {"integer": True, "minimum": 1},
            "random_subnets": {"integer": True, "minimum": 0}, "supernet_lr": {"above": 0, "optional": True}})
        if settings.mode not in EVALUATION_MODES:
            raise ConfigError("evaluation.mode", f"expected one of {', '.join(EVALUATION_MODES)}, got "
                                                 f"{settings.mode!r}")
        return settings

    @property
    def supernet(self) -> bool:
        return self.mode == "supernet"

    def supernet_recipe(self) -> dict[str, Any]:
        """What the supernet's weights depend on besides the model, space, data, teacher and train settings."""
        return {"steps": self.supernet_steps, "random_subnets": self.random_subnets, "lr": self.supernet_lr}


@dataclass(frozen=True)
class SearchSettings:
    heartbeat_s: int = 60
    retries: int = 1

    @classmethod
    def from_dict(cls, data: Any) -> "SearchSettings":
        return _section(cls, data, "search", {"heartbeat_s": {"integer": True, "minimum": 1},
                                              "retries": {"integer": True, "minimum": 0}})


@dataclass(frozen=True)
class Choice:
    """A named component (sampler, pruner) with keyword arguments passed on to it."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str, names: Collection[str], default: str) -> "Choice":
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise ConfigError(where, f"expected a mapping like {{name: {default}}}, got {data!r}")
        data = dict(data)
        name = data.pop("name", default)
        if name not in names:
            raise ConfigError(f"{where}.name", f"unknown {where} {name!r} (choose from {', '.join(names)})")
        return cls(name, data)


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
    energy: EnergySettings = EnergySettings()
    plugins: tuple[str, ...] = ()
    artifacts: str = ""  # where optuna-dashboard's artifacts go (nas.search.dashboard.artifact_location: the default)
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
        from .device import check_device

        return replace(self, train=replace(self.train, device=check_device(device, "--device")))

    @property
    def teacher_path(self) -> Path:
        """The dense weights: the study's checkpoint, else where ``nas pretrain`` writes them."""
        return self.checkpoint or self.folder / f"{self.name}-teacher.safetensors"

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
        data = _check_keys(data, "", ("name", "model"), SECTIONS[2:])
        name = data["name"]
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError("name", f"expected a name of letters, digits, '-', '_' or '.', got {name!r}")
        folder = path.parent
        plugins = load_plugins(data.get("plugins"), folder)  # before the space: it may name their primitives
        model_data = _check_keys(data["model"], "model", ("name",), ("kwargs", "checkpoint", "pretrained"))
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
        import timm

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
            check_priceable(space)
        evaluation = EvaluationSettings.from_dict(data.get("evaluation"))
        if evaluation.supernet:
            from search_spaces.supernet import check_shareable

            check_shareable(space)
        return cls(
            path=path, name=name, model=model, checkpoint=folder / checkpoint if checkpoint else None,
            data=DataSpec.from_dict(data.get("data"), folder),
            space=space,
            objectives=objectives, latency=declared_latency.resolved(folder), budget=Budget.from_dict(data.get("budget")),
            train=TrainSettings.from_dict(data.get("train")),
            sampler=Choice.from_dict(data.get("sampler"), "sampler", SAMPLERS, "tpe"), pruner=pruner,
            storage=storage, search=SearchSettings.from_dict(data.get("search")), plugins=plugins,
            evaluation=evaluation, energy=energy,
            artifacts=artifacts or "", declared_latency=declared_latency, pretrained=pretrained,
        )


def load_plugins(names: Any, folder: Path) -> tuple[str, ...]:
    """Import the modules a study names under ``plugins:`` (importable from the study's folder too), so the
    primitives they register exist before the space is read. Importing one twice is harmless."""
    import importlib
    import sys

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
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

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


def sampler_seed(study: Study, stream: tuple[int, ...] = ()) -> int:
    """The seed of a sampler: the study's ``sampler.seed``, or one derived from it and ``stream`` (a search run's
    driver seed, the trials stored when it started, its worker), so that drivers started together, workers of one
    driver and a resumed search each draw their own architectures, and each run is reproducible from its stream."""
    import numpy as np

    seed = study.sampler.kwargs.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("sampler.seed", f"expected an integer, got {seed!r}", str(study.path))
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0]) if stream else seed


def create_sampler(study: Study, stream: tuple[int, ...] = ()):
    """The study's Optuna sampler, seeded with :func:`sampler_seed` of ``stream``."""
    import optuna

    kwargs = dict(study.sampler.kwargs)
    kwargs.pop("seed", None)
    seed = sampler_seed(study, stream)
    try:
        return getattr(optuna.samplers, SAMPLERS[study.sampler.name])(seed=seed, **kwargs)
    except TypeError as e:
        raise ConfigError("sampler", f"{study.sampler.name} does not take {kwargs}: {e}", str(study.path)) from None


def create_pruner(study: Study):
    """The study's Optuna pruner (epochs are the steps it sees)."""
    import optuna

    kwargs = dict(study.pruner.kwargs)
    if study.pruner.name == "hyperband":
        kwargs.setdefault("min_resource", 1)
        kwargs.setdefault("max_resource", study.budget.epochs)
    try:
        return getattr(optuna.pruners, PRUNERS[study.pruner.name])(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError("pruner", f"{study.pruner.name} does not take {kwargs}: {e}", str(study.path)) from None
