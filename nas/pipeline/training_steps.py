"""The training steps: pretrain the teacher, train the supernet, fine-tune an exported architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latency_model.predictor import Predictor, PredictorError
from search_spaces import ArchConfig
from search_spaces.errors import ConfigError, StateError

from .. import attributes as attr
from ..finetune import finetune as train_config
from ..search.dashboard import note_finetune
from ..search.provenance import named_study, read_export
from ..study import Study
from ..training.memory import check_memory
from ..training.supernet_file import is_trained
from ..training.supernet_trainer import train
from ..training.teacher import is_pretrained, load_teacher
from ..training.teacher import pretrain as train_teacher
from .base import in_study, load_data, training_placement

if TYPE_CHECKING:

    from ..finetune import FinetuneResult
    from ..training.supernet_trainer import SupernetResult
    from ..training.teacher import PretrainResult


# ---- pretrain -------------------------------------------------------------------------------------------------------
def pretrain(study: Study, force: bool = False,
             on_epoch: Callable[[int, float, float], None] | None = None,
             on_wait: Callable[[], None] | None = None) -> "PretrainResult":
    """Train the dense teacher on the study's data (cached next to the study; ``force`` retrains).
    ``on_epoch(epoch, loss, search_accuracy)`` after each epoch; ``on_wait()`` when another process is training this
    teacher (this one waits for it, then uses its file)."""
    splits = load_data(study)
    return train_teacher(study, splits.train, splits.search, force=force, on_epoch=on_epoch, on_wait=on_wait)


def needs_pretrain(study: Study) -> bool:
    """True when the study names no checkpoint and its teacher file is missing or stale."""
    return study.checkpoint is None and not is_pretrained(study)


# ---- supernet -------------------------------------------------------------------------------------------------------
def supernet(study: Study, force: bool = False,
             on_step: Callable[[int, int, float], None] | None = None,
             on_wait: Callable[[], None] | None = None, start_from: Path | None = None) -> "SupernetResult":
    """Train the study's weight-sharing supernet (cached next to the study; a killed run resumes; ``force``
    retrains). Needs the teacher and the latency predictor (the cheapest subnet, the MoE expert latencies).
    ``start_from``: another supernet file whose weights a fresh run starts from (few-shot splitting).
    ``on_step(step, steps, loss)`` after each step; ``on_wait()`` when another process is training this supernet
    (this one waits for it, then uses its file). A supernet too large for this machine's memory is refused
    before anything is loaded."""
    with in_study(study):
        placement = training_placement(study)
        check_memory(study, placement)
        teacher = load_teacher(study)
        try:
            predictor = Predictor.load(study.latency.predictor, device=study.latency.device)
        except PredictorError as e:
            raise StateError("latency.predictor", f"{e}; run `nas fit-latency {study.path}` first") from None
        splits = load_data(study)
        return train(study, splits.train, teacher, predictor, force=force, on_step=on_step, placement=placement,
                     on_wait=on_wait, start_from=start_from)


def needs_supernet(study: Study) -> bool:
    """True when the study searches in supernet mode and its supernet file is missing, unfinished or stale."""
    if not study.evaluation.supernet:
        return False

    return not is_trained(study, load_teacher(study))


@dataclass(frozen=True)
class FinetuneJob:
    """What ``nas finetune`` will train: the architecture, the study it comes from, and for how many epochs."""

    config: "ArchConfig"
    origin: dict[str, Any]  # the export's provenance (empty for a plain ArchConfig file)
    study: Study
    epochs: int
    initial: Path | None = None  # the weights a supernet-mode export wrote next to the config: training starts there

    @classmethod
    def of(cls, config_file: Path, study_file: Path | None = None, epochs: int | None = None,
           device: str | None = None) -> "FinetuneJob":
        """An exported (or plain) ArchConfig file; the study is the one the export names unless ``study_file`` is
        given, ``epochs`` defaults to its ``budget.finetune_epochs``, ``device`` (``--device``) overrides its
        ``train.device``."""
        study_file = study_file or named_study(config_file)
        # the study first: its plugins register primitives the config may name
        study = Study.load(study_file).on_device(device) if study_file else None
        config, origin = read_export(config_file)
        if study is None:
            raise ConfigError("provenance.study_file", "this config names no study; give --study STUDY.yaml",
                              str(config_file))
        initial = None
        if origin.get("weights"):
            initial = Path(config_file).parent / str(origin["weights"])
            if not initial.is_file():
                raise ConfigError("provenance.weights", f"the inherited weights {initial} are missing (export the "
                                                        "trial again, or delete the key to start from the teacher)",
                                  str(config_file))
        return cls(config, origin, study, epochs or study.budget.finetune_epochs, initial)


def finetune(job: FinetuneJob, out: Path, measure: bool = True,
             on_epoch: Callable[[int, float], None] | None = None) -> "FinetuneResult":
    """Fine-tune the job's architecture from the teacher and score it on the test split, writing the weights, the
    config and ``result.json`` into ``out``; with ``measure``, time it on the kernels."""
    if measure:
        job.study.latency.check_runtime()  # said before the training, not after it
    result = train_config(job.study, job.config, job.epochs, out, measure=measure, origin=job.origin,
                          on_epoch=on_epoch, initial=job.initial)
    trial = job.origin.get("trial")
    if job.origin.get("study") == job.study.name and isinstance(trial, int):
        note_finetune(job.study, trial, {"epochs": job.epochs, attr.TEST_ACCURACY: result.test_accuracy,
                                         attr.TEST_SE: result.test_se, "measured_ms": result.measured_ms})
    return result
