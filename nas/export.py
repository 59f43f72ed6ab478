"""``nas export``: choose a study's trials (the Pareto front, the best, given numbers) and write each one's
ArchConfig file with its provenance (:mod:`nas.search.provenance`), and in supernet mode the weights it inherited.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search_spaces import ArchConfig
from search_spaces.errors import ConfigError, StateError

from . import attributes as attr
from .disk import ensure_writable
from .search.provenance import provenance, write_config
from .study import Study
from .training.trainer import standard_error

# Multi-objective "best": the fastest Pareto trial whose search accuracy is within this many standard errors of the
# most accurate one's (the one-standard-error rule): closer than that, the search split cannot tell them apart.
BEST_TOLERANCE_SE = 1.0


def pareto_trials(ostudy: optuna.Study) -> list[FrozenTrial]:
    """The Pareto-optimal complete trials on the study's objectives (:func:`nas.search.report.front_metrics`), feasible
    ones only when a budget applies, most accurate first; an architecture scored by several trials appears once."""
    from .search.report import front_metrics, pareto_front, points

    feasible = [p for p in points(ostudy) if all(v <= 0 for v in p.trial.constraints.values())]
    return [p.trial for p in sorted(pareto_front(feasible, front_metrics(ostudy)), key=lambda p: -p.accuracy)]


def best_trial(ostudy: optuna.Study, tolerance_se: float = BEST_TOLERANCE_SE) -> FrozenTrial:
    """Single objective: Optuna's best (feasible) trial. Pareto search: of the Pareto trials whose search accuracy
    is within ``tolerance_se`` binomial standard errors (of the most accurate one, on the search split) of the most
    accurate one, the cheapest on the study's first hardware objective (``latency_ms`` in ``[accuracy, latency_ms,
    energy_uj]``; ties broken by the next). The test accuracy plays no part in the choice."""
    from .search.report import front_metrics

    if len(ostudy.directions) == 1:
        try:
            return ostudy.best_trial
        except ValueError:
            raise StateError("--trial", "the study has no complete (feasible) trial yet") from None
    front = pareto_trials(ostudy)
    if not front:
        raise StateError("--trial", "the study has no complete trial yet")
    top = front[0].user_attrs[attr.SEARCH_ACCURACY]
    margin = tolerance_se * standard_error(top, front[0].user_attrs.get(attr.SEARCH_IMAGES, 0))
    margin = 0.0 if math.isnan(margin) else margin
    hardware = front_metrics(ostudy)[1:]
    return min((t for t in front if t.user_attrs[attr.SEARCH_ACCURACY] >= top - margin - 1e-12),
               key=lambda t: tuple(t.user_attrs[m] for m in hardware))


def choose(ostudy: optuna.Study, which: str) -> list[FrozenTrial]:
    """``best``, ``pareto`` or a trial number."""
    if which == "best":
        return [best_trial(ostudy)]
    if which == "pareto":
        front = pareto_trials(ostudy)
        if not front:
            raise StateError("--trial", "the study has no complete trial yet")
        return front
    try:
        number = int(which)
    except ValueError:
        raise ConfigError("--trial", f"expected best, pareto or a trial number, got {which!r}") from None
    trials = ostudy.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise ConfigError("--trial", f"no trial {number} in study {ostudy.study_name!r} "
                                     f"(it has trials 0..{len(trials) - 1})")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise ConfigError("--trial", f"trial {number} is {trial.state.name}, not COMPLETE")
    return [trial]


def export(study: Study, ostudy: optuna.Study, which: str, out: Path) -> list[Path]:
    """Write the chosen trials' configs into ``out`` as ``trial-<n>.yaml``; a trial scored in supernet mode also gets
    the weights it inherited, ``trial-<n>.safetensors`` (named in its provenance: ``nas finetune`` starts there),
    and its test accuracy evaluated first where its trial did not (:func:`nas.search.objective.score_test_split`)."""
    from .search.objective import score_test_split
    from .training.checkpoints import save_weights

    ensure_writable(out, "--out", need_mb=1)
    paths, supernet = [], None
    chosen = choose(ostudy, which)
    score_test_split(study, ostudy, chosen)
    study_attrs = ostudy.user_attrs
    for trial in chosen:
        config = ArchConfig.from_json(trial.user_attrs[attr.CONFIG])
        origin = provenance(study, trial, study_attrs)
        if trial.user_attrs.get(attr.EVALUATION) == "supernet":
            if supernet is None:
                from .training.supernet_trainer import load_supernet
                from .training.teacher import load_teacher

                supernet = load_supernet(study, load_teacher(study))
            weights = save_weights(supernet.extract(config), out / f"trial-{trial.number}.safetensors",
                                   {"config": config.to_json()})
            origin["weights"] = weights.name
        paths.append(write_config(out / f"trial-{trial.number}.yaml", config, origin))
    return paths
