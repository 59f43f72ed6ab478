"""``nas profile``, ``nas fit-latency`` and ``nas latency``: the latency model from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from latency_model.db import DEFAULT_URL
from latency_model.keys import is_fitted_model_key
from latency_model.prediction import LOO
from search_spaces import ArchConfig

from .. import pipeline
from ..study import Study
from .output import PacedLines, console


def _profile_options(args: argparse.Namespace) -> pipeline.ProfileOptions:
    return pipeline.ProfileOptions(target=args.target, device=args.device, db=args.db,
                                   trials=getattr(args, "trials", None),
                                   batch_sizes=tuple(args.batch) if args.batch else None, kernel_cache=args.cache,
                                   rpc_tracker=getattr(args, "rpc_tracker", None),
                                   device_key=getattr(args, "device_key", None),
                                   remeasure=getattr(args, "remeasure", None))


def profile_header(study: Study, options: pipeline.ProfileOptions) -> None:
    settings = options.settings(study)
    console.print(
        f"profiling [bold]{study.path}[/] on device [bold]{settings.device}[/] ({settings.target}), "
        f"batch sizes {list(settings.batch_sizes)}, {settings.runtime} runtime, {settings.trials} tuning trials per "
        "kernel"
        + (" [yellow](untuned)[/]" if settings.trials == 0 else "")
        + (f", re-timing {'every row' if options.remeasure == 'all' else 'the rows marked noisy and the whole models'}"
           if options.remeasure else "")
    )


class ProfileView:
    """The profile's progress bar and its lines, as a context (``nas profile``, ``nas run``)."""

    def __init__(self, study: Study, options: pipeline.ProfileOptions) -> None:
        self.settings = options.settings(study)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("left"), TimeRemainingColumn(), console=console,
        )
        self.lines = PacedLines(self.progress.console, "profiled")
        self.total: int | None = None
        self.done = 0

    def __enter__(self) -> "ProfileView":
        self.progress.__enter__()
        self.task = self.progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def on_start(self, job, index: int, total: int) -> None:
        self.progress.update(self.task, total=total, description=job.label[:60])
        self.total = total

    def on_done(self, job, seconds: float) -> None:
        self.progress.advance(self.task)
        self.done += 1
        self.lines.update(self.done, self.total, job.label[:60])

    def on_noisy(self, job, timing, attempt: int) -> None:
        final = attempt > self.settings.retimes
        self.progress.console.print(
            f"  [yellow]noisy[/] {job.label[:70]}: spread {timing.spread:.0%}, other processes used "
            f"{timing.contention:.0%} of the CPU" + (" - marked" if final else f" - timing it again (try "
                                                     f"{attempt + 1} of {self.settings.retimes + 1})"),
            highlight=False)

    def on_wait(self) -> None:
        self.progress.console.print(f"another process is profiling into this table for {self.settings.device}: "
                                    "waiting for it, then measuring what it left", highlight=False)


def print_profile(study: Study, options: pipeline.ProfileOptions, summary) -> None:
    """What a profile measured, what failed or stayed noisy, and where each choice pays."""
    settings = options.settings(study)
    if summary.start_contention > settings.max_contention:
        console.print(f"[yellow]warning:[/] other processes used {summary.start_contention:.0%} of the CPU when the "
                      f"profile started (load average {summary.load_average:.2f}): timings taken on a busy machine "
                      "are checked one by one", highlight=False)
    console.print(
        f"measured {len(summary.measured)}, already in the table {summary.skipped}, failed {len(summary.failed)}, "
        f"re-timed as noisy {len(summary.retimed)}, still noisy {len(summary.noisy)} "
        f"({summary.seconds:.0f} s" + (f", of which {summary.first_calls_s:.0f} s compiling (first calls)"
                                        if settings.compiled else "") + f"); table: {settings.db}"
    )
    if summary.dispatch:
        console.print(f"kernel variants run (the fastest measured per shape): {summary.dispatch}", highlight=False)
    for label, reason in summary.failed:
        console.print(f"  [red]failed[/] {label}: {reason}")
    if summary.noisy:
        console.print(f"[red]{len(summary.noisy)} timing(s) stayed noisy and are marked[/] (another process competed "
                      f"for the CPU, or the repeats spread wider than {settings.max_spread:.0%}); `nas fit-latency` "
                      f"refuses them. On a quiet machine run: nas profile {study.path} --remeasure",
                      highlight=False)
    if options.rpc_tracker is None:  # a remote profile times kernels only: there are no module parts to price
        show_pays(pipeline.where_it_pays(study, settings, from_table=True), study)


def show_profile(study: Study, options: pipeline.ProfileOptions):
    """Profile with a progress bar and a line per noisy timing; returns the profile's summary."""
    profile_header(study, options)
    with ProfileView(study, options) as view:
        summary = pipeline.profile(study, options, on_start=view.on_start, on_done=view.on_done,
                                   on_noisy=view.on_noisy, on_wait=view.on_wait)
    print_profile(study, options, summary)
    return summary


def show_pays(pays, study: Study) -> None:
    """Where each choice pays (:mod:`latency_model.pays`) as a table, and the line that warns when none does."""
    if pays is None or not pays.ratios:
        return
    table = Table(title=f"where each choice pays on {pays.device}, batch {pays.batch}: each choice alone in a dense "
                        "block, its part's priced time against dense's (below 1.0: faster than dense)",
                  title_justify="left")
    for column, justify in (("blocks", "left"), ("slot", "left"), ("choice", "left"), ("ms", "right"),
                            ("dense ms", "right"), ("x dense", "right")):
        table.add_column(column, justify=justify)
    for r in pays.ratios:
        colour = "green" if r.pays else "red"
        table.add_row(r.where, r.slot, r.choice, f"{r.ms:.4f}", f"{r.dense_ms:.4f}", f"[{colour}]{r.ratio:.2f}[/]")
    console.print(table)
    for line in pays.unpriced[:3]:
        console.print(f"  [yellow]not priced[/] {line}", highlight=False)
    show_nothing_pays(pays, study)


def show_nothing_pays(pays, study: Study) -> None:
    """The one line saying that no choice beats dense anywhere, when latency is searched on and none does."""
    objectives = study.objectives
    if pays is None or ("latency_ms" not in objectives.metrics and objectives.latency_budget_ms is None):
        return
    line = pays.nothing_pays(objectives.metrics)
    if line:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)  # its [metrics] are not markup


def cmd_profile(args: argparse.Namespace) -> int:
    summary = show_profile(Study.load(args.study), _profile_options(args))
    if summary.noisy:
        return 1
    console.print(f"next: nas fit-latency {args.study}")
    return 1 if summary.failed else 0


def show_fit(study: Study | None, options: pipeline.FitOptions) -> pipeline.FitResult:
    """Fit with the accuracy table, then say whether the predictor was written or refused."""
    fit = pipeline.fit_latency(study, options)
    print_fit(fit, options)
    return fit


def print_fit(fit: pipeline.FitResult, options: pipeline.FitOptions) -> None:
    """The accuracy table of a fit, and whether its predictor was written or refused."""
    table = Table(title=f"accuracy of the fitted op models on the {options.holdout:.0%} of shapes held out, and of "
                        "the whole-model totals (in sample, and each model left out of the fit)", title_justify="left")
    for column in ("op", "held out", "RMSE ms", "MAPE", "within ±5 %", "within ±10 %"):
        table.add_column(column)
    for name, acc in sorted(fit.accuracy.items(), key=lambda kv: (not is_fitted_model_key(kv[0]), kv[0])):
        table.add_row(name, str(acc.count), f"{acc.rmse_ms:.4f}", f"{acc.mape:.1%}", f"{acc.within_5pct:.0%}",
                      f"{acc.within_10pct:.0%}")
    console.print(table)
    if fit.refused is not None:
        console.print(f"[red]refused:[/] {fit.refused.detail}; {fit.out} was not written", highlight=False)
        return
    gate = fit.gate
    if gate["checked"]:
        console.print(f"whole models out of sample: {gate['model_within_10pct']:.0%} within ±10 %, MAPE "
                      f"{gate['model_mape']:.1%} (accepted up to {fit.max_model_error:.0%}), "
                      f"{fit.accuracy[LOO].count} models")
    else:
        console.print("[yellow]no whole-model timings: the composition is not calibrated and the predictor is "
                      "unchecked[/] (latency.calibration: 0)")
    for (family, batch), factors in sorted(fit.predictor.in_situ.items()):
        shown = ", ".join(f"{key} {factor:.2f}x" for key, factor in factors.items() if ":" in key)
        console.print(f"parts in situ ({family}, batch {batch}), over their price alone: {shown}", highlight=False)
    if gate["noisy_allowed"]:
        console.print(f"[yellow]{gate['noisy_allowed']} timing(s) marked noisy were fitted (--allow-noisy)[/]")
    console.print(f"fitted on {fit.rows} measurements of {fit.settings.device}; wrote {fit.path}")


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit, check, and only then write the predictor; a check that fails writes nothing and exits 1."""
    options = pipeline.FitOptions(db=args.db, device=args.device, out=args.out, holdout=args.holdout, seed=args.seed,
                                  max_model_error=args.max_model_error, allow_noisy=args.allow_noisy)
    fit = show_fit(Study.load(args.study) if args.study else None, options)
    return 1 if fit.refused is not None else 0


def cmd_latency(args: argparse.Namespace) -> int:
    options = pipeline.LatencyOptions(_profile_options(args), args.predictor, args.allow_other_device, args.measure)
    rep = pipeline.latency(Study.load(args.study), ArchConfig.load(args.config), options)
    prediction = rep.prediction
    table = Table(title=f"architecture {rep.config.id}, batch {rep.batch}, device {rep.device}", title_justify="left")
    table.add_column("block")
    table.add_column("choices")
    table.add_column("predicted ms", justify="right")
    table.add_column("breakdown")
    for i, (block, parts) in enumerate(zip(rep.config.blocks, prediction.blocks)):
        detail = ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
        table.add_row(str(i), block.describe(), f"{sum(parts.values()):.3f}", detail)
    table.add_row("-", "patch embed, tokens, final norm, head", f"{prediction.fixed_ms:.3f}", "")
    console.print(table)
    line = f"predicted {prediction.total_ms:.3f} ms"
    if rep.measured_ms is not None:
        line += (f", measured {rep.measured_ms:.3f} ms in the {rep.runtime} runtime (predicted / measured "
                 f"{prediction.total_ms / rep.measured_ms:.2f})")
    console.print(line)
    if rep.dense_ms is not None:
        measured_rel, predicted_rel = rep.measured_vs_dense, rep.predicted_vs_dense
        console.print(f"relative to the dense model timed in turn with it ({rep.dense_ms:.3f} ms): measured "
                      f"{measured_rel:.3f}x, predicted {predicted_rel:.3f}x (predicted / measured "
                      f"{predicted_rel / measured_rel:.2f})")
    energy = _energy(rep)
    if args.json:
        print(json.dumps({"config_id": rep.config.id, "batch": rep.batch, "device": rep.device,
                          "predicted_ms": prediction.total_ms, "measured_ms": rep.measured_ms,
                          "measured_vs_dense": rep.measured_vs_dense, "predicted_vs_dense": rep.predicted_vs_dense,
                          "breakdown": prediction.to_dict(), **energy}))
    return 0


def _energy(rep: pipeline.LatencyReport) -> dict:
    """Print the architecture's energy estimate (one image, MoE experts at equal shares) under the study's energy
    model, and the other model's figure beside it; return the JSON keys: ``energy_uj``, ``energy_breakdown`` (with
    the model named), ``energy_models`` (both models' totals), ``energy_layers`` (the accelerator model's layers,
    under it), ``op_counts`` and ``bytes`` (``{}`` where a primitive cannot be priced)."""
    energy = rep.energy
    if energy is None:
        console.print(f"[yellow]no energy estimate[/]: {rep.energy_error}")
        return {}
    console.print(f"estimated energy {energy.total_uj:.4g} µJ per image (compute {energy.compute_uj:.4g} + memory "
                  f"{energy.memory_uj:.4g}; energy model {energy.model}, {energy.table}): {energy.note}")
    for other, total in rep.energy_models.items():
        if other != energy.model:
            console.print(f"  under energy model {other}: {total:.4g} µJ (docs/energy.md: what each assumes)")
    counts = energy.counts.to_dict()
    return {"energy_uj": energy.total_uj, "energy_breakdown": energy.to_dict(), "energy_models": rep.energy_models,
            **({"energy_layers": energy.layer_rows()} if energy.layers else {}), "op_counts": counts["ops"],
            "bytes": {"weights": counts["weight_bytes"], "activations": counts["activation_bytes"]}}


def add_commands(add, positive_int, non_negative_int) -> None:
    def study_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("study", help="study file (YAML); its latency: section gives the defaults")
        parser.add_argument("--target", help="cpu, cuda, cuda:sm_XX or a TVM target dict as JSON (default: study's)")
        parser.add_argument("--device", help="device name in the measurement table (default: from the target)")
        parser.add_argument("--db", help=f"measurement database URL (default: study's, else {DEFAULT_URL})")
        parser.add_argument("--batch", type=positive_int, action="append", help="batch size (repeatable)")
        parser.add_argument("--cache", type=Path, default=None, help="kernel cache folder (default: $SHIFTADD_CACHE)")

    profile = add("profile", cmd_profile, "measure every kernel and module shape the study's search space can produce")
    study_options(profile)
    profile.add_argument("--trials", type=non_negative_int, help="MetaSchedule trials per kernel (default: study's)")
    profile.add_argument("--rpc-tracker", metavar="HOST:PORT", help="time kernels on a remote device (kernels only)")
    profile.add_argument("--device-key", metavar="KEY", help="the remote device's key at the tracker")
    profile.add_argument("--remeasure", nargs="?", const="noisy", choices=("noisy", "all"),
                         help="re-time rows already in the table: noisy (the default when given without a value): "
                              "the rows marked noisy and the whole models; all: every row (a new row each; the "
                              "newest is used, none is overwritten)")

    fit = add("fit-latency", cmd_fit, "fit the latency predictor on the measurement table and report its accuracy")
    fit.add_argument("study", nargs="?", help="study file: its latency: section gives --db, --device and --out")
    fit.add_argument("--db", help=f"measurement database URL (default: the study's, else {DEFAULT_URL})")
    fit.add_argument("--device", help="device whose measurements to fit (default: the study's)")
    fit.add_argument("--out", type=Path, help="predictor file to write, JSON (default: the study's predictor path)")
    fit.add_argument("--holdout", type=float, default=0.2, help="fraction of shapes held out to score the fit")
    fit.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    fit.add_argument("--max-model-error", type=float, metavar="FRACTION",
                     help="refuse when the whole-model error out of sample (leave-one-out MAPE) is larger "
                          "(default: the study's latency.max_model_error, 0.5)")
    fit.add_argument("--allow-noisy", action="store_true",
                     help="fit even though some timings are marked noisy (said in the output and the file)")

    latency = add("latency", cmd_latency, "predict (and optionally measure) the latency of one architecture, and "
                                          "estimate its energy per image")
    study_options(latency)
    latency.add_argument("--config", required=True, help="ArchConfig file (YAML or JSON)")
    latency.add_argument("--predictor", help="predictor file (default: the study's)")
    latency.add_argument("--allow-other-device", action="store_true",
                         help="use a predictor fitted for another device")
    latency.add_argument("--measure", action="store_true",
                         help="also run the model on the kernels here and measure its forward latency, in turn "
                              "with the dense model of the same shape (the ratio of the two is what a drifting "
                              "machine keeps)")
    latency.add_argument("--trials", type=non_negative_int,
                         help="tuning trials for kernels run with --measure (default: as the table was profiled)")
    latency.add_argument("--json", action="store_true", help="end with one JSON line: predicted_ms, measured_ms, "
                                                             "energy_uj, op_counts (batch 1, by '<op>.<type>'), ...")
