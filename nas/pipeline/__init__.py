"""The steps of a search, as functions: what the ``nas`` commands call, and what a script or a notebook can call.

Each step takes a :class:`~nas.study.Study` and typed options, returns a result value, prints nothing and is
idempotent: profiling what the table holds, fitting a predictor that is up to date, pretraining a cached teacher or
searching a study that has its trials is a quick no-op. Progress is reported through optional callbacks, which the
CLI turns into progress bars. Errors are :class:`search_spaces.errors.ShiftAddError` with a ``where`` to act on.

    profile -> fit_latency -> pretrain -> [supernet] -> search -> refine -> report -> export -> finetune

The steps live by kind: :mod:`.latency_steps` (profile, fit_latency, latency), :mod:`.training_steps` (pretrain,
supernet, finetune), :mod:`.search_steps` (search, refine), :mod:`.output_steps` (report, export), :mod:`.runner`
(run, preflight) and :mod:`.base` (what they share); import them from here.

:func:`run` runs them all in order, each skipped when done (what ``nas run`` does), telling a :class:`RunEvents`.
:func:`latency` prices (and measures) one architecture, as ``nas latency`` does.

Example::

    from nas import pipeline
    from nas.study import Study

    study = Study.load("studies/quickstart.yaml")
    profiled = pipeline.profile(study, pipeline.ProfileOptions(trials=0))
    if pipeline.needs_fit(study, profiled):
        pipeline.fit_latency(study)
    pipeline.pretrain(study)
    summary = pipeline.search(study, "optuna", pipeline.SearchOptions(n_trials=4))
    # or all of it at once:
    result = pipeline.run(study, pipeline.RunOptions(search=pipeline.SearchOptions(n_trials=4)))
    print(result.best, result.report.front)
"""

from ..search.driver import Progress, SearchEvents, SearchOptions, SearchSummary
from ..study_latency import where_it_pays
from .base import Validation, in_study, load_data, report_folder, training_placement, validate
from .latency_steps import (
                            MEASURE_ROUNDS,
                            FitOptions,
                            FitResult,
                            LatencyOptions,
                            LatencyReport,
                            ProfileOptions,
                            fit_latency,
                            latency,
                            needs_fit,
                            profile,
)
from .output_steps import export, report
from .runner import RUN_STEPS, RunEvents, RunOptions, RunResult, RunStep, preflight, run
from .search_steps import REFINE_BACKENDS, RefineOptions, RefineResult, refine, search, stored_refinement
from .training_steps import FinetuneJob, finetune, needs_pretrain, needs_supernet, pretrain, supernet

__all__ = ["FinetuneJob", "FitOptions", "FitResult", "LatencyOptions", "LatencyReport", "MEASURE_ROUNDS",
           "ProfileOptions", "Progress", "REFINE_BACKENDS", "RUN_STEPS", "RefineOptions", "RefineResult", "RunEvents",
           "RunOptions", "RunResult", "RunStep", "SearchEvents", "SearchOptions", "SearchSummary", "Validation",
           "export", "finetune", "fit_latency", "in_study", "latency", "load_data", "needs_fit", "needs_pretrain",
           "needs_supernet", "preflight", "pretrain", "profile", "refine", "report", "report_folder", "run", "search",
           "stored_refinement", "supernet", "training_placement", "validate", "where_it_pays"]
