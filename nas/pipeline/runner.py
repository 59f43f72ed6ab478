"""All the steps in order, each skipped when done (what ``nas run`` does), told to a :class:`RunEvents`; and the
preflight that refuses a run bound to fail, before its hours of work."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..disk import ensure_database_writable, ensure_writable
from ..search.backends import get_driver
from ..search.driver import SearchEvents, SearchOptions, SearchSummary
from ..study import Study
from ..training.memory import check_memory
from .base import report_folder, training_placement
from .latency_steps import FitOptions, FitResult, ProfileOptions, fit_latency, needs_fit, profile
from .output_steps import export, report
from .search_steps import RefineOptions, RefineResult, refine
from .training_steps import needs_pretrain, needs_supernet, pretrain, supernet

if TYPE_CHECKING:
    from latency_model.profile import Summary as ProfileSummary

    from ..search.refine import JobCounts
    from ..search.report import Report
    from ..training.supernet_trainer import SupernetResult
    from ..training.teacher import PretrainResult


# ---- run ------------------------------------------------------------------------------------------------------------
def preflight(study: Study, out: Path) -> None:
    """Every place ``nas run``'s steps write to, checked before the first: not a full disk found at step 4."""
    training_placement(study)  # a device this machine does not have: said before step 1
    settings = study.latency
    settings.check_runtime()
    ensure_database_writable(settings.db, "latency.db")
    ensure_writable(Path(settings.predictor).parent, "latency.predictor", need_mb=1)
    if study.checkpoint is None:  # pretrain writes the teacher next to the study
        ensure_writable(study.teacher_path.parent, "model.checkpoint")
    if study.evaluation.supernet:  # and the supernet, which must fit in memory
        ensure_writable(study.supernet_path.parent, "evaluation.mode")
        check_memory(study, training_placement(study))
    ensure_database_writable(study.storage, "storage")
    ensure_writable(out, "--out")


# ---- run: every step, in order --------------------------------------------------------------------------------------
RUN_STEPS = ("profile", "fit-latency", "pretrain", "supernet", "search", "refine", "report", "export")


@dataclass(frozen=True)
class RunOptions:
    """What :func:`run` takes besides the study: the search backend and its options, the profile's tuning trials per
    kernel (None: the study's ``latency.trials``), the folder of the report and the exported best trial (None:
    :func:`report_folder`) and whether to refine the front (the study's ``refine:`` section, on the search's
    backend and workers; ``refine.top: 0`` in the study skips it too)."""

    backend: str = "optuna"
    search: SearchOptions = field(default_factory=SearchOptions)
    kernel_trials: int | None = None
    out: Path | None = None
    refine: bool = True

    def refine_options(self) -> RefineOptions:
        """The refine's options: the search's backend, workers, cluster and resources per job."""
        s = self.search
        return RefineOptions(workers=s.workers, backend=self.backend, ray_address=s.ray_address,
                             cpus_per_job=s.cpus_per_trial, gpus_per_job=s.gpus_per_trial)


@dataclass(frozen=True)
class RunStep:
    """A step of :func:`run` as it starts: its number of :attr:`total` (pretrain and supernet share one), its name
    (one of :data:`RUN_STEPS`) and whether it does work (False: up to date, ``cached`` names the file it uses or
    says why it is skipped)."""

    number: int
    name: str
    runs: bool
    cached: str = ""
    total: int = 7


class RunEvents:
    """What :func:`run` tells as it goes; every method is a no-op here (``nas run`` subclasses it to draw progress
    bars and print each result). :meth:`step` returns the context a step's work runs in."""

    def step(self, step: RunStep) -> AbstractContextManager[Any]:
        return nullcontext()

    def result(self, step: RunStep, result: Any) -> None:
        """A step's result value (what its own function returns)."""

    def waiting(self, step: str) -> None:
        """Another process holds what this step writes (the table, the teacher, the supernet): waiting for it."""

    def profile_started(self, job: Any, index: int, total: int) -> None: ...

    def profile_done(self, job: Any, seconds: float) -> None: ...

    def profile_noisy(self, job: Any, timing: Any, attempt: int) -> None: ...

    def pretrain_epoch(self, epoch: int, loss: float, accuracy: float) -> None: ...

    def supernet_step(self, step: int, steps: int, loss: float) -> None: ...

    def refine_progress(self, counts: "JobCounts") -> None:
        """The refine's jobs by state, as they end."""

    def refine_measure(self, label: str) -> None:
        """A refined architecture is being timed on this device."""

    def search_events(self) -> SearchEvents:
        return SearchEvents()

    def test_split(self, trial_number: int) -> None:
        """A supernet-mode trial of the front has its test split evaluated (the report needs it)."""


@dataclass
class RunResult:
    """What :func:`run` did: each step's result (None where it did no work or the run stopped before it), the
    report, the exported best trial's file, the seconds it took, and why it stopped early (None: it did not)."""

    out: Path
    profiled: "ProfileSummary | None" = None
    fitted: "FitResult | None" = None
    pretrained: "PretrainResult | None" = None
    supernet: "SupernetResult | None" = None
    searched: SearchSummary | None = None
    refined: RefineResult | None = None
    report: "Report | None" = None
    best: Path | None = None
    seconds: float = 0.0
    stopped: str | None = None


def run(study: Study, options: RunOptions = RunOptions(), events: RunEvents = RunEvents()) -> RunResult:
    """Every step of a search, each skipped when done: profile (what the table lacks) -> fit-latency (when the table
    changed) -> pretrain (no teacher yet) [-> supernet, in supernet mode] -> search -> refine (the jobs not yet
    trained) -> report -> export the best trial (of the refined front when refined). Every place a step writes to
    is checked before the first (:func:`preflight`). The run stops before the search, with
    :attr:`RunResult.stopped` saying why, when the profile left noisy timings or the predictor failed its check: a
    search priced by either optimises a number no machine produces."""

    driver = get_driver(options.backend)
    driver.check(study, options.search)  # a flag the backend refuses: said before step 1
    started = time.perf_counter()
    done = RunResult(out=options.out or report_folder(study))
    preflight(study, done.out)

    def finish(stopped: str | None = None) -> RunResult:
        done.seconds, done.stopped = time.perf_counter() - started, stopped
        return done

    # profiling what the table already holds is a quick no-op, and it catches a space with shapes the table lacks
    # (another study's predictor file in the same folder, shapes that failed last time)
    step = RunStep(1, "profile", True)
    with events.step(step):
        done.profiled = profile(study, ProfileOptions(trials=options.kernel_trials), on_start=events.profile_started,
                                on_done=events.profile_done, on_noisy=events.profile_noisy,
                                on_wait=lambda: events.waiting("profile"))
    events.result(step, done.profiled)
    if done.profiled.noisy:
        return finish("a search priced by noisy timings optimises a number no machine produces")

    step = RunStep(2, "fit-latency", needs_fit(study, done.profiled), cached=study.latency.predictor)
    with events.step(step):
        if step.runs:
            done.fitted = fit_latency(study, FitOptions())
    if done.fitted is not None:
        events.result(step, done.fitted)
        if done.fitted.refused is not None:
            return finish("the predictor did not pass its check")

    step = RunStep(3, "pretrain", needs_pretrain(study), cached=str(study.teacher_path))
    with events.step(step):
        if step.runs:
            done.pretrained = pretrain(study, on_epoch=events.pretrain_epoch,
                                       on_wait=lambda: events.waiting("pretrain"))
    if done.pretrained is not None:
        events.result(step, done.pretrained)

    if study.evaluation.supernet:
        step = RunStep(3, "supernet", needs_supernet(study), cached=str(study.supernet_path))
        with events.step(step):
            if step.runs:
                done.supernet = supernet(study, on_step=events.supernet_step,
                                         on_wait=lambda: events.waiting("supernet"))
        if done.supernet is not None:
            events.result(step, done.supernet)

    step = RunStep(4, "search", True)
    with events.step(step):
        done.searched = driver.run(study, options.search, events.search_events())
    events.result(step, done.searched)

    step = RunStep(5, "refine", options.refine and study.refine.top > 0,
                   cached="skipped: " + ("refine.top is 0" if options.refine else "--no-refine"))
    with events.step(step):
        if step.runs:
            done.refined = refine(study, options.refine_options(), on_progress=events.refine_progress,
                                  on_measure=events.refine_measure)
    if done.refined is not None:
        events.result(step, done.refined)

    step = RunStep(6, "report", True)
    with events.step(step):
        done.report = report(study, done.out / "report", on_test=events.test_split)
    events.result(step, done.report)

    step = RunStep(7, "export", True)
    with events.step(step):
        done.best = export(study, "best", done.out / "best")[0]
    events.result(step, done.best)
    return finish()
