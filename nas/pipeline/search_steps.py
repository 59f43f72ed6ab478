"""The search steps: search the study's space (Optuna or Ray), then refine the front's best by fine-tuning them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search_spaces import build_model
from search_spaces.errors import ConfigError, StateError

from .. import attributes as attr
from ..search import refine as jobs_of
from ..search.backends import get_driver
from ..search.dashboard import publish_study
from ..search.driver import SearchEvents, SearchOptions, SearchSummary
from ..search.refined import SETTINGS, refined_front, refined_points, trust
from ..search.report import front_metrics
from ..search.storage import open_refine_study, open_study
from ..study import Study
from ..study_latency import measure_latency
from ..training.checkpoints import load_weights
from ..training.teacher import load_teacher
from .base import in_study, training_placement

if TYPE_CHECKING:

    from ..search.refine import JobCounts
    from ..search.refined import Refined, Trust


# ---- search ---------------------------------------------------------------------------------------------------------
def search(study: Study, backend: str = "optuna", options: SearchOptions = SearchOptions(),
           events: SearchEvents = SearchEvents()) -> SearchSummary:
    """Run (or continue) the study's search on ``backend`` (see :mod:`nas.search.driver`)."""
    driver = get_driver(backend)
    driver.check(study, options)
    return driver.run(study, options, events)


# ---- refine ---------------------------------------------------------------------------------------------------------
REFINE_BACKENDS = ("optuna", "ray")  # the search's backend names: worker processes here, or Ray tasks


@dataclass(frozen=True)
class RefineOptions:
    """Overrides of the study's ``refine:`` section (None: the study's) and where the jobs run: ``workers`` processes
    on this machine (backend ``optuna``, as the search's) or Ray tasks (``ray``, on a local Ray or the cluster at
    ``ray_address``, ``cpus_per_job`` and ``gpus_per_job`` each). ``measure``: time each refined architecture on
    this device once its jobs are done."""

    top: int | None = None
    seeds: int | None = None
    epochs: int | None = None
    workers: int = 1
    backend: str = "optuna"
    ray_address: str | None = None
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0
    measure: bool = True

    def settings(self, study: Study) -> dict[str, int]:
        """``{top, seeds, epochs}``: these options over the study's ``refine:`` section."""
        r = study.refine
        values = {"top": self.top if self.top is not None else r.top,
                  "seeds": self.seeds if self.seeds is not None else r.seeds,
                  "epochs": self.epochs or r.epochs or study.budget.finetune_epochs}
        for key, value in values.items():
            if not isinstance(value, int) or value < (0 if key == "top" else 1):
                raise ConfigError(f"--{key}", f"expected a {'non-negative' if key == 'top' else 'positive'} "
                                              f"integer, got {value!r}")
        if self.backend not in REFINE_BACKENDS:
            raise ConfigError("--backend", f"expected one of {', '.join(REFINE_BACKENDS)}, got {self.backend!r}")
        if self.ray_address and self.backend != "ray":
            raise ConfigError("--ray-address", "only with --backend ray")
        if self.workers < 1:
            raise ConfigError("--workers", f"expected a positive integer, got {self.workers}")
        return values


@dataclass
class RefineResult:
    """A refine: its settings, its jobs (planned, and finished by this run), the refined points and front, and how
    well the search's proxy ordered them."""

    settings: dict[str, int]
    jobs: int
    ran: int
    points: list["Refined"]
    front: list["Refined"]
    trust: "Trust"
    seconds: float


def refine(study: Study, options: RefineOptions = RefineOptions(),
           on_progress: Callable[["JobCounts"], None] | None = None,
           on_measure: Callable[[str], None] | None = None) -> RefineResult:
    """Fine-tune the search front's ``top`` candidates and the dense reference for real, ``seeds`` seeds each (see
    :mod:`nas.search.refine`): the jobs no earlier run finished, on ``options.workers`` workers; then time each
    refined architecture on this device (``on_measure(label)`` before each). ``on_progress(counts)`` as jobs end."""

    settings = options.settings(study)
    if options.measure:
        study.latency.check_runtime()  # said before the training, not after it
    started = time.perf_counter()
    with in_study(study):
        ostudy = open_study(study, create=False)
        jobs = jobs_of.plan(study, ostudy, **settings)
        if not jobs:
            raise StateError("name", f"study {study.name!r} has no complete trial to refine; run the search first")
        rstudy = open_refine_study(study, heartbeat=True)  # heartbeats: dead workers' jobs queued again
        assert rstudy is not None
        rstudy.set_user_attr(SETTINGS, settings)
        jobs_of.enqueue(study, rstudy, jobs)
        before = jobs_of.job_counts(rstudy, jobs).done
        if before < len(jobs):
            if options.backend == "ray":
                jobs_of.run_ray(study, jobs, options.workers, options.ray_address, options.cpus_per_job,
                                options.gpus_per_job, on_progress)
            else:
                training_placement(study)  # a device this machine lacks: said before any worker starts
                jobs_of.run_local(study, jobs, options.workers, on_progress)
        counts = jobs_of.job_counts(rstudy, jobs)
        if on_progress is not None:
            on_progress(counts)  # also when every job was done before: the caller's view shows it
        if counts.done < len(jobs):
            failed = f"; {counts.failed[0][0]}: {counts.failed[0][1]}" if counts.failed else ""
            raise StateError("refine", f"{len(jobs) - counts.done} of {len(jobs)} refine jobs did not finish"
                                       f"{failed}. Run the same command again to train the rest (a job whose "
                                       f"worker died is queued again once its heartbeat is "
                                       f"{2 * study.search.heartbeat_s} s old)")
        points = refined_points(ostudy, rstudy)
        if options.measure:
            _measure_refined(study, rstudy, points, on_measure)
            points = refined_points(ostudy, rstudy)

    publish_study(study, ostudy)  # the note shows the refined front
    return RefineResult(settings, len(jobs), counts.done - before, points,
                        refined_front(points, front_metrics(ostudy)), trust(points), time.perf_counter() - started)


def _measure_refined(study: Study, rstudy, points: list["Refined"],
                     on_measure: Callable[[str], None] | None) -> None:
    """Each refined architecture timed on this device with its first seed's weights (when they are on this
    machine), once: stored on the refine's study."""
    teacher = None
    for p in points:
        if p.measured_ms is not None or not p.weights or not Path(p.weights[0]).is_file():
            continue
        if on_measure is not None:
            on_measure(p.label)
        teacher = teacher if teacher is not None else load_teacher(study)
        model = load_weights(build_model(p.config, teacher), p.weights[0], "weights").eval()
        rstudy.set_user_attr(f"{attr.MEASURED_PREFIX}{p.config.id}", round(measure_latency(study, model), 4))


def stored_refinement(study: Study, ostudy) -> list["Refined"]:
    """The study's refined points, empty where it has not been refined."""
    return refined_points(ostudy, open_refine_study(study, create=False))
