"""The sections of a study file other than the model, space, latency and energy (which their own packages read):
data, objectives, budget, train, evaluation, search, and the sampler or pruner's name and arguments."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from search_spaces.config import ConfigError
from search_spaces.schema import check_keys, check_number

from ..device import check_device, check_precision

METRICS = ("accuracy", "latency_ms", "energy_uj")
BUDGETS = {"latency_ms": "latency_budget_ms", "energy_uj": "energy_budget_uj"}  # hardware metric -> its budget key
DATA_SOURCES = ("shapes", "digits", "imagefolder")
DEFAULT_IMAGES = 8000  # the shapes task's size when a study does not give data.images
MAX_SHAPES_IMAGES = 200_000  # 2.4 GB of float32 images: more than that belongs in an imagefolder
# name -> the Optuna class (in optuna.samplers, optuna.pruners), each name written here only
SAMPLERS = {"tpe": "TPESampler", "nsga2": "NSGAIISampler", "random": "RandomSampler"}
PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "hyperband": "HyperbandPruner",
           "asha": "SuccessiveHalvingPruner"}


def _number(data: Mapping, key: str, where: str, **bounds: Any) -> Any:
    """``data[key]`` checked to be a number in range (:func:`search_spaces.schema.check_number`)."""
    return check_number(data[key], f"{where}.{key}", **bounds)


def _section(cls, data: Any, where: str, checks: dict[str, dict[str, Any]]):
    """A dataclass section: unknown keys rejected, every given number checked by ``checks``."""
    names = tuple(f.name for f in fields(cls))
    data = check_keys(data if data is not None else {}, where, (), names)
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
        data = check_keys(data if data is not None else {}, "objectives", (), ("metrics", *BUDGETS.values()))
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
class RefineSettings:
    """What ``nas refine`` (and ``nas run`` after its search) trains for real: the ``top`` candidates of the front
    and the dense reference, each fine-tuned for ``seeds`` seeds of ``epochs`` full epochs (None: the budget's
    ``finetune_epochs``). ``top: 0`` turns the refine off."""

    top: int = 3
    seeds: int = 1
    epochs: int | None = None

    @classmethod
    def from_dict(cls, data: Any) -> "RefineSettings":
        return _section(cls, data, "refine", {"top": {"integer": True, "minimum": 0},
                                              "seeds": {"integer": True, "minimum": 1},
                                              "epochs": {"integer": True, "minimum": 1, "optional": True}})


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


__all__ = ["PRUNERS", "SAMPLERS", "BUDGETS", "Budget", "Choice", "DATA_SOURCES", "DEFAULT_IMAGES", "DataSpec", "EVALUATION_MODES", "EvaluationSettings",
           "MAX_SHAPES_IMAGES", "METRICS", "Objectives", "RefineSettings", "SearchSettings", "TrainSettings"]
