"""The study's latency: a trained model measured as the study's predictor priced it (on the study's compiled kernels,
at the tuning its latency table was profiled with, in the study's runtime), and where each choice of its space pays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernels.runtime import to_kernels
from latency_model import db
from latency_model.decomposition import ModelDims
from latency_model.keys import is_kernel_op
from latency_model.pays import where_it_pays as price
from latency_model.predictor import Predictor, PredictorError
from latency_model.profile import table_kernels, torch_device
from latency_model.timing import time_model

from .study import Study

if TYPE_CHECKING:
    from latency_model.pays import WhereItPays
    from latency_model.settings import LatencySettings


def profiled_trials(settings: "LatencySettings") -> int:
    """The tuning trials the kernels of a latency table (``settings.db``, ``settings.device``) were profiled with,
    so a measurement runs the kernels the predictor was fitted on (and a demo profiled untuned does not start
    tuning here)."""
    rows = db.latest(db.connect(settings.db), settings.device)
    tvm = [r.trials for r in rows if is_kernel_op(r.op)]
    return max(tvm) if tvm else settings.trials


def study_kernels(study: Study):
    """The study's compiled kernels at the tuning its table was profiled with, each shape on the variant the table
    found fastest (a :class:`kernels.runtime.KernelSet`), so a model run on them is the model the predictor priced."""

    return table_kernels(study.latency, profiled_trials(study.latency))


def measure_latency(study: Study, model) -> float:
    """Forward latency (ms, median) of a trained model run on the compiled kernels, at the study's batch size, in
    the study's runtime (``latency.runtime``)."""

    settings = study.latency
    kernels = study_kernels(study)
    fast = to_kernels(model, kernels)
    return time_model(fast, settings.batch_sizes[0], ModelDims.of(study.model).img, repeats=settings.repeats,
                      compiled=settings.compiled, device=torch_device(kernels)).median_ms


def where_it_pays(study: Study, settings: "LatencySettings | None" = None,
                  from_table: bool = False) -> "WhereItPays | None":
    """Each choice of the study's space priced against dense, block by block
    (:func:`latency_model.pays.where_it_pays`), at the study's first batch size: by its predictor file, or with
    ``from_table`` by a predictor fitted here on the measurement table as it stands (unchecked, not written: what a
    profile just measured). None when nothing can be priced yet."""
    settings = settings or study.latency
    try:
        if from_table:
            engine = db.connect(settings.db)
            rows = db.latest(engine, settings.device)
            if not rows:
                return None
            predictor, _ = Predictor.fit(rows, settings.device, models=db.model_rows(engine, settings.device))
        else:
            predictor = Predictor.load(settings.predictor, device=settings.device)
    except PredictorError:
        return None
    return price(study.space, predictor, settings.batch_sizes[0])


__all__ = ["measure_latency", "profiled_trials", "study_kernels", "where_it_pays"]
