"""``nas export``: choose a study's trials (the Pareto front, the best, given numbers) and write each one's
ArchConfig file with its provenance (:mod:`nas.search.provenance`), and in supernet mode the weights it inherited.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from search_spaces import ArchConfig
from search_spaces.errors import ConfigError, StateError

from . import attributes as attr
from .disk import ensure_writable
from .search.objective import score_test_split
from .search.provenance import provenance, write_config
from .search.report import front_metrics, pareto_front, pareto_trials
from .study import Study
from .training.checkpoints import save_weights
from .training.supernet_file import load_supernet
from .training.teacher import load_teacher
from .training.trainer import standard_error

if TYPE_CHECKING:
    from .search.refined import Refined

# Multi-objective "best": the fastest Pareto trial whose search accuracy is within this many standard errors of the
# most accurate one's (the one-standard-error rule): closer than that, the search split cannot tell them apart.
BEST_TOLERANCE_SE = 1.0


def best_trial(ostudy: optuna.Study, tolerance_se: float = BEST_TOLERANCE_SE,
               refined: "Sequence[Refined]" = ()) -> FrozenTrial:
    """Single objective: Optuna's best (feasible) trial. Pareto search: of the Pareto trials whose search accuracy
    is within ``tolerance_se`` binomial standard errors (of the most accurate one, on the search split) of the most
    accurate one, the cheapest on the study's first hardware objective (``latency_ms`` in ``[accuracy, latency_ms,
    energy_uj]``; ties broken by the next). The test accuracy plays no part in the choice.

    With ``refined`` points (:mod:`nas.search.refined`), the same rule on the refined front: refined search-split
    accuracy (mean over seeds) and its standard error."""
    hardware = front_metrics(ostudy)[1:]
    if refined:
        front = sorted(pareto_front(list(refined), front_metrics(ostudy)), key=lambda p: -p.accuracy)
        top = front[0]
        margin = tolerance_se * top.attrs[attr.SEARCH_SE]
        return min((p for p in front if p.accuracy >= top.accuracy - margin - 1e-12),
                   key=lambda p: tuple(p.value(m) for m in hardware)).trial
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
    return min((t for t in front if t.user_attrs[attr.SEARCH_ACCURACY] >= top - margin - 1e-12),
               key=lambda t: tuple(t.user_attrs[m] for m in hardware))


def choose(ostudy: optuna.Study, which: str, refined: "Sequence[Refined]" = ()) -> list[FrozenTrial]:
    """``best``, ``pareto`` or a trial number; ``best`` and ``pareto`` from the refined front when there is one."""
    if which == "best":
        return [best_trial(ostudy, refined=refined)]
    if which == "pareto":
        if refined:
            return [p.trial for p in sorted(pareto_front(list(refined), front_metrics(ostudy)),
                                            key=lambda p: -p.accuracy)]
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


def export(study: Study, ostudy: optuna.Study, which: str, out: Path,
           refined: "Sequence[Refined]" = ()) -> list[Path]:
    """Write the chosen trials' configs into ``out`` as ``trial-<n>.yaml``, with their weights as
    ``trial-<n>.safetensors`` where there are some (named in the provenance: ``nas finetune`` starts there): a
    refined architecture's first seed's fine-tuned weights, else a supernet-mode trial's inherited ones. ``best``
    and ``pareto`` choose from the refined front when ``refined`` is given, and the provenance says so and carries
    the refined accuracies; a trial's own test accuracy is evaluated first where its trial did not
    (:func:`nas.search.objective.score_test_split`)."""

    ensure_writable(out, "--out", need_mb=1)
    paths, supernet = [], None
    chosen = choose(ostudy, which, refined)
    score_test_split(study, ostudy, chosen)
    study_attrs = ostudy.user_attrs
    by_trial = {p.trial.number: p for p in refined}
    for trial in chosen:
        config = ArchConfig.from_json(trial.user_attrs[attr.CONFIG])
        origin = provenance(study, trial, study_attrs)
        point = by_trial.get(trial.number)
        if which in ("best", "pareto"):
            origin["chosen_from"] = "refined front" if refined else "search front"
        if point is not None:
            origin["refined"] = {attr.SEARCH_ACCURACY: round(point.accuracy, 6),
                                 attr.TEST_ACCURACY: round(point.test_accuracy, 6),
                                 attr.TEST_SE: round(point.test_se, 6), "seeds": point.seeds,
                                 "epochs": point.epochs, "measured_ms": point.measured_ms}
            if point.weights and Path(point.weights[0]).is_file():
                shutil.copyfile(point.weights[0], out / f"trial-{trial.number}.safetensors")
                origin["weights"] = f"trial-{trial.number}.safetensors"
                origin["weights_from"] = f"refine, seed {study.train.seed}"
        if "weights" not in origin and trial.user_attrs.get(attr.EVALUATION) == "supernet":
            if supernet is None:
                supernet = load_supernet(study, load_teacher(study))
            weights = save_weights(supernet.extract(config), out / f"trial-{trial.number}.safetensors",
                                   {"config": config.to_json()})
            origin["weights"] = weights.name
        paths.append(write_config(out / f"trial-{trial.number}.yaml", config, origin))
    return paths
