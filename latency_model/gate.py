"""The fit gate: a predictor is written only when its table is quiet and its whole models are predicted within
``latency.max_model_error`` out of sample; :func:`check` refuses it otherwise, saying why and what to run."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from search_spaces import ArchConfig

from .calibration import MIN_CALIBRATION_MODELS, ModelCheck, family_key
from .db import ModelRow, Row
from .prediction import Accuracy, PredictorError


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


__all__ = ["PredictorRefused", "check"]
