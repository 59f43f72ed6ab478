"""The latency predictor: per-op models fitted on the measurement table, composed over an ArchConfig's ops.

For each op a model is asked in turn:

1. the measurement itself, when this op was profiled at this exact shape (a lookup);
2. linear interpolation in the token count ``M`` between profiled shapes that differ only in ``M`` (MoE experts);
3. a fitted per-(op, variant) model of ``log(ms)`` linear in the log of each dimension (a power law, the shape of a
   roofline within one regime), fitted by ridge least squares.

Ops timed alone miss what running them inside a model costs, and the cost differs by choice. Where the profile timed
each block's attention and MLP inside its whole models (eager), each part is priced at its choice's *in-situ factor*
(median of in situ over alone, per family and batch size, keyed by :func:`in_situ_keys`: an attention variant, its
kind, any attention; an MLP kind, any MLP). The op times of a config are then composed with a calibration fitted on
whole-model timings (per family and batch size, ``total = a · Σ parts + b · kernel blocks + c`` with ``a >= 1``,
``b, c >= 0``): a prediction is never below the sum of what it is made of (a fit that would need it to be says the
timings are wrong, and :func:`check` refuses it). The factors and the calibration are checked out of
sample: each whole model is predicted by the factors and calibration fitted without it (leave-one-out), ``"models
(leave-one-out)"`` in the accuracies.

:meth:`Predictor.fit` holds out a fraction of the shapes of every (op, variant) and reports how the fitted models
(3, without lookup) do on them: RMSE, MAPE, and the fraction within ±5 % and ±10 % (nn-Meter's metric).
The predictor is saved as plain JSON with the device and versions it was fitted for; no pickle.

The parts live beside it: the op models (:mod:`.op_models`), the in-situ factors and the composition
(:mod:`.calibration`), the fit gate (:mod:`.gate`), what a prediction holds (:mod:`.prediction`).
"""

from __future__ import annotations

import bisect
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import ArchConfig, BlockConfig, SearchSpace
from search_spaces.reparam import router_counts

from .calibration import (
    PART_NAMES,
    ModelCheck,
    calibration_key,
    compose,
    family_key,
    fit_calibration,
    in_situ_factor,
    in_situ_keys,
    kernel_blocks,
    part_of,
)
from .db import ModelRow, Row
from .decomposition import ModelDims, MoELoad, config_ops, latency_split, mlp_shape, space_ops
from .keys import OpName, fitted_model_key, lookup_key, parse_lookup_key
from .op_models import PowerLaw
from .prediction import LOO, Accuracy, Prediction, PredictorError

FORMAT = "shiftadd-latency-predictor/1"


def router_loads(model) -> dict[int, MoELoad]:
    """Per MoE block of a model that has run a forward pass: exactly what its router sent each expert in that pass
    (:meth:`MoELoad.of_pass`), to price that pass's batch size as it ran, e.g. next to its timing."""
    return {i: MoELoad.of_pass(counts.cpu().numpy()) for i, counts in router_counts(model).items()}


class Predictor:
    """Predicts the latency of an ArchConfig on the device it was fitted for.

    Example:
        >>> predictor = Predictor.load("studies/latency_cpu.json")        # doctest: +SKIP
        >>> predictor.predict(config, batch=1).total_ms                    # doctest: +SKIP
    """

    def __init__(self, device: str, lookup: dict[str, float], models: dict[str, PowerLaw],
                 meta: dict[str, Any] | None = None, calibration: dict[tuple[str, int], list[float]] | None = None,
                 in_situ: dict[tuple[str, int], dict[str, float]] | None = None) -> None:
        self.device = device
        self.lookup = lookup
        self.models = models
        self.meta = meta or {}
        # batch -> (a, b, c): total = a · (sum of op times) + b · (blocks with a kernel-run part) + c
        self.calibration = calibration or {}
        # (family, batch) -> in-situ key -> factor: a block part's price as the model runs it over its price alone
        self.in_situ = in_situ or {}
        self.model_checks: list[ModelCheck] = []  # set by fit: the leave-one-out check of each whole model
        # For interpolation in M: (op, variant, other dims, dtype) -> sorted [(M, ms)]
        self._by_m: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for key, ms in lookup.items():
            op, variant, shape, dtype = parse_lookup_key(key)
            if "M" in shape:
                m = shape.pop("M")
                self._by_m[lookup_key(op, variant, shape, dtype)].append((m, ms))
        for points in self._by_m.values():
            points.sort()

    # ---- fitting ------------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, rows: list[Row], device: str, holdout: float = 0.2, seed: int = 0,
            meta: dict[str, Any] | None = None, models: list[ModelRow] | None = None
            ) -> tuple["Predictor", dict[str, Accuracy]]:
        """Fit per-(op, variant) models on the rows, then the composition calibration on whole-model timings
        (``models``); return the predictor and accuracies: per group, the held-out accuracy of its model fitted
        without ``holdout`` of its shapes (``"all"``: every group, ``"tvm"``/``"module"``: by op family), and
        ``"calibration"``: the calibrated totals against the whole-model timings they were fitted on, and
        ``"models (leave-one-out)"``: each whole model predicted by the calibration fitted without it. The
        leave-one-out checks themselves are in ``predictor.model_checks``."""
        if not rows:
            raise PredictorError("latency.device", f"no measurements for device {device!r}: run `nas profile` first")
        groups: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            groups[fitted_model_key(row.op, row.variant, row.dtype, row.shape)].append(row)
        rng = np.random.default_rng(seed)
        fitted, accuracy = {}, {}
        pooled: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
        for key, group in sorted(groups.items()):
            shapes, ms = [r.shape for r in group], [r.median_ms for r in group]
            fitted[key] = PowerLaw.fit(shapes, ms)
            n_test = int(round(holdout * len(group)))
            if n_test == 0 or len(group) - n_test < 2:
                continue  # too few shapes to hold any out
            order = rng.permutation(len(group))
            test, train = order[:n_test], order[n_test:]
            model = PowerLaw.fit([shapes[i] for i in train], [ms[i] for i in train])
            predicted = [model.predict(shapes[i]) for i in test]
            measured = [ms[i] for i in test]
            accuracy[key] = Accuracy.of(predicted, measured)
            for name in ("all", group[0].op.split(".")[0]):
                pooled[name][0].extend(predicted)
                pooled[name][1].extend(measured)
        for name, (predicted, measured) in pooled.items():
            accuracy[name] = Accuracy.of(predicted, measured)
        lookup = {lookup_key(r.op, r.variant, r.shape, r.dtype): r.median_ms for r in rows}
        predictor = cls(device, lookup, fitted, {})
        if models:
            (predictor.calibration, in_situ, accuracy["calibration"],
             predictor.model_checks) = fit_calibration(predictor, models)
            predictor.in_situ = in_situ
            if predictor.model_checks:
                accuracy[LOO] = Accuracy.of([c.predicted_ms for c in predictor.model_checks],
                                            [c.measured_ms for c in predictor.model_checks])
                families = sorted({c.family for c in predictor.model_checks})
                for family in families if len(families) > 1 else ():
                    own = [c for c in predictor.model_checks if c.family == family]
                    accuracy[f"{LOO}: {family}"] = Accuracy.of([c.predicted_ms for c in own],
                                                               [c.measured_ms for c in own])
        predictor.meta = {"fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": len(rows),
                          "model_rows": len(models or []), "holdout": holdout,
                          "accuracy": {k: v.to_dict() for k, v in accuracy.items()}, **(meta or {})}
        return predictor, accuracy

    # ---- prediction ---------------------------------------------------------------------------------------------
    def covers(self, space: SearchSpace, batches: Sequence[int]) -> bool:
        """Whether every module op any architecture of ``space`` runs, at each batch size, can be priced."""
        try:
            for op in space_ops(space, batches):
                self.op_ms(op.op, op.variant, op.dims, op.dtype)
        except PredictorError:
            return False
        return True

    def op_ms(self, op: str, variant: str, shape: dict[str, int], dtype: str = "float32") -> float:
        """The latency of one op at one shape (lookup, then interpolation in M, then the fitted model)."""
        exact = self.lookup.get(lookup_key(op, variant, shape, dtype))
        if exact is not None:
            return exact
        if "M" in shape:
            rest = {k: v for k, v in shape.items() if k != "M"}
            points = self._by_m.get(lookup_key(op, variant, rest, dtype))
            if points and points[0][0] <= shape["M"] <= points[-1][0]:
                ms_ = [m for m, _ in points]
                i = bisect.bisect_left(ms_, shape["M"])
                (m0, t0), (m1, t1) = points[i - 1], points[i]
                return t0 + (t1 - t0) * (shape["M"] - m0) / (m1 - m0)
        model = self.models.get(fitted_model_key(op, variant, dtype, shape))
        if model is None:
            raise PredictorError(
                "latency.predictor", f"the predictor for {self.device!r} has no measurements of {op} ({variant or 'any variant'}): "
                "profile this study's space with `nas profile` and refit"
            )
        return model.predict(shape)

    def part_factor(self, family: str, batch: int, block: BlockConfig, part: str) -> float:
        """What a ``part`` (``attention``, ``mlp``) of ``block`` costs as a model of ``family`` runs it, over its
        price alone (1 where the profile timed no parts in situ)."""
        return in_situ_factor(self.in_situ.get((family, batch), {}), in_situ_keys(block, part))

    def expert_latencies(self, config: ArchConfig, block: int, batch: int = 1) -> list[float]:
        """Per-expert latency of block ``block``'s MoE, each expert priced at the full token count: the ``lat``
        vector of the latency-aware balance loss."""
        choice = config.blocks[block]
        if choice.moe is None:
            raise PredictorError(f"blocks[{block}].mlp", f"{config.id} has no MoE MLP (its mlp is {choice.mlp!r})")

        shape = dict(mlp_shape(ModelDims.of(config.model).blocks[block], batch))
        return [self.op_ms(OpName.MLP, kind, shape) for kind in choice.moe.experts]

    def predict(self, config: ArchConfig, batch: int = 1,
                moe_loads: Mapping[int, MoELoad | Sequence[float]] | None = None) -> Prediction:
        """Total latency in ms and its breakdown per block and part.

        An MoE block is priced at ``moe_loads[block]``: how a trained router spread the images it saw
        (:class:`~latency_model.decomposition.MoELoad`, see :func:`router_loads`), or the share of token assignments each expert
        gets from every image. Blocks without one are priced at the split the latency-aware loss drives toward
        (shares ∝ 1/lat, :func:`latency_model.decomposition.latency_split`).
        """
        moe_loads = moe_loads or {}

        def split(i: int, block: BlockConfig) -> MoELoad | Sequence[float]:
            if i in moe_loads:
                return moe_loads[i]
            return latency_split(self.expert_latencies(config, i, batch))

        blocks: list[dict[str, float]] = [defaultdict(float) for _ in config.blocks]
        fixed = 0.0
        moe_tokens: dict[int, list[float]] = {i: [0.0] * len(b.moe.experts) for i, b in enumerate(config.blocks)
                                              if b.moe is not None}
        for op in config_ops(config, batch, split):
            ms = op.count * self.op_ms(op.op, op.variant, op.dims, op.dtype)
            if op.block is None:
                fixed += ms
                continue
            part = PART_NAMES.get(op.op) or (f"expert:{op.variant}" if config.blocks[op.block].moe is not None
                                               else "mlp")
            blocks[op.block][part] += ms
            if op.expert is not None:
                moe_tokens[op.block][op.expert] += op.count * op.dims["M"]
        family = family_key(config)
        per_block = [{name: ms * self.part_factor(family, batch, config.blocks[i], part)
                      if (part := part_of(name)) else ms for name, ms in b.items()} for i, b in enumerate(blocks)]
        parts = fixed + sum(sum(b.values()) for b in per_block)
        composition = 0.0
        coef = self.calibration.get((family, batch))
        if coef is not None:
            composition = compose(coef, parts, kernel_blocks(config)) - parts
        return Prediction(parts + composition, fixed, per_block, moe_tokens, composition)

    # ---- files --------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "device": self.device, "meta": self.meta, "lookup": self.lookup,
                "models": {k: m.to_dict() for k, m in self.models.items()},
                "calibration": {f"{family}/{b}": coef for (family, b), coef in self.calibration.items()},
                "in_situ": {f"{family}/{b}": factors for (family, b), factors in self.in_situ.items()}}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, allow_other_device: bool = False) -> "Predictor":
        """Read a predictor file. With ``device``, refuse a file fitted for another device unless
        ``allow_other_device``: its latencies would describe the wrong machine."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise PredictorError(str(path), f"cannot read predictor file: {e.strerror}") from None
        except ValueError as e:
            raise PredictorError(str(path), f"not a predictor file (invalid JSON: {e})") from None
        return cls.from_dict(data, path, device, allow_other_device)

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "predictor", device: str | None = None,
                  allow_other_device: bool = False) -> "Predictor":
        """A predictor from :meth:`to_dict` output (``source`` names it in errors)."""
        path = source
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PredictorError(str(path), f"not a predictor file (format is {data.get('format') if isinstance(data, dict) else None!r}, expected {FORMAT!r})")
        if device is not None and data["device"] != device and not allow_other_device:
            raise PredictorError(
                str(path), f"fitted for device {data['device']!r}, not {device!r}; refit on this device "
                "(nas profile + nas fit-latency) or allow another device explicitly"
            )
        try:
            models = {k: PowerLaw.from_dict(v) for k, v in data["models"].items()}
            lookup = {str(k): float(v) for k, v in data["lookup"].items()}
            calibration = {calibration_key(k): [float(x) for x in coef]
                           for k, coef in data.get("calibration", {}).items()}
            in_situ = {calibration_key(k): {str(key): float(f) for key, f in factors.items()}
                       for k, factors in data.get("in_situ", {}).items()}
        except (KeyError, TypeError, ValueError) as e:
            raise PredictorError(str(path), f"malformed predictor file ({type(e).__name__}: {e})") from None
        bad = [k for k, v in lookup.items() if not (math.isfinite(v) and v > 0)]
        if bad:
            raise PredictorError(str(path), f"holds a latency that is not a positive number ({bad[0]}: {lookup[bad[0]]})"
                                 ": refit with `nas fit-latency`")
        for (_, batch), coef in calibration.items():
            if len(coef) != 3 or not all(math.isfinite(x) for x in coef) or coef[0] < 1 - 1e-9 or min(coef[1:]) < 0:
                raise PredictorError(
                    str(path), f"its composition at batch {batch} ({coef}) can price a model below the sum of its parts, "
                    "down to zero or less: fitted by an earlier version on noisy timings, or edited; refit with "
                    "`nas fit-latency` (which now constrains it and checks it out of sample)")
        bad = [(k, key, f) for k, factors in in_situ.items() for key, f in factors.items()
               if not (math.isfinite(f) and f > 0)]
        if bad:
            (family, batch), key, f = bad[0]
            raise PredictorError(str(path), f"its in-situ factor of {key} ({family}, batch {batch}) is {f}, not a "
                                 "positive number: refit with `nas fit-latency`")
        return cls(data["device"], lookup, models, data.get("meta", {}), calibration, in_situ)
