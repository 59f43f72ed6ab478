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
"""

from __future__ import annotations

import bisect
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import ArchConfig, BlockConfig, SearchSpace
from search_spaces.errors import StateError
from search_spaces.families import family_for
from search_spaces.registry import on_kernels

from .db import ModelRow, Row
from .keys import OpName, fitted_model_key, lookup_key, parse_lookup_key, part_name
from .ops import MoELoad, block_attention_variant, config_ops, latency_split, space_ops

FORMAT = "shiftadd-latency-predictor/1"
RIDGE = 1e-3
LOO = "models (leave-one-out)"


class PredictorError(StateError):
    """A predictor file is missing, malformed, for another device, or cannot price an op: refit it
    (``nas profile`` + ``nas fit-latency``). ``where`` is the file, or the study key that names it."""


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


def kernel_blocks(config: ArchConfig) -> int:
    """Blocks with at least one part on the TVM kernels (:func:`search_spaces.registry.on_kernels`)."""
    return sum(on_kernels(b) for b in config.blocks)


def _composition(points: list[tuple[float, int, float]]) -> list[float]:
    """``[a, b, c]`` of ``measured ≈ a · parts + b · kernel blocks + c`` with ``a >= 1``, ``b >= 0``, ``c >= 0``:
    non-negative least squares on what the whole model costs beyond its parts, in relative error (a model of 0.5 ms
    counts as much as one of 50 ms), made robust by Huber weights (iteratively reweighted): one whole-model timing
    that a hiccup of the machine made 100× slow is one bad check, not a constant that prices every model 20× high."""
    from scipy.optimize import nnls

    x = np.array([[p, k, 1.0] for p, k, _ in points])
    measured = np.array([m for _, _, m in points])
    extra = measured - x[:, 0]
    weights = 1.0 / measured
    coef = nnls(x * weights[:, None], extra * weights)[0]
    for _ in range(50):
        residual = (x @ coef - extra) / measured
        scale = max(1.4826 * float(np.median(np.abs(residual))), 0.01)  # MAD; at least 1 % of the model
        huber = np.minimum(1.0, 1.345 * scale / np.maximum(np.abs(residual), 1e-12))
        weights = np.sqrt(huber) / measured
        refit = nnls(x * weights[:, None], extra * weights)[0]
        if np.allclose(refit, coef, rtol=1e-6, atol=1e-9):
            break
        coef = refit
    return [1.0 + float(coef[0]), float(coef[1]), float(coef[2])]


def _compose(coef: Sequence[float], parts: float, kernel_blocks: int) -> float:
    a, b, c = coef
    return a * parts + b * kernel_blocks + c


@dataclass(frozen=True)
class ModelCheck:
    """One whole model: measured, and predicted by the calibration fitted without it."""

    config_id: str
    batch: int
    measured_ms: float
    predicted_ms: float
    family: str = "vit"

    @property
    def error(self) -> float:
        return abs(self.predicted_ms - self.measured_ms) / self.measured_ms


MIN_CALIBRATION_MODELS = 4  # a three-number fit, checked with one model left out
MIN_IN_SITU = 3  # parts timed in situ a key needs before its own factor is used (else a coarser key's)


def in_situ_keys(block: BlockConfig, part: str) -> tuple[str, ...]:
    """The keys a block's part is priced in situ under, the finest first: an attention by its variant
    (``attention:<attention>/<qkv>/<proj>``), then its kind, then any attention; an MLP by its kind (``mlp:dense``,
    ``mlp:shift``, ``mlp:moe``: router, dispatch and experts together), then any MLP."""
    if part == "attention":
        return (f"attention:{block_attention_variant(block)}", f"attention:{block.attention}", "attention")
    return (f"mlp:{block.mlp}", "mlp")


def in_situ_factor(factors: Mapping[str, float], keys: Sequence[str]) -> float:
    """The factor of the finest key that has one (1 where none has: priced as timed alone)."""
    return next((factors[k] for k in keys if k in factors), 1.0)


def part_of(name: str) -> str | None:
    """Which in-situ part (``attention``, ``mlp``) a block's breakdown entry belongs to; None for the norms and
    residuals, which run between the parts."""
    if name == "attention":
        return "attention"
    return None if name == _PART_NAMES[OpName.BLOCK_FRAME] else "mlp"


@dataclass(frozen=True)
class _Calibrating:
    """One whole-model timing, as the calibration reads it: its ops priced alone, and where its parts were timed in
    situ, what they took there (at one speed of the machine, as its total)."""

    config_id: str
    fixed_ms: float  # the frame and the blocks' norms and residuals
    parts: tuple[tuple[tuple[str, ...], float], ...]  # (in-situ keys, priced alone) per block part
    in_situ_ms: tuple[float, ...] | None  # per part, aligned with parts
    kernel_blocks: int
    measured_ms: float

    def ratios(self) -> Iterable[tuple[tuple[str, ...], float]]:
        for (keys, priced), ms in zip(self.parts, self.in_situ_ms or ()):
            if priced > 0:
                yield keys, ms / priced

    def parts_ms(self, factors: Mapping[str, float]) -> float:
        return self.fixed_ms + sum(priced * in_situ_factor(factors, keys) for keys, priced in self.parts)


def _in_situ_factors(observed: Iterable[_Calibrating]) -> dict[str, float]:
    """Per key, the median of in-situ time over price alone across the parts timed in situ (a key with fewer than
    :data:`MIN_IN_SITU` is left to its coarser keys)."""
    ratios: dict[str, list[float]] = defaultdict(list)
    for one in observed:
        for keys, ratio in one.ratios():
            for key in keys:
                ratios[key].append(ratio)
    return {key: float(np.median(found)) for key, found in sorted(ratios.items()) if len(found) >= MIN_IN_SITU}


def family_key(config: ArchConfig) -> str:
    """The model family a config's composition is calibrated within (``vit``, ``pvt_v2``)."""
    return family_for(config.model).key


def _fit_calibration(predictor: "Predictor", models: list[ModelRow]
                     ) -> tuple[dict[tuple[str, int], list[float]], dict[tuple[str, int], dict[str, float]],
                                Accuracy, list[ModelCheck]]:
    """Per model family and batch size, the in-situ factors of its parts and the composition fitted on its
    whole-model timings; their in-sample accuracy; and each model predicted by the factors and composition fitted
    without it (leave-one-out), where there are at least :data:`MIN_CALIBRATION_MODELS`. Families compose
    differently (a PVTv2 crosses into TVM at four sizes, a ViT at one), so each has its own.

    Ops timed one at a time in a loop miss what running them back to back costs: torch's and TVM's thread pools
    handing the cores to each other, and caches that no longer hold one module's data; and the cost differs by
    choice (an MoE's router and experts pay it more than a dense MLP). Where the profile timed each block's parts
    inside the whole models (eager), each part is priced at its choice's in-situ factor (:func:`in_situ_keys`: the
    median of in situ over alone); the composition then fits what remains. That cost is measured here rather than
    assumed.

    Each model's time is read at one speed of the machine per family and batch (:meth:`ModelRow.at_speed`: scaled
    by its reference, the dense model timed in turn with it, to the median reference), so models timed in several
    launches (a profile resumed, or re-timed with ``--remeasure``) compose as if timed in one."""
    rows_by_batch: dict[tuple[str, int], list[tuple[ArchConfig, ModelRow, Prediction]]] = defaultdict(list)
    for row in models:
        config = ArchConfig.from_json(row.config)
        routing = {block: MoELoad.parse(value) for block, value in row.moe_routing.items()}
        try:
            alone = predictor.predict(config, row.batch, moe_loads=routing)
        except PredictorError:
            # a model of a space whose ops this table does not hold (another study profiled into the same table,
            # under ops keyed otherwise then): it cannot calibrate this fit, and a study of that space is told to
            # profile when it predicts
            continue
        rows_by_batch[(family_key(config), row.batch)].append((config, row, alone))
    calibration, in_situ, predicted, measured, checks = {}, {}, [], [], []
    for (family, batch), group in sorted(rows_by_batch.items()):
        if len(group) < MIN_CALIBRATION_MODELS:
            continue
        references = [row.reference_ms for _, row, _ in group if row.reference_ms]
        speed = float(np.median(references)) if references else None
        observed = [_calibrating(config, row, alone, row.speed_factor(speed)) for config, row, alone in group]
        factors = in_situ[(family, batch)] = _in_situ_factors(observed)
        coef = calibration[(family, batch)] = _composition(
            [(o.parts_ms(factors), o.kernel_blocks, o.measured_ms) for o in observed])
        for i, one in enumerate(observed):
            predicted.append(_compose(coef, one.parts_ms(factors), one.kernel_blocks))
            measured.append(one.measured_ms)
            others = observed[:i] + observed[i + 1:]
            without = _in_situ_factors(others)
            composition = _composition([(o.parts_ms(without), o.kernel_blocks, o.measured_ms) for o in others])
            checks.append(ModelCheck(one.config_id, batch, one.measured_ms,
                                     _compose(composition, one.parts_ms(without), one.kernel_blocks), family))
    return calibration, {k: v for k, v in in_situ.items() if v}, Accuracy.of(predicted, measured), checks


def _calibrating(config: ArchConfig, row: ModelRow, alone: "Prediction", speed: float) -> _Calibrating:
    """A whole-model timing read for the calibration: ``alone`` its ops priced alone, ``speed`` what scales its
    timings to the group's speed of the machine."""
    fixed, parts, in_situ = alone.fixed_ms, [], []
    for i, (block, entries) in enumerate(zip(config.blocks, alone.blocks)):
        sums: dict[str, float] = defaultdict(float)
        for name, ms in entries.items():
            part = part_of(name)
            if part is None:
                fixed += ms
            else:
                sums[part] += ms
        for part, ms in sums.items():
            parts.append((in_situ_keys(block, part), ms))
            if row.parts_ms is not None:
                in_situ.append(row.parts_ms.get(part_name(i, part), math.nan) * speed)
    timed = row.parts_ms is not None and all(math.isfinite(ms) for ms in in_situ)
    return _Calibrating(config.id, fixed, tuple(parts), tuple(in_situ) if timed else None, kernel_blocks(config),
                        row.median_ms * speed)


def _calibration_key(text: str) -> tuple[str, int]:
    """``family/batch`` of a predictor file's calibration; a bare batch (files from before families) is a ViT's."""
    family, _, batch = str(text).rpartition("/")
    return family or "vit", int(batch)


class PredictorRefused(PredictorError):
    """The measurements cannot make a predictor worth searching with (noisy, too few, or failing the
    out-of-sample check); ``where`` is the measurement table, the message says which problem, and the fix."""


def check(rows: list[Row], models: list[ModelRow], checks: list[ModelCheck], max_model_error: float,
          fix: str, allow_noisy: bool = False) -> dict[str, Any]:
    """The gate a fit must pass before its predictor is written; returns what it found (for the file's meta).

    Refuses: a table whose rows are all noisy; rows marked noisy (unless ``allow_noisy``); a batch size with some but
    too few whole-model timings to check; a whole-model error out of sample (leave-one-out MAPE) above
    ``max_model_error``. ``fix`` is the command that re-times what is wrong, for the message.
    """
    noisy = [r for r in rows if r.noisy] + [m for m in models if m.noisy]

    def names(items, limit: int = 4) -> str:
        labels = [f"{r.op}[{r.variant}]" if isinstance(r, Row) else f"model {ArchConfig.from_json(r.config).id}"
                  for r in items]
        return ", ".join(labels[:limit]) + (f" and {len(labels) - limit} more" if len(labels) > limit else "")

    if rows and all(r.noisy for r in rows):
        raise PredictorRefused("latency.db", f"every one of the {len(rows)} measurements is marked noisy (taken while other "
                               f"processes competed for the CPU): on a quiet machine run `{fix}`")
    if noisy and not allow_noisy:
        raise PredictorRefused("latency.db", f"{len(noisy)} timing(s) are marked noisy ({names(noisy)}): on a quiet machine run "
                               f"`{fix}` (or fit anyway with --allow-noisy)")
    counts = defaultdict(int)
    for m in models:
        counts[(family_key(ArchConfig.from_json(m.config)), m.batch)] += 1
    short = {b: n for b, n in counts.items() if n < MIN_CALIBRATION_MODELS}
    if short:
        (family, b), n = next(iter(short.items()))
        raise PredictorRefused("latency.db", f"{n} whole-model timing(s) of the {family} family at batch {b}: at "
                               f"least {MIN_CALIBRATION_MODELS} are "
                               f"needed to check the predictor out of sample (set latency.calibration >= "
                               f"{MIN_CALIBRATION_MODELS} and run `{fix}`)")
    found: dict[str, Any] = {"max_model_error": max_model_error, "models": len(checks), "noisy_allowed": len(noisy)}
    if not checks:
        return {**found, "checked": False}
    loo = Accuracy.of([c.predicted_ms for c in checks], [c.measured_ms for c in checks])
    found.update(checked=True, model_mape=loo.mape, model_within_5pct=loo.within_5pct,
                 model_within_10pct=loo.within_10pct)
    if loo.mape > max_model_error:
        worst = sorted(checks, key=lambda c: -c.error)[:3]
        shown = ", ".join(f"{c.config_id} measured {c.measured_ms:.3g} ms, predicted {c.predicted_ms:.3g}"
                          for c in worst)
        raise PredictorRefused("latency.db", f"whole-model error out of sample is {loo.mape:.0%} (leave-one-out MAPE; at most "
                               f"{max_model_error:.0%} accepted): the timings do not agree with each other, as when "
                               f"they were taken on a busy machine (worst: {shown}); on a quiet machine run "
                               f"`{fix} all`")
    return found


def router_loads(model) -> dict[int, MoELoad]:
    """Per MoE block of a model that has run a forward pass: exactly what its router sent each expert in that pass
    (:meth:`MoELoad.of_pass`), to price that pass's batch size as it ran, e.g. next to its timing."""
    from search_spaces.ops.moe import router_counts

    return {i: MoELoad.of_pass(counts.cpu().numpy()) for i, counts in router_counts(model).items()}


_PART_NAMES = {OpName.BLOCK_FRAME: "norms+residuals", OpName.ATTENTION: "attention", OpName.MOE_ROUTER: "router"}


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
             predictor.model_checks) = _fit_calibration(predictor, models)
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
        from .ops import ModelDims, mlp_shape

        shape = dict(mlp_shape(ModelDims.of(config.model).blocks[block], batch))
        return [self.op_ms(OpName.MLP, kind, shape) for kind in choice.moe.experts]

    def predict(self, config: ArchConfig, batch: int = 1,
                moe_loads: Mapping[int, MoELoad | Sequence[float]] | None = None) -> Prediction:
        """Total latency in ms and its breakdown per block and part.

        An MoE block is priced at ``moe_loads[block]``: how a trained router spread the images it saw
        (:class:`~latency_model.ops.MoELoad`, see :func:`router_loads`), or the share of token assignments each expert
        gets from every image. Blocks without one are priced at the split the latency-aware loss drives toward
        (shares ∝ 1/lat, :func:`latency_model.ops.latency_split`).
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
            part = _PART_NAMES.get(op.op) or (f"expert:{op.variant}" if config.blocks[op.block].moe is not None
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
            composition = _compose(coef, parts, kernel_blocks(config)) - parts
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
            calibration = {_calibration_key(k): [float(x) for x in coef]
                           for k, coef in data.get("calibration", {}).items()}
            in_situ = {_calibration_key(k): {str(key): float(f) for key, f in factors.items()}
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
