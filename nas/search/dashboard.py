"""What optuna-dashboard shows of a study besides its numbers: a note per trial, a note on the study, and artifacts.

- **Trial note** (Markdown, optuna-dashboard's ``save_note``), written by whichever process tells the trial (an
  Optuna-backend worker, the Ray searcher in the Ray driver), just before it tells it: the architecture as a table
  with the predicted latency of each block's parts, the search and test accuracy, the parameters and the share of
  shift weights, and what the trial is when it is a reference or a duplicate (or why it failed).
- **Study note**: the study file (name, content hash), model and data, the device and target the latencies are for,
  the predictor with its held-out accuracy, the kernels' tuning state, the reference trials and the command that
  reproduces the search. Written by the search driver before and after a search, by ``nas fit-latency`` and by
  ``nas report``, and only when it changed (a re-profile, a refit, finished references).
- **Artifacts** (Optuna's artifact store; ``artifacts:`` in the study file, default ``runs/<name>/artifacts`` next
  to it): each trial's ArchConfig YAML with its provenance, ready for ``nas finetune``; the report's ``pareto.png``,
  ``allocation.png`` and ``trials.csv`` on the study (replaced when the report is written again). ``nas dashboard``
  serves them.

The trial's user attributes stay the machine-readable record (JSON, :mod:`nas.attributes`); the notes are written
from them, for a person.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from kernels.lazy import lazy_import
from latency_model import db
from latency_model.db import redact
from latency_model.energy import NOTE as ENERGY_NOTE
from latency_model.prediction import LOO
from latency_model.predictor import Predictor, PredictorError
from latency_model.profile import table_dispatch
from search_spaces import ArchConfig
from search_spaces.errors import ConfigError, ResourceError, StateError

from .. import attributes as attr
from ..study import Study
from ..study_latency import profiled_trials, where_it_pays
from ..upstream.optuna_internals import remove_study_artifact, study_artifacts
from .provenance import config_text, provenance
from .refined import refined_front, refined_points, trust
from .report import front_metrics
from .storage import open_refine_study, open_study, refine_study_name

optuna_dashboard = lazy_import("optuna_dashboard")

# What each reference trial is, for its note and the study's.
REFERENCES = {"dense": "the all-dense model (the teacher's architecture)",
              "paper": "the paper's allocation: additive attention and a dense + shift MoE in every block"}
# The objective names the dashboard shows (a study's metrics, by their names in the study file).
OBJECTIVE_NAMES = {"accuracy": "search_accuracy", "latency_ms": "predicted_latency_ms",
                   "energy_uj": "estimated_energy_uj"}
REMOTE_STORES = ("s3", "gs")


# ---- the artifact store -------------------------------------------------------------------------------------------
def artifact_location(study: Study) -> str:
    """Where the study's artifacts go: its ``artifacts:`` setting, or ``runs/<name>/artifacts`` next to the file."""
    return study.artifacts or str(study.folder / "runs" / study.name / "artifacts")


def artifact_store(location: str, where: str = "artifacts"):
    """An Optuna artifact store for a folder, ``s3://bucket[/prefix]`` or ``gs://bucket[/prefix]``."""
    scheme, _, rest = location.partition("://") if "://" in location else ("", "", location)
    if scheme in REMOTE_STORES:
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(where, f"expected {scheme}://BUCKET[/PREFIX], got {location!r}")
        try:
            if scheme == "s3":
                store = optuna.artifacts.Boto3ArtifactStore(bucket)
            else:
                store = optuna.artifacts.GCSArtifactStore(bucket)
        except ImportError as e:
            package = "boto3" if scheme == "s3" else "google-cloud-storage"
            raise ResourceError(where, f"{location} needs {package} (pip install {package}): {e}") from None
        return _Prefixed(store, prefix) if prefix else store
    if scheme not in ("", "file"):
        raise ConfigError(where, f"unknown artifact store {location!r}: a folder, s3://BUCKET or gs://BUCKET")
    folder = Path(rest)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResourceError(where, f"cannot create the artifact folder {folder}: {e.strerror}") from None
    return optuna.artifacts.FileSystemArtifactStore(str(folder))


class _Prefixed:
    """An artifact store that keeps its artifacts under a key prefix of a bucket."""

    def __init__(self, store, prefix: str) -> None:
        self.store, self.prefix = store, prefix.strip("/") + "/"

    def open_reader(self, artifact_id: str):
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


def upload(store, study_or_trial: optuna.Study | optuna.Trial, name: str, content: bytes | str) -> str:
    """Upload ``content`` as an artifact called ``name`` of a study or a live trial; returns its id."""
    data = content.encode() if isinstance(content, str) else content
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        return optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path),
                                                study_or_trial=study_or_trial)


def replace_study_artifacts(ostudy: optuna.Study, store, files: Iterable[Path]) -> list[str]:
    """Upload each file to the study, removing the study's earlier artifacts of the same name first (a report
    written again replaces its charts, it does not pile them up)."""
    files = list(files)
    names = {f.name for f in files}
    for artifact_id, name in study_artifacts(ostudy).items():
        if name in names:
            remove_study_artifact(ostudy, store, artifact_id)
    return [upload(store, ostudy, f.name, f.read_bytes()) for f in files]


# ---- the trial note -------------------------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def _share(values: Sequence[float] | None) -> str:
    return " / ".join(f"{v:.0%}" for v in values) if values else ""


def _accuracy(attrs: Mapping[str, Any], key: str, se: str, images: str) -> str:
    value = attrs.get(key)
    if value is None:
        return "not measured"
    spread = f" ± {attrs[se]:.3f}" if isinstance(attrs.get(se), int | float) and not math.isnan(attrs[se]) else ""
    count = f" ({attrs[images]} images)" if attrs.get(images) else ""
    return f"{value:.4f}{spread}{count}"


def _test_accuracy(attrs: Mapping[str, Any]) -> str:
    if attrs.get(attr.TEST_ACCURACY) is None and attrs.get(attr.EVALUATION) == "supernet":
        return "evaluated when the trial is reported or exported (`nas report`, `nas export`; supernet mode)"
    return _accuracy(attrs, attr.TEST_ACCURACY, attr.TEST_SE, attr.TEST_IMAGES)


def architecture_table(config: ArchConfig, breakdown: Mapping[str, Any] | None = None,
                       moe_split: Mapping[str, Sequence[float]] | None = None,
                       energy: Mapping[str, Any] | None = None) -> list[str]:
    """One Markdown row per block: its choices, the MoE experts with the share of tokens each got, the predicted
    milliseconds of each part (``breakdown``: :meth:`Prediction.to_dict`) and the estimated µJ of the block, compute
    + memory (``energy``: :meth:`EnergyEstimate.to_dict`)."""
    parts = (breakdown or {}).get("blocks") or [{} for _ in config.blocks]
    energies = (energy or {}).get("blocks") or [None for _ in config.blocks]
    moe_split = moe_split or {}
    lines = ["| block | attention | qkv | proj | mlp | MoE experts (token share) | attention ms | mlp ms | "
             "norms+residuals ms | block ms | block µJ (compute + memory) |",
             "| ---: | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for i, (block, cost, uj) in enumerate(zip(config.blocks, parts, energies)):
        attention = block.attention + (f" ({block.binarize})" if block.binarize else "")
        experts = ""
        if block.moe is not None:
            experts = f"top-{block.moe.top_k}: {', '.join(block.moe.experts)}"
            if moe_split.get(str(i)):
                experts += f" ({_share(moe_split[str(i)])})"
        mlp_ms = sum(v for k, v in cost.items() if k not in ("attention", "norms+residuals")) if cost else None
        total = sum(cost.values()) if cost else None
        lines.append(f"| {i} | {attention} | {block.qkv} | {block.proj} | {block.mlp} | {experts} | "
                     f"{_ms(cost.get('attention'))} | {_ms(mlp_ms)} | {_ms(cost.get('norms+residuals'))} | "
                     f"{_ms(total)} | {_uj(uj)} |")
    return lines


def energy_sentence(energy: Mapping[str, Any]) -> str:
    """One trial's energy estimate (:meth:`EnergyEstimate.to_dict`) in a sentence that names its model."""
    frame = energy["frame"]["compute_uj"] + energy["frame"]["memory_uj"]
    if energy.get("model") == "accelerator":
        how = (f"energy model `accelerator` (ShiftAddViT's: each layer's accesses under its searched tiling; "
               f"accelerator latency {energy.get('accelerator_latency_ms', float('nan')):.3g} ms)")
    else:
        how = f"unit costs `{energy['table']}` (weights read once from DRAM, activations on chip)"
    return (f"Estimated energy per image, {how}: **{energy['energy_uj']:.4g} µJ** = compute "
            f"{energy['compute_uj']:.4g} + memory {energy['memory_uj']:.4g} µJ, {frame:.3g} µJ of it outside the "
            f"blocks: {energy.get('note', ENERGY_NOTE)}.")


def _uj(energy: Mapping[str, float] | None) -> str:
    if not energy:
        return ""
    return f"{energy['compute_uj'] + energy['memory_uj']:.3g} ({energy['compute_uj']:.3g} + {energy['memory_uj']:.3g})"


def trial_note(number: int, state: TrialState, attrs: Mapping[str, Any], device: str,
               finetuned: Mapping[str, Any] | None = None) -> str:
    """A trial's note, from its user attributes (and ``finetuned``: what ``nas finetune`` found of it)."""
    lines = [f"## Trial {number}: {state.name.lower()}", ""]
    reference = attrs.get(attr.REFERENCE)
    if reference:
        lines += [f"**Reference trial**: {REFERENCES.get(reference, reference)}.", ""]
    if attrs.get(attr.DUPLICATE_OF) is not None:
        lines += [f"**Duplicate** of trial {attrs[attr.DUPLICATE_OF]}: the same architecture under the same "
                  "training recipe, so its result was reused (no training).", ""]
    if state == TrialState.FAIL:
        lines += [f"**Failed**: {attrs.get(attr.FAIL_REASON, 'no reason recorded')}", ""]
    if attrs.get(attr.CONFIG):
        config = ArchConfig.from_json(attrs[attr.CONFIG])
        breakdown = attrs.get(attr.LATENCY_BREAKDOWN)
        lines += ["### Architecture and predicted latency", ""]
        energy = attrs.get(attr.ENERGY_BREAKDOWN)
        lines += architecture_table(config, breakdown, attrs.get(attr.MOE_SPLIT), energy) + [""]
        if breakdown:
            lines += [f"Predicted for `{device}`: **{breakdown['total_ms']:.3g} ms** = blocks + "
                      f"{breakdown['fixed_ms']:.3g} ms outside the blocks (patch embedding, downsampling, head) + "
                      f"{breakdown.get('composition_ms', 0.0):.3g} ms for running them back to back (calibrated on "
                      "whole models).", ""]
        if energy:
            lines += [energy_sentence(energy), ""]
        artifact = (f"; its ArchConfig file is this trial's artifact (`trial-{number}.yaml`, ready for "
                    "`nas finetune`)") if state == TrialState.COMPLETE else ""
        lines += [f"Architecture id `{config.id}`{artifact}.", ""]
    if attrs.get(attr.SEARCH_ACCURACY) is not None or attrs.get(attr.TEST_ACCURACY) is not None:
        lines += ["### Accuracy", "",
                  f"- search split (what selects): {_accuracy(attrs, attr.SEARCH_ACCURACY, attr.SEARCH_SE, attr.SEARCH_IMAGES)}",
                  f"- test split (what to report): {_test_accuracy(attrs)}"]
        history = attrs.get(attr.SEARCH_ACCURACY_HISTORY)
        if history:
            lines.append(f"- search accuracy after each epoch: {', '.join(f'{a:.4f}' for a in history)}")
        if finetuned:
            epochs = finetuned["epochs"]
            lines.append(f"- after `nas finetune` ({epochs} epoch{'s' if epochs != 1 else ''}): test "
                         f"{finetuned[attr.TEST_ACCURACY]:.4f} ± {finetuned[attr.TEST_SE]:.3f}"
                         + (f", measured {finetuned['measured_ms']:.3g} ms on the kernels"
                            if finetuned.get("measured_ms") else ""))
        lines.append("")
    weights = attrs.get(attr.WEIGHTS)
    if weights:
        lines += [f"**Parameters**: {weights['total']:,}; {weights['shift_share']:.0%} of the linear weights are "
                  "shifts (no multiplier).", ""]
    if attrs.get(attr.TRAIN_S) is not None:
        lines += [f"Trained for {attrs[attr.TRAIN_S]:.0f} s" + (f" on {attrs[attr.WORKER]}" if attrs.get(attr.WORKER)
                                                                else "") + ".", ""]
    return "\n".join(lines).rstrip() + "\n"


def publish_trial(study: Study, trial: optuna.Trial, state: TrialState, store=None) -> None:
    """Write a live trial's note and upload its ArchConfig file, before it is told (a finished trial takes no new
    artifact). What goes wrong here is said once on the trial and never fails it."""
    attrs = trial.user_attrs
    try:
        optuna_dashboard.save_note(trial, trial_note(trial.number, state, attrs, study.latency.device))
        if store is not None and attrs.get(attr.CONFIG) and state == TrialState.COMPLETE:
            config = ArchConfig.from_json(attrs[attr.CONFIG])
            upload(store, trial, f"trial-{trial.number}.yaml", config_text(config, provenance(study, trial)))
    except Exception as e:  # noqa: BLE001 - the dashboard's view of a trial must not cost the trial itself
        trial.set_user_attr(attr.DASHBOARD_ERROR, f"{type(e).__name__}: {e}"[:500])


def note_finetune(study: Study, number: int, finetuned: Mapping[str, Any]) -> bool:
    """Add what ``nas finetune`` found to the note of the stored trial it fine-tuned (the trial's attributes are
    final once it is told: the note is where a later result goes). False when there is no such stored trial."""
    ostudy = _stored(study)
    trials = ostudy.get_trials(deepcopy=False) if ostudy is not None else []
    if not 0 <= number < len(trials):
        return False
    frozen = trials[number]
    optuna_dashboard.save_note(optuna.trial.Trial(ostudy, frozen._trial_id),
              trial_note(number, frozen.state, attr.with_test_split(frozen.user_attrs, ostudy.user_attrs, number),
                         study.latency.device, finetuned))
    return True


def note_test_split(study: Study, ostudy: optuna.Study, number: int) -> None:
    """Rewrite a stored trial's note with the test accuracy evaluated after it
    (:func:`nas.search.objective.score_test_split`)."""
    frozen = ostudy.get_trials(deepcopy=False)[number]
    optuna_dashboard.save_note(optuna.trial.Trial(ostudy, frozen._trial_id),
              trial_note(number, frozen.state, attr.with_test_split(frozen.user_attrs, ostudy.user_attrs, number),
                         study.latency.device))


def _stored(study: Study) -> optuna.Study | None:
    """The study's Optuna study when its storage holds it; None otherwise (and no SQLite file is created to find
    out)."""

    url = make_url(study.storage)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        return None
    try:
        return open_study(study, create=False)
    except (StateError, ResourceError):
        return None


# ---- the study note -------------------------------------------------------------------------------------------------
def _predictor_lines(study: Study) -> list[str]:
    path = Path(study.latency.predictor)
    try:
        predictor = Predictor.load(path)
    except PredictorError:
        return [f"- predictor: `{path}` (not fitted yet: `nas fit-latency {study.path}`)"]
    accuracy = predictor.meta.get("accuracy", {})
    lines = [f"- predictor: `{path}`, fitted {predictor.meta.get('fitted_at', '?')} on "
             f"{predictor.meta.get('rows', '?')} measurements and {predictor.meta.get('model_rows', 0)} whole models"]
    held = accuracy.get(LOO)
    if held:
        lines.append(f"- whole models, each predicted by the calibration fitted without it: {held['within_10pct']:.0%} "
                     f"within ±10 %, {held['within_5pct']:.0%} within ±5 %, mean error {held['mape']:.1%} "
                     f"({held['count']} models)")
    else:
        lines.append("- whole models: not checked out of sample (latency.calibration is 0)")
    kernels = accuracy.get("all")
    if kernels:
        lines.append(f"- op models on held-out shapes: {kernels['within_10pct']:.0%} within ±10 % "
                     "(a profiled shape is looked up, not modelled)")
    return lines


def _pays_lines(study: Study) -> list[str]:
    """Where each choice pays, as the study's predictor prices it (:mod:`latency_model.pays`)."""
    pays = where_it_pays(study)
    if pays is None or not pays.ratios:
        return []
    lines = ["### Where each choice pays", "",
             f"Each choice alone in a dense block, its part's predicted time over dense's on `{pays.device}` at batch "
             f"{pays.batch} (below 1.0: faster than dense).", "",
             "| blocks | slot | choice | ms | × dense |", "|---|---|---|---:|---:|"]
    lines += [f"| {r.where} | {r.slot} | {r.choice} | {r.ms:.4f} | {'**' if r.pays else ''}{r.ratio:.2f}"
              f"{'**' if r.pays else ''} |" for r in pays.ratios]
    warning = pays.nothing_pays(study.objectives.metrics)
    return lines + ([""] + [f"> {warning}"] if warning else []) + [""]


def _tuning_line(study: Study) -> str:
    try:
        trials = profiled_trials(study.latency)
    except Exception:  # noqa: BLE001 - a table that cannot be read yet is said as such
        return "- kernels: not profiled yet"
    if trials == 0:
        line = ("- kernels: **untuned** (default schedules, `--kernel-trials 0`): the multiplication-free kernels run "
                "slower than they would tuned")
    else:
        line = f"- kernels: tuned, {trials} MetaSchedule trials per kernel"

    dispatch = table_dispatch(db.connect(study.latency.db), study.latency.device)
    return line + (f"; variants run (fastest measured per shape): {dispatch.describe()}" if dispatch else "")


def _energy_lines(study: Study) -> list[str]:
    settings = study.energy
    searched = "an objective" if "energy_uj" in study.objectives.metrics else (
        "a budget" if study.objectives.energy_budget_uj is not None else "recorded, not searched on")
    lines = ["### Energy", "", f"- {searched}: {settings.note}"]
    if settings.model == "accelerator":
        lines += [f"- energy model `accelerator`: {settings.source}; norms, softmax and GELU unpriced "
                  "(`docs/energy.md`)"]
    else:
        table = settings.table
        lines += [f"- energy model `op_counts`, unit costs `{table.name}`: {table.source}",
                  "- per op: " + ", ".join(f"{k} {v:g}" for k, v in sorted(table.ops.items())) + " pJ; memory: "
                  f"weights {table.dram_pj_per_byte:g} pJ/byte (DRAM, read once per image), activations "
                  f"{table.sram_pj_per_byte:g} pJ/byte (on-chip buffer, read and written by every op)"]
    return [*lines, ""]


def file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "unreadable"


def study_note(study: Study, ostudy: optuna.Study) -> str:
    """The study's note (see the module's text)."""
    data = study.data
    source = data.source + (f" ({data.images} images)" if data.source == "shapes" else "") + \
        (f" at {data.path}" if data.path else "")
    lines = [f"## {study.name}", "",
             f"- study file: `{study.path}` (sha256 `{file_hash(study.path)}`)",
             f"- model: `{study.model.name}` {json.dumps(study.model.to_dict()['kwargs'])}",
             f"- data: {source}; trials are chosen on the search split, the test split is reported",
             f"- space: {study.space.size():,} architectures of {study.space.depth} blocks",
             "", "### Latency", "",
             f"- predicted for device `{study.latency.device}` (TVM target `{study.latency.target}`, batch "
             f"{study.latency.batch_sizes[0]}); measurements in `{_redacted(study.latency.db)}`",
             *_predictor_lines(study), _tuning_line(study), "", *_pays_lines(study), *_energy_lines(study)]
    references = [(t.number, t.user_attrs[attr.REFERENCE], t) for t in ostudy.get_trials(deepcopy=False)
                  if t.user_attrs.get(attr.REFERENCE)]
    if references:
        lines += ["### Reference trials", ""]
        for number, name, trial in references:
            found = ""
            if trial.state == TrialState.COMPLETE and trial.user_attrs.get(attr.SEARCH_ACCURACY) is not None:
                a = attr.with_test_split(trial.user_attrs, ostudy.user_attrs, number)
                found = (f": search accuracy {a[attr.SEARCH_ACCURACY]:.4f}, test {a.get(attr.TEST_ACCURACY, math.nan):.4f}, "
                         f"{a[attr.LATENCY_MS]:.3g} ms predicted"
                         + (f", {a[attr.ENERGY_UJ]:.4g} µJ estimated" if a.get(attr.ENERGY_UJ) is not None else ""))
            lines.append(f"- trial {number}, {REFERENCES.get(name, name)} ({trial.state.name.lower()}){found}")
        lines.append("")
    lines += _refined_lines(study, ostudy)
    lines += ["### Reproduce", "", "```", f"nas run {study.path}", f"nas report {study.path}", "```", "",
              "Artifacts: each complete trial's ArchConfig file, and the report's charts and CSV on the study "
              f"(`{artifact_location(study)}`).", ""]
    return "\n".join(lines)


def _refined_lines(study: Study, ostudy: optuna.Study) -> list[str]:
    """The refined front, when the study was refined: which front ``nas export`` picks from, and the proxy's trust."""
    points = refined_points(ostudy, open_refine_study(study, create=False))
    if not points:
        return ["### Refined front", "", "Not refined: the front's accuracies are the search's "
                f"({'inherited from the supernet' if study.evaluation.supernet else 'short fine-tunes'}); "
                f"`nas refine {study.path}` trains its candidates for real.", ""]
    front = {id(p) for p in refined_front(points, front_metrics(ostudy))}
    told = trust(points)
    lines = ["### Refined front", "",
             f"`nas export --trial best|pareto` picks from the **refined** front: {len(points)} architectures "
             f"fine-tuned for real ({points[0].epochs} epochs, {points[0].seeds} seed(s); jobs in study "
             f"`{refine_study_name(study)}`). Proxy trust: {told.text}.", ""]
    if told.disagreement:
        lines += [f"- {told.disagreement}", ""]
    lines += ["| | inherited | refined search | refined test ± SE | predicted ms | measured ms | front |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in sorted(points, key=lambda p: -p.accuracy):
        lines.append(f"| {p.label} | {p.inherited:.4f} | {p.accuracy:.4f} | {p.test_text} | {p.latency_ms:.3g} | "
                     f"{_ms(p.measured_ms)} | {'yes' if id(p) in front else ''} |")
    return lines + [""]


def _redacted(url: str) -> str:
    return redact(url)


def publish_study(study: Study, ostudy: optuna.Study) -> bool:
    """Write the study note and the dashboard's objective names when they changed; True if the note was written."""
    names = [OBJECTIVE_NAMES.get(m, m) for m in study.objectives.metrics]
    if ostudy.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ostudy.set_metric_names(names)
    body = study_note(study, ostudy)
    if optuna_dashboard.get_note(ostudy) == body:
        return False
    optuna_dashboard.save_note(ostudy, body)
    return True


def publish_stored_study(study: Study) -> bool:
    """:func:`publish_study` for a study that may not be in its storage yet (then there is nothing to note)."""
    ostudy = _stored(study)
    return publish_study(study, ostudy) if ostudy is not None else False


__all__ = ["OBJECTIVE_NAMES", "REFERENCES", "architecture_table", "artifact_location", "artifact_store",
           "publish_stored_study", "publish_study", "publish_trial", "replace_study_artifacts", "study_note",
           "note_finetune", "trial_note", "upload"]


def serve(storage: Any, host: str, port: int, artifacts: Any = None) -> None:
    """Serve optuna-dashboard on ``storage`` (a URL or Optuna storage) at ``host:port`` until interrupted, with the
    trials' architecture files from ``artifacts`` (an artifact store, or None)."""
    optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=artifacts)
