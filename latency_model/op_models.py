"""The fitted model of one op (and variant) between profiled shapes: a power law, ``log(ms)`` linear in the log of each
dimension (the shape of a roofline within one regime), fitted by ridge least squares."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .prediction import PredictorError

RIDGE = 1e-3


@dataclass
class PowerLaw:
    """``log(ms) = coef · [1, log d_1, ..., log d_n]`` over the named dims. A dim a shape does not name is 1 (a
    kernel's batch dim ``B`` is named only above 1, :func:`latency_model.keys.kernel_shape`)."""

    dims: list[str]
    coef: list[float]

    def predict(self, shape: dict[str, int]) -> float:
        x = [1.0] + [math.log(max(1, shape.get(d, 1))) for d in self.dims]
        return math.exp(float(np.dot(self.coef, x)))

    @classmethod
    def fit(cls, shapes: list[dict[str, int]], ms: list[float]) -> "PowerLaw":
        # Dims that never vary carry no information and would make the system singular; ridge handles the rest.
        named = {d for s in shapes for d in s}
        dims = sorted(d for d in named if len({s.get(d, 1) for s in shapes}) > 1)
        x = np.array([[1.0] + [math.log(max(1, s.get(d, 1))) for d in dims] for s in shapes])
        y = np.log(np.asarray(ms))
        penalty = RIDGE * np.eye(x.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        coef = np.linalg.solve(x.T @ x + penalty, x.T @ y)
        return cls(dims, [float(c) for c in coef])

    def to_dict(self) -> dict[str, Any]:
        return {"form": "power_law", "dims": self.dims, "coef": self.coef}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PowerLaw":
        if data.get("form") != "power_law":
            raise PredictorError("latency.predictor", f"unknown model form {data.get('form')!r}")
        return cls(list(data["dims"]), [float(c) for c in data["coef"]])


__all__ = ["RIDGE", "PowerLaw"]
