"""The search-driver interface: one way to run a study's trials, on this machine or on a cluster.

A driver runs trials of :class:`nas.training.evaluator.Evaluator` and stores each in the study's Optuna storage with the
attributes of :mod:`nas.attributes`, so ``nas report``, ``nas export`` and optuna-dashboard read every backend's
trials alike. Running a driver again continues the stored study up to ``n_trials`` finished trials.

Two drivers exist: ``optuna`` (:class:`nas.search.optuna_backend.OptunaDriver`, worker processes on this
machine sharing the storage) and ``ray`` (:class:`nas.search.ray_backend.RayDriver`, Ray Tune trials on a local Ray
or a cluster). A new one subclasses :class:`SearchDriver` and is named in :data:`nas.search.backends.BACKENDS`.

Example::

    from nas.search.backends import get_driver
    from nas.search.driver import SearchOptions
    from nas.study import Study

    study = Study.load("studies/quickstart.yaml")
    summary = get_driver("optuna").run(study, SearchOptions(n_trials=4, workers=2))
    print(summary.ran, summary.after.best)
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from optuna.trial import TrialState

from .. import attributes as attr

if TYPE_CHECKING:
    import optuna

    from ..study import Study


@dataclass(frozen=True)
class SearchOptions:
    """How to run a search; what a driver does not use it refuses in :meth:`SearchDriver.check`."""

    n_trials: int | None = None  # finished trials to reach (default: the study's budget.n_trials)
    workers: int = 1  # trials at once: local worker processes (optuna) or concurrent Ray trials (ray)
    timeout_s: float | None = None  # no trial starts after this (default: the study's budget.timeout_s)
    ray_address: str | None = None  # ray: join this cluster (default: a light local Ray for this search)
    cpus_per_trial: float = 1.0  # ray: CPUs reserved per trial; torch and TVM threads are capped to it
    gpus_per_trial: float = 0.0  # ray: GPUs reserved per trial
    # seeds this run's samplers with the study's sampler.seed (nas.study.sampler_seed); drawn at random by default,
    # so that drivers started together on one study propose different architectures. Each trial records the seed
    # of the sampler that proposed it (attributes.SAMPLER_SEED).
    driver_seed: int = field(default_factory=lambda: secrets.randbits(31))

    def trials_for(self, study: "Study") -> int:
        return self.n_trials or study.budget.n_trials

    def timeout_for(self, study: "Study") -> float | None:
        return self.timeout_s if self.timeout_s is not None else study.budget.timeout_s


@dataclass
class Progress:
    """What the storage says about a study right now."""

    counts: dict[str, int] = field(default_factory=dict)  # trial state name -> trials
    best: str = ""  # one line: the best trial, or the size of the Pareto front
    failures: list[tuple[int, str]] = field(default_factory=list)  # (trial number, reason) of each failed trial

    @property
    def finished(self) -> int:
        """Trials that count towards ``n_trials``: complete and pruned ones."""
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)


def progress_of(ostudy: "optuna.Study") -> Progress:
    trials = ostudy.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    best = ""
    if any(t.state == TrialState.COMPLETE for t in trials):
        if len(ostudy.directions) > 1:
            architectures = {t.user_attrs.get(attr.CONFIG_ID, t.number) for t in ostudy.best_trials}
            best = f"Pareto front: {len(architectures)} architectures"  # repeats of one count once
        else:
            try:
                t = ostudy.best_trial
                best = f"best: trial {t.number}, search accuracy {t.value:.4f}"
            except ValueError:
                best = "no feasible trial yet"
    failures = [(t.number, t.user_attrs.get(attr.FAIL_REASON, "unknown")) for t in trials if t.state == TrialState.FAIL]
    return Progress(counts, best, failures)


@dataclass(frozen=True)
class SearchEvents:
    """What a driver tells its caller while it runs (the CLI draws them); every callback is optional."""

    on_progress: Callable[[Progress], None] | None = None  # the storage's state, at least once per finished trial
    on_trial: Callable[[str, str], None] | None = None  # (the backend's trial id, how it ended), as it ends

    def progress(self, progress: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(progress)

    def trial(self, trial_id: str, state: str) -> None:
        if self.on_trial is not None:
            self.on_trial(trial_id, state)


@dataclass(frozen=True)
class SearchSummary:
    """One search run, whatever ran it."""

    backend: str
    before: Progress  # the study when the run started
    after: Progress  # and when it ended
    seconds: float
    notes: tuple[str, ...] = ()  # what the run did besides trials (e.g. stale trials marked FAIL)

    @property
    def ran(self) -> int:
        """Trials this run finished."""
        return self.after.finished - self.before.finished


class SearchDriver(ABC):
    """A way to run a study's trials. Subclasses set :attr:`name` and implement :meth:`describe` and :meth:`run`."""

    name: ClassVar[str]

    def check(self, study: "Study", options: SearchOptions) -> None:
        """Refuse, before any work, options this driver cannot honour (a :class:`ConfigError` naming the flag or
        the study key)."""

    @abstractmethod
    def describe(self, study: "Study", options: SearchOptions) -> str:
        """One line: where and how the trials will run."""

    @abstractmethod
    def run(self, study: "Study", options: SearchOptions, events: SearchEvents = SearchEvents()) -> SearchSummary:
        """Run (or continue) the search until ``options.trials_for(study)`` trials finished, or the timeout."""
