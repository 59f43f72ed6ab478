"""The study's Optuna sampler and pruner, made from their names (one table each) and the seed of a run's stream."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import optuna

from search_spaces.config import ConfigError

from .sections import PRUNERS, SAMPLERS

if TYPE_CHECKING:
    from .assembly import Study


def sampler_seed(study: Study, stream: tuple[int, ...] = ()) -> int:
    """The seed of a sampler: the study's ``sampler.seed``, or one derived from it and ``stream`` (a search run's
    driver seed, the trials stored when it started, its worker), so that drivers started together, workers of one
    driver and a resumed search each draw their own architectures, and each run is reproducible from its stream."""

    seed = study.sampler.kwargs.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("sampler.seed", f"expected an integer, got {seed!r}", str(study.path))
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0]) if stream else seed


def create_sampler(study: Study, stream: tuple[int, ...] = ()):
    """The study's Optuna sampler, seeded with :func:`sampler_seed` of ``stream``."""

    kwargs = dict(study.sampler.kwargs)
    kwargs.pop("seed", None)
    seed = sampler_seed(study, stream)
    try:
        return getattr(optuna.samplers, SAMPLERS[study.sampler.name])(seed=seed, **kwargs)
    except TypeError as e:
        raise ConfigError("sampler", f"{study.sampler.name} does not take {kwargs}: {e}", str(study.path)) from None


def create_pruner(study: Study):
    """The study's Optuna pruner (epochs are the steps it sees)."""

    kwargs = dict(study.pruner.kwargs)
    if study.pruner.name == "hyperband":
        kwargs.setdefault("min_resource", 1)
        kwargs.setdefault("max_resource", study.budget.epochs)
    try:
        return getattr(optuna.pruners, PRUNERS[study.pruner.name])(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError("pruner", f"{study.pruner.name} does not take {kwargs}: {e}", str(study.path)) from None


__all__ = ["PRUNERS", "SAMPLERS", "create_pruner", "create_sampler", "sampler_seed"]
