"""One candidate scored: ArchConfig -> (search-split accuracy after a short distilled fine-tune, or with weights
inherited from the study's supernet, predicted latency and estimated energy).

The search split is what trials are scored, pruned and chosen on; the test split is never returned to the sampler
(see :mod:`nas.training.data`). A fine-tune-mode evaluation scores it once at its end (``test_accuracy``): its
weights are gone afterwards. A supernet-mode one does not: its model is the supernet's subnet, made again at will, so
the test split is evaluated only for the trials someone reports or exports
(:func:`nas.search.objective.score_test_split`), which keeps a trial's cost to the one evaluation that selects.

:class:`Evaluator` holds what every trial of a worker shares (teacher, data, predictor) and scores one config; both
search backends (:func:`nas.search.objective.optuna_objective`, the Ray trainable) and ``nas finetune`` wrap it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from latency_model.decomposition import ModelDims
from latency_model.energy import estimate as estimate_energy
from latency_model.predictor import Predictor
from search_spaces import ArchConfig, build_model
from search_spaces.errors import ConfigError
from search_spaces.ops.moe import MoEMlp
from search_spaces.reparam import transformer_blocks, weight_counts

from .. import attributes as attr
from ..device import Placement, resolve
from ..study import Study
from . import data
from .checkpoints import load_weights
from .supernet_file import load_supernet
from .teacher import load_teacher
from .trainer import Evaluation, LossWeights, Trainer, evaluate

if TYPE_CHECKING:
    from search_spaces.supernet import Supernet


# Stops a trial early: called after each epoch with (epoch, accuracy); True means "stop, this trial is pruned".
Reporter = Callable[[int, float], bool]


class Pruned(Exception):
    """The reporter asked to stop the trial after ``epoch``."""

    def __init__(self, epoch: int, accuracy: float) -> None:
        super().__init__(f"stopped after epoch {epoch + 1} at accuracy {accuracy:.4f}")
        self.epoch, self.accuracy = epoch, accuracy


@dataclass
class TrialResult:
    config: ArchConfig
    search: Evaluation  # the accuracy that selects
    test: Evaluation | None  # the accuracy that is reported (None: not evaluated in the trial, supernet mode)
    latency_ms: float
    prediction: dict[str, Any]  # Prediction.to_dict(): total, fixed, per-block parts, MoE tokens
    history: list[float] = field(default_factory=list)  # search accuracy after each epoch
    weights: dict[str, float] = field(default_factory=dict)
    train_s: float = 0.0
    evaluation: str = "finetune"  # how the weights were obtained: a fine-tune of its own, or the supernet's
    energy: dict[str, Any] | None = None  # EnergyEstimate.to_dict(); None where a primitive declares no counts

    @property
    def accuracy(self) -> float:
        """The search-split accuracy: the objective."""
        return self.search.accuracy

    @property
    def energy_uj(self) -> float:
        return float("nan") if self.energy is None else float(self.energy["energy_uj"])

    def metric(self, name: str) -> float:
        """A metric of the study's objectives by its name there (``accuracy``, ``latency_ms``, ``energy_uj``)."""
        return {"accuracy": self.accuracy, "latency_ms": self.latency_ms, "energy_uj": self.energy_uj}[name]

    def values(self, metrics: tuple[str, ...]) -> tuple[float, ...]:
        return tuple(self.metric(m) for m in metrics)

    @property
    def moe_shares(self) -> dict[int, list[float]]:
        return self.search.moe_shares

    def user_attrs(self) -> dict[str, Any]:
        """What a stored trial carries (both backends), JSON-serializable."""
        return {
            attr.CONFIG: self.config.to_json(), attr.CONFIG_ID: self.config.id,
            attr.SEARCH_ACCURACY: self.search.accuracy, attr.SEARCH_SE: round(self.search.standard_error, 6),
            attr.SEARCH_IMAGES: self.search.count, **(tested_attrs(self.test) if self.test is not None else {}),
            attr.LATENCY_MS: self.latency_ms, attr.LATENCY_BREAKDOWN: self.prediction,
            attr.MOE_SPLIT: {str(k): v for k, v in self.moe_shares.items()},
            attr.SEARCH_ACCURACY_HISTORY: self.history, attr.WEIGHTS: self.weights,
            attr.TRAIN_S: round(self.train_s, 3), attr.EVALUATION: self.evaluation,
            **({attr.ENERGY_UJ: self.energy_uj, attr.ENERGY_BREAKDOWN: self.energy} if self.energy else {}),
        }


def tested_attrs(test: Evaluation) -> dict[str, Any]:
    """What a test-split evaluation stores: ``test_accuracy``, ``test_se``, ``test_images``."""
    return {attr.TEST_ACCURACY: test.accuracy, attr.TEST_SE: round(test.standard_error, 6),
            attr.TEST_IMAGES: test.count}


def set_router_latencies(model: torch.nn.Module, config: ArchConfig, predictor: Predictor, batch: int) -> None:
    """Give each MoE router the predicted latency of its experts (the lat vector of the balance loss)."""
    for i, block in enumerate(transformer_blocks(model)):
        if isinstance(block.mlp, MoEMlp):
            block.mlp.set_expert_latency(predictor.expert_latencies(config, i, batch))


class Evaluator:
    """Scores architectures of one study. Built once per worker: it loads the teacher, the data and the predictor."""

    def __init__(self, study: Study, teacher: torch.nn.Module | None = None,
                 predictor: Predictor | None = None, placement: Placement | None = None,
                 supernet: "Supernet | None" = None, mode: str | None = None) -> None:
        """``teacher``, ``predictor`` and (in supernet mode) ``supernet`` default to the study's files; a Ray worker
        on another node gets them passed in instead (they travel with the trial). ``placement`` defaults to the
        study's ``train.device`` and ``train.precision`` as this machine resolves them. ``mode`` overrides the
        study's ``evaluation.mode`` (``nas finetune`` always fine-tunes). The process's threads are its entry
        point's to set (:mod:`nas.process`)."""
        self.study = study
        self.placement = placement or resolve(study.train.device, study.train.precision)
        teacher = teacher if teacher is not None else load_teacher(study)
        self.supernet = None
        if (mode or study.evaluation.mode) == "supernet":
            self.supernet = (supernet if supernet is not None else load_supernet(study, teacher)).eval()
        self.teacher = teacher.to(self.placement.device)
        dims = ModelDims.of(study.model)
        self.splits = data.load(study.data, dims.img, dims.classes)
        settings = study.latency
        self.predictor = predictor or Predictor.load(settings.predictor, device=settings.device)
        self.batch = settings.batch_sizes[0]

    def run(self, config: ArchConfig, epochs: int | None = None, full_epochs: bool = False,
            report: Reporter | None = None, seed: int | None = None,
            initial: Path | None = None, test: bool | None = None) -> tuple[TrialResult, torch.nn.Module]:
        """Fine-tune mode: fine-tune ``config`` from the teacher (distillation + MoE loss) on the train split, score
        it on the search split after every epoch and on the test split once at the end. Epochs are the study's trial
        budget (``epochs``, ``steps_per_epoch``) unless given; ``full_epochs``: whole passes. ``initial``: start
        from these weights of ``config`` (an exported supernet subnet's) instead of the teacher's.

        Supernet mode: ``config`` inherits its weights from the supernet, takes ``evaluation.finetune_steps`` steps
        of the same recipe (one "epoch"), and is scored on the search split; on the test split only when ``test``
        says so (its default is the mode's: True in fine-tune mode, False in supernet mode, see
        :func:`score_test_split`).

        Raises:
            Pruned: ``report`` asked to stop.
            TrainingDiverged: the loss became NaN or infinite.
        """
        budget, train = self.study.budget, self.study.train
        start = time.perf_counter()
        torch.manual_seed(train.seed if seed is None else seed)
        if self.supernet is not None:
            model = self.supernet.extract(config)
            epochs, steps = 1, self.study.evaluation.finetune_steps
        else:
            model = build_model(config, self.teacher)
            if initial is not None:
                load_weights(model, initial, "weights")
            epochs = epochs or budget.epochs
            steps = None if full_epochs else budget.steps_per_epoch
        model.requires_grad_(True)  # every weight is fine-tuned
        set_router_latencies(model, config, self.predictor, self.batch)
        trainer = None
        if steps != 0:
            trainer = Trainer(
                model, self.splits.train, epochs=epochs, steps_per_epoch=steps,
                batch_size=train.batch_size, lr=train.lr, weight_decay=train.weight_decay, teacher=self.teacher,
                weights=LossWeights(train.distill_alpha, train.distill_temperature, train.moe_loss_weight),
                seed=train.seed if seed is None else seed, placement=self.placement,
                loader_workers=train.loader_workers,
            )
        history: list[float] = []
        evaluation = None
        for epoch in range(epochs):
            if trainer is not None:
                trainer.train_epoch()
            evaluation = evaluate(model, self.splits.search, placement=self.placement,
                                  loader_workers=train.loader_workers)
            history.append(evaluation.accuracy)
            if report is not None and report(epoch, evaluation.accuracy):
                raise Pruned(epoch, evaluation.accuracy)
        assert evaluation is not None
        prediction = self.predictor.predict(config, self.batch, moe_loads=evaluation.moe_loads)
        counts = weight_counts(model)
        if test is None:
            test = self.supernet is None
        result = TrialResult(
            config=config, search=evaluation, latency_ms=prediction.total_ms,
            test=self.evaluate_test(model) if test else None,
            prediction=prediction.to_dict(), history=history,
            weights={"total": counts.total, "shift_share": round(counts.shift_share, 4)},
            train_s=time.perf_counter() - start, evaluation=self.mode,
            energy=self.energy(config, evaluation.moe_loads),
        )
        return result, model

    def energy(self, config: ArchConfig, moe_loads=None) -> dict[str, Any] | None:
        """The energy estimate of one image (``EnergyEstimate.to_dict``), MoE experts at the loads measured on the
        search split; None where the space has a primitive that declares no operation counts (a study that
        searches on energy refuses such a space when it is read)."""
        try:
            return estimate_energy(config, self.study.energy, routing=moe_loads).to_dict()
        except (ConfigError, NotImplementedError):
            if self.study.objectives.uses_energy:
                raise
            return None

    def evaluate_test(self, model: torch.nn.Module) -> Evaluation:
        """``model`` on the test split: what is reported, never what selects."""
        return evaluate(model, self.splits.test, placement=self.placement,
                        loader_workers=self.study.train.loader_workers)

    @property
    def mode(self) -> str:
        """How this evaluator scores: ``finetune`` or ``supernet``."""
        return "finetune" if self.supernet is None else "supernet"


def training_recipe(study: Study) -> str:
    """What a trial's result depends on besides its architecture: the trial budget, the training settings and the
    data. A result is reused for a repeated architecture only under the same recipe."""
    recipe = {"epochs": study.budget.epochs, "steps_per_epoch": study.budget.steps_per_epoch,
              "train": study.train.recipe(), "data": asdict(study.data)}
    if study.evaluation.supernet:  # (fine-tune mode's key is as it was before supernets: stored results stay valid)
        recipe["evaluation"] = {"finetune_steps": study.evaluation.finetune_steps,
                                **study.evaluation.supernet_recipe()}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]
