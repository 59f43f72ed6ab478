"""From the ops of a config to the model as it runs: each block part priced at its choice's in-situ factor (its time
inside whole models over its time alone), and the composition ``total = a · Σ parts + b · kernel blocks + c`` fitted
on whole-model timings per family and batch size, each checked out of sample (leave-one-out)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels.lazy import lazy_import
from search_spaces import ArchConfig, BlockConfig
from search_spaces.families import family_for

from .db import ModelRow
from .decomposition import MoELoad, block_attention_variant
from .keys import OpName, part_name
from .prediction import Accuracy, Prediction, PredictorError

optimize = lazy_import("scipy.optimize")

# the names of a block's parts in a prediction's breakdown that are not a kernel or an expert
PART_NAMES = {OpName.BLOCK_FRAME: "norms+residuals", OpName.ATTENTION: "attention", OpName.MOE_ROUTER: "router"}


def kernel_blocks(config: ArchConfig) -> int:
    """Blocks with at least one part on the TVM kernels (``BlockConfig.on_kernels``)."""
    return sum(b.on_kernels for b in config.blocks)


def _composition(points: list[tuple[float, int, float]]) -> list[float]:
    """``[a, b, c]`` of ``measured ≈ a · parts + b · kernel blocks + c`` with ``a >= 1``, ``b >= 0``, ``c >= 0``:
    non-negative least squares on what the whole model costs beyond its parts, in relative error (a model of 0.5 ms
    counts as much as one of 50 ms), made robust by Huber weights (iteratively reweighted): one whole-model timing
    that a hiccup of the machine made 100× slow is one bad check, not a constant that prices every model 20× high."""
    x = np.array([[p, k, 1.0] for p, k, _ in points])
    measured = np.array([m for _, _, m in points])
    extra = measured - x[:, 0]
    weights = 1.0 / measured
    coef = optimize.nnls(x * weights[:, None], extra * weights)[0]
    for _ in range(50):
        residual = (x @ coef - extra) / measured
        scale = max(1.4826 * float(np.median(np.abs(residual))), 0.01)  # MAD; at least 1 % of the model
        huber = np.minimum(1.0, 1.345 * scale / np.maximum(np.abs(residual), 1e-12))
        weights = np.sqrt(huber) / measured
        refit = optimize.nnls(x * weights[:, None], extra * weights)[0]
        if np.allclose(refit, coef, rtol=1e-6, atol=1e-9):
            break
        coef = refit
    return [1.0 + float(coef[0]), float(coef[1]), float(coef[2])]


def compose(coef: Sequence[float], parts: float, kernel_blocks: int) -> float:
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
    return None if name == PART_NAMES[OpName.BLOCK_FRAME] else "mlp"


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


def fit_calibration(predictor: Any, models: list[ModelRow]
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
            predicted.append(compose(coef, one.parts_ms(factors), one.kernel_blocks))
            measured.append(one.measured_ms)
            others = observed[:i] + observed[i + 1:]
            without = _in_situ_factors(others)
            composition = _composition([(o.parts_ms(without), o.kernel_blocks, o.measured_ms) for o in others])
            checks.append(ModelCheck(one.config_id, batch, one.measured_ms,
                                     compose(composition, one.parts_ms(without), one.kernel_blocks), family))
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


def calibration_key(text: str) -> tuple[str, int]:
    """``family/batch`` of a predictor file's calibration; a bare batch (files from before families) is a ViT's."""
    family, _, batch = str(text).rpartition("/")
    return family or "vit", int(batch)


__all__ = ["MIN_CALIBRATION_MODELS", "MIN_IN_SITU", "PART_NAMES", "ModelCheck", "calibration_key", "compose",
           "family_key", "fit_calibration", "in_situ_factor", "in_situ_keys", "kernel_blocks", "part_of"]
