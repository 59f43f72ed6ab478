"""The Optuna objective around an :class:`~nas.training.evaluator.Evaluator` (suggest a config, reuse a repeated
architecture's result, report per epoch for pruners, store the user attributes and constraints), and the test split
of supernet-mode trials scored after the search, for the front a report shows and the trials an export writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from search_spaces import ArchConfig

from .. import attributes as attr
from ..study import Study
from ..training.evaluator import Evaluator, Pruned, tested_attrs, training_recipe
from .dashboard import note_test_split

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def _scored_before(trial, config: ArchConfig, recipe: str):
    """A complete trial of the same study that already scored this architecture with the same recipe (samplers do
    propose repeats)."""

    for earlier in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if earlier.user_attrs.get(attr.CONFIG_ID) == config.id and earlier.user_attrs.get(attr.RECIPE) == recipe:
            return earlier
    return None


def set_constraints(trial, budgets: dict[str, float], metric: Callable[[str], float]) -> None:
    """A constraint per budget (hardware metric -> budget: ``metric - budget``, feasible at <= 0), keyed by the
    metric's name; both backends set them so."""
    for name, budget in budgets.items():
        trial.set_constraint(name, metric(name) - budget)


def optuna_objective(evaluator: Evaluator) -> Callable[[Any], Any]:
    """The Optuna objective: suggest a config from the study's space, score it, store what it found."""

    study = evaluator.study
    recipe = training_recipe(study)

    def objective(trial: optuna.Trial):
        config = study.space.suggest(trial)
        trial.set_user_attr(attr.CONFIG, config.to_json())
        trial.set_user_attr(attr.RECIPE, recipe)
        earlier = _scored_before(trial, config, recipe)
        if earlier is not None:  # training is seeded, so it would repeat this result: reuse it, spend no time
            for key, value in earlier.user_attrs.items():
                if key not in attr.RUN_ONLY:  # e.g. train_s: this trial trained nothing
                    trial.set_user_attr(key, value)
            trial.set_user_attr(attr.DUPLICATE_OF, earlier.number)
            for key, value in earlier.constraints.items():
                trial.set_constraint(key, value)
            return tuple(earlier.values) if study.objectives.multi else earlier.values[0]

        def report(epoch: int, accuracy: float) -> bool:
            if study.objectives.multi:  # Optuna cannot prune multi-objective trials; keep the curve
                return False
            trial.report(accuracy, epoch)
            return trial.should_prune()

        try:
            result, _ = evaluator.run(config, report=report)
        except Pruned:
            raise optuna.TrialPruned() from None
        for key, value in result.user_attrs().items():
            trial.set_user_attr(key, value)
        set_constraints(trial, study.objectives.budgets, result.metric)
        if study.objectives.multi:
            return result.values(study.objectives.metrics)
        return result.accuracy

    return objective


def score_test_split(study: Study, ostudy: "optuna.Study", trials: list["FrozenTrial"],
               on_trial: Callable[[int], None] | None = None) -> int:
    """Evaluate on the test split the supernet-mode ``trials`` that have no test accuracy yet (a supernet-mode trial
    scores the search split only): each subnet is made again as its trial made it (the supernet's weights, plus
    ``evaluation.finetune_steps`` of the seeded recipe) and its test accuracy stored as a study attribute
    (:data:`attributes.STUDY_TEST_SPLIT_PREFIX`; a told trial's own attributes are final), read back through
    :func:`attributes.with_test_split`. The samplers never see it. ``on_trial(number)`` before each. Returns how many
    were evaluated."""
    stored = ostudy.user_attrs
    todo = [t for t in trials if t.user_attrs.get(attr.EVALUATION) == "supernet"
            and attr.TEST_ACCURACY not in attr.with_test_split(t.user_attrs, stored, t.number)]
    if not todo:
        return 0
    evaluator = Evaluator(study, mode="supernet")
    for trial in todo:
        if on_trial is not None:
            on_trial(trial.number)
        config = ArchConfig.from_json(trial.user_attrs[attr.CONFIG])
        result, _ = evaluator.run(config, test=True)
        ostudy.set_user_attr(f"{attr.STUDY_TEST_SPLIT_PREFIX}{trial.number}", tested_attrs(result.test))
        note_test_split(study, ostudy, trial.number)
    return len(todo)


__all__ = ["optuna_objective", "score_test_split", "set_constraints"]
