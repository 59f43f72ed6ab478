"""From a study to files: choose trials, write their ArchConfigs, fine-tune one.

An exported file is an ArchConfig file (``nas show`` and ``ArchConfig.load`` read it) with a ``provenance`` section:
the study file, study name, trial number, its metrics and predicted latency.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from search_spaces import ArchConfig
from search_spaces.errors import ConfigError, StateError

from .disk import ensure_writable
from . import attributes as attr
from .study import Study
from .train import standard_error

# Multi-objective "best": the fastest Pareto trial whose search accuracy is within this many standard errors of the
# most accurate one's (the one-standard-error rule): closer than that, the search split cannot tell them apart.
BEST_TOLERANCE_SE = 1.0


def pareto_trials(ostudy: optuna.Study) -> list[FrozenTrial]:
    """The Pareto-optimal complete trials on the study's objectives (:func:`nas.report.front_metrics`), feasible
    ones only when a budget applies, most accurate first; an architecture scored by several trials appears once."""
    from .report import front_metrics, pareto_front, points

    feasible = [p for p in points(ostudy) if all(v <= 0 for v in p.trial.constraints.values())]
    return [p.trial for p in sorted(pareto_front(feasible, front_metrics(ostudy)), key=lambda p: -p.accuracy)]


def best_trial(ostudy: optuna.Study, tolerance_se: float = BEST_TOLERANCE_SE) -> FrozenTrial:
    """Single objective: Optuna's best (feasible) trial. Pareto search: of the Pareto trials whose search accuracy
    is within ``tolerance_se`` binomial standard errors (of the most accurate one, on the search split) of the most
    accurate one, the cheapest on the study's first hardware objective (``latency_ms`` in ``[accuracy, latency_ms,
    energy_uj]``; ties broken by the next). The test accuracy plays no part in the choice."""
    from .report import front_metrics

    if len(ostudy.directions) == 1:
        try:
            return ostudy.best_trial
        except ValueError:
            raise StateError("--trial", "the study has no complete (feasible) trial yet") from None
    front = pareto_trials(ostudy)
    if not front:
        raise StateError("--trial", "the study has no complete trial yet")
    top = front[0].user_attrs[attr.SEARCH_ACCURACY]
    margin = tolerance_se * standard_error(top, front[0].user_attrs.get(attr.SEARCH_IMAGES, 0))
    margin = 0.0 if math.isnan(margin) else margin
    hardware = front_metrics(ostudy)[1:]
    return min((t for t in front if t.user_attrs[attr.SEARCH_ACCURACY] >= top - margin - 1e-12),
               key=lambda t: tuple(t.user_attrs[m] for m in hardware))


def choose(ostudy: optuna.Study, which: str) -> list[FrozenTrial]:
    """``best``, ``pareto`` or a trial number."""
    if which == "best":
        return [best_trial(ostudy)]
    if which == "pareto":
        front = pareto_trials(ostudy)
        if not front:
            raise StateError("--trial", "the study has no complete trial yet")
        return front
    try:
        number = int(which)
    except ValueError:
        raise ConfigError("--trial", f"expected best, pareto or a trial number, got {which!r}") from None
    trials = ostudy.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise ConfigError("--trial", f"no trial {number} in study {ostudy.study_name!r} "
                                     f"(it has trials 0..{len(trials) - 1})")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise ConfigError("--trial", f"trial {number} is {trial.state.name}, not COMPLETE")
    return [trial]


def provenance(study: Study, trial: FrozenTrial, study_attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where an exported trial comes from and what it scored (``study_attrs``: the stored study's attributes, which
    hold a test accuracy evaluated after the trial)."""
    attrs = attr.with_test_split(trial.user_attrs, study_attrs or {}, trial.number)
    copied = (attr.SEARCH_ACCURACY, attr.SEARCH_SE, attr.TEST_ACCURACY, attr.TEST_SE, attr.LATENCY_MS,
              attr.LATENCY_BREAKDOWN, attr.ENERGY_UJ, attr.ENERGY_BREAKDOWN, attr.MOE_SPLIT, attr.REFERENCE)
    return {
        "study_file": str(study.path.resolve()),  # nas finetune works from any folder
        "study": study.name, "trial": trial.number, "latency_device": study.latency.device,
        **{key: attrs.get(key) for key in copied},
    }


def config_text(config: ArchConfig, origin: dict[str, Any]) -> str:
    """An exported ArchConfig file's text: the architecture and its ``provenance``."""
    return yaml.safe_dump({**config.to_dict(), "provenance": origin}, sort_keys=False)


def write_config(path: Path, config: ArchConfig, origin: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_text(config, origin))
    return path


def export(study: Study, ostudy: optuna.Study, which: str, out: Path) -> list[Path]:
    """Write the chosen trials' configs into ``out`` as ``trial-<n>.yaml``; a trial scored in supernet mode also gets
    the weights it inherited, ``trial-<n>.safetensors`` (named in its provenance: ``nas finetune`` starts there),
    and its test accuracy evaluated first where its trial did not (:func:`nas.objective.score_test_split`)."""
    from .checkpoints import save_weights
    from .objective import score_test_split

    ensure_writable(out, "--out", need_mb=1)
    paths, supernet = [], None
    chosen = choose(ostudy, which)
    score_test_split(study, ostudy, chosen)
    study_attrs = ostudy.user_attrs
    for trial in chosen:
        config = ArchConfig.from_json(trial.user_attrs[attr.CONFIG])
        origin = provenance(study, trial, study_attrs)
        if trial.user_attrs.get(attr.EVALUATION) == "supernet":
            if supernet is None:
                from .supernet import load_supernet
                from .teacher import load_teacher

                supernet = load_supernet(study, load_teacher(study))
            weights = save_weights(supernet.extract(config), out / f"trial-{trial.number}.safetensors",
                                   {"config": config.to_json()})
            origin["weights"] = weights.name
        paths.append(write_config(out / f"trial-{trial.number}.yaml", config, origin))
    return paths


def named_study(path: str | Path) -> str | None:
    """The study file an exported config names in its provenance, read without validating the config (whose
    primitives may come from that study's plugins); None when it names none or cannot be read."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None  # read_export says what is wrong with the file
    origin = data.get("provenance") if isinstance(data, dict) else None
    study = origin.get("study_file") if isinstance(origin, dict) else None
    return study if isinstance(study, str) and study else None


def read_export(path: str | Path) -> tuple[ArchConfig, dict[str, Any]]:
    """An exported (or plain) ArchConfig file and its provenance (empty for a plain one)."""
    config = ArchConfig.load(path)  # validates, with errors naming the file
    origin = yaml.safe_load(Path(path).read_text()).get("provenance") or {}
    if not isinstance(origin, dict):
        raise ConfigError("provenance", f"expected a mapping, got {origin!r}", str(path))
    return config, origin


@dataclass
class FinetuneResult:
    config: ArchConfig
    test_accuracy: float  # on the test split, after the last epoch: the figure to report
    test_se: float  # its binomial standard error
    search_accuracy: float  # on the search split (what the search saw); per epoch in history
    history: list[float]
    predicted_ms: float
    measured_ms: float | None
    weights: Path
    seconds: float
    energy: dict[str, Any] | None = None  # EnergyEstimate.to_dict() at the fine-tuned model's MoE loads

    def to_dict(self) -> dict[str, Any]:
        return {attr.CONFIG_ID: self.config.id, attr.TEST_ACCURACY: self.test_accuracy, attr.TEST_SE: self.test_se,
                attr.SEARCH_ACCURACY: self.search_accuracy, attr.SEARCH_ACCURACY_HISTORY: self.history,
                "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms,
                attr.ENERGY_UJ: None if self.energy is None else self.energy["energy_uj"],
                attr.ENERGY_BREAKDOWN: self.energy, "weights": str(self.weights), "seconds": round(self.seconds, 1)}


def finetune(study: Study, config: ArchConfig, epochs: int, out: Path, measure: bool = True,
             on_epoch=None, origin: dict[str, Any] | None = None, initial: Path | None = None) -> FinetuneResult:
    """Fine-tune ``config`` from the teacher (or from ``initial``, the weights a supernet-mode export wrote) for
    ``epochs`` full passes over the train split (same losses as a trial), score it on the test split; save the
    weights (safetensors) and the config into ``out``; predict and (with ``measure``) time its latency on the
    kernels."""
    from .checkpoints import save_weights
    from .objective import Evaluator

    if config.model != study.model:
        raise ConfigError("model", f"the config is for {config.model.to_dict()}, the study's model is "
                                   f"{study.model.to_dict()}")
    ensure_writable(out, "--out")
    start = time.perf_counter()
    evaluator = Evaluator(study, mode="finetune")
    history: list[float] = []

    def report(epoch: int, accuracy: float) -> bool:
        history.append(accuracy)
        if on_epoch is not None:
            on_epoch(epoch, accuracy)
        return False

    result, model = evaluator.run(config, epochs=epochs, full_epochs=True, report=report, initial=initial)
    model = model.cpu()  # saved, and timed on the study's latency target, from the CPU
    out.mkdir(parents=True, exist_ok=True)
    weights = save_weights(model, out / "model.safetensors", {"config": config.to_json()})
    test_se = round(result.test.standard_error, 6)
    write_config(out / "arch.yaml", config, {**(origin or {}), "finetune_epochs": epochs,
                                             "finetune_from": str(initial) if initial else "teacher",
                                             "finetune_test_accuracy": result.test.accuracy,
                                             "finetune_test_se": test_se})
    measured = None
    if measure:
        measured = measure_latency(study, model)
    finetuned = FinetuneResult(config, result.test.accuracy, test_se, result.search.accuracy, history,
                               result.latency_ms, measured, weights, time.perf_counter() - start, result.energy)
    (out / "result.json").write_text(json.dumps(finetuned.to_dict(), indent=1) + "\n")
    return finetuned


def profiled_trials(study: Study) -> int:
    """The tuning trials the study's kernels were profiled with, so a measurement runs the kernels the predictor
    was fitted on (and a demo profiled untuned does not start tuning here)."""
    from latency_model import db
    from latency_model.keys import is_kernel_op

    rows = db.latest(db.connect(study.latency.db), study.latency.device)
    tvm = [r.trials for r in rows if is_kernel_op(r.op)]
    return max(tvm) if tvm else study.latency.trials


def study_kernels(study: Study):
    """The study's compiled kernels at the tuning its table was profiled with, each shape on the variant the table
    found fastest (a :class:`kernels.runtime.KernelSet`), so a model run on them is the model the predictor priced."""
    from latency_model.profile import table_kernels

    return table_kernels(study.latency, profiled_trials(study))


def measure_latency(study: Study, model) -> float:
    """Forward latency (ms, median) of a trained model run on the compiled kernels, at the study's batch size, in
    the study's runtime (``latency.runtime``)."""
    from kernels.runtime import to_kernels
    from latency_model.ops import ModelDims
    from latency_model.profile import torch_device
    from latency_model.timing import time_model

    settings = study.latency
    kernels = study_kernels(study)
    fast = to_kernels(model, kernels)
    return time_model(fast, settings.batch_sizes[0], ModelDims.of(study.model).img, repeats=settings.repeats,
                      compiled=settings.compiled, device=torch_device(kernels)).median_ms
