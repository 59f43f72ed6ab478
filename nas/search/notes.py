"""The text of optuna-dashboard's notes, in Markdown, written from a trial's user attributes and the study:

- **Trial note**: the architecture as a table with the predicted latency of each block's parts, the search and test
  accuracy, the parameters and the share of shift weights, and what the trial is when it is a reference or a
  duplicate (or why it failed).
- **Study note**: the study file (name, content hash), model and data, the device and target the latencies are for,
  the predictor with its held-out accuracy, the kernels' tuning state, the reference trials, the energy model, the
  refined front and the command that reproduces the search.

:mod:`.dashboard` writes them to the study's storage.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from latency_model import db
from latency_model.db import redact
from latency_model.energy import NOTE as ENERGY_NOTE
from latency_model.prediction import LOO
from latency_model.predictor import Predictor, PredictorError
from latency_model.profile import table_dispatch
from search_spaces import ArchConfig

from .. import attributes as attr
from ..study import Study
from ..study_latency import profiled_trials, where_it_pays
from .refined import refined_front, refined_points, trust
from .report import front_metrics
from .storage import open_refine_study, refine_study_name

# What each reference trial is, for its note and the study's.
REFERENCES = {"dense": "the all-dense model (the teacher's architecture)",
              "paper": "the paper's allocation: additive attention and a dense + shift MoE in every block"}


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
             f"{study.latency.batch_sizes[0]}); measurements in `{redact(study.latency.db)}`",
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
              f"(`{study.artifact_location}`).", ""]
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
