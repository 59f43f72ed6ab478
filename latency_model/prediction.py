"""What a latency predictor answers, and how well: a :class:`Prediction` (the total and where it goes), the
:class:`Accuracy` of predictions against measurements, and :class:`PredictorError`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search_spaces.errors import StateError

LOO = "models (leave-one-out)"


class PredictorError(StateError):
    """A predictor file is missing, malformed, for another device, or cannot price an op: refit it
    (``nas profile`` + ``nas fit-latency``). ``where`` is the file, or the study key that names it."""


@dataclass(frozen=True)
class Accuracy:
    """How predictions compare with measurements on shapes the fit did not see."""

    count: int
    rmse_ms: float
    mape: float
    within_5pct: float
    within_10pct: float

    @classmethod
    def of(cls, predicted: Iterable[float], measured: Iterable[float]) -> "Accuracy":
        p, m = np.asarray(list(predicted)), np.asarray(list(measured))
        if len(m) == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        rel = np.abs(p - m) / m
        return cls(len(m), float(np.sqrt(np.mean((p - m) ** 2))), float(np.mean(rel)),
                   float(np.mean(rel <= 0.05)), float(np.mean(rel <= 0.10)))

    def to_dict(self) -> dict[str, float]:
        return self.__dict__.copy()


@dataclass
class Prediction:
    """A predicted latency: the total and where it goes."""

    total_ms: float
    fixed_ms: float
    blocks: list[dict[str, float]]  # per block: part -> ms
    moe_tokens: dict[int, list[float]] = field(default_factory=dict)  # block -> tokens per expert per pass, padded
    composition_ms: float = 0.0  # what running the ops back to back adds (calibrated on whole models)

    def to_dict(self) -> dict[str, Any]:
        return {"total_ms": self.total_ms, "fixed_ms": self.fixed_ms, "composition_ms": self.composition_ms,
                "blocks": self.blocks, "moe_tokens": {str(k): v for k, v in self.moe_tokens.items()}}


__all__ = ["LOO", "Accuracy", "Prediction", "PredictorError"]
