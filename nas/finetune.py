"""``nas finetune``: one chosen architecture fine-tuned from the teacher (or from the weights its supernet-mode trial
inherited) for full epochs, scored on the test split, saved with its config, and timed on the study's kernels.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces import ArchConfig
from search_spaces.errors import ConfigError

from . import attributes as attr
from .disk import ensure_writable
from .search.provenance import write_config
from .study import Study
from .study_latency import measure_latency
from .training.checkpoints import save_weights
from .training.evaluator import Evaluator


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


__all__ = ["FinetuneResult", "finetune"]
