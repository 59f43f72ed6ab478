"""``nas profile``, ``nas fit-latency`` and ``nas latency``: the latency model from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from latency_model.db import DEFAULT_URL
from search_spaces.config import ConfigError

from .study import Study

console = Console()


def _settings(args: argparse.Namespace, study: Study | None = None):
    """The study's latency settings with the command line's overrides (the whole study file is validated)."""
    return (study or Study.load(args.study)).latency_with(
        target=args.target, device=args.device, db=args.db, trials=getattr(args, "trials", None),
        batch_sizes=tuple(args.batch) if args.batch else None,
    )


def cmd_profile(args: argparse.Namespace) -> int:
    summary = run_profile(args)
    if summary.noisy:
        return 1
    console.print(f"next: nas fit-latency {args.study}")
    return 1 if summary.failed else 0


def run_profile(args: argparse.Namespace):
    """Measure what the table lacks for the study's space, with a progress bar; returns the profile's summary."""
    from latency_model.profile import profile

    from kernels.cache import cache_dir

    from .disk import ensure_database_writable, ensure_writable

    study = Study.load(args.study)
    space, settings = study.space, _settings(args, study)
    ensure_database_writable(settings.db, "latency.db")  # a full disk or read-only folder: said before any work
    ensure_writable(Path(args.cache) if args.cache else cache_dir(), "kernel cache (--cache, $SHIFTADD_CACHE)")
    console.print(
        f"profiling [bold]{args.study}[/] on device [bold]{settings.device}[/] ({settings.target}), "
        f"batch sizes {list(settings.batch_sizes)}, {settings.trials} tuning trials per kernel"
        + (" [yellow](untuned)[/]" if settings.trials == 0 else "")
        + (f", re-timing {'every row' if args.remeasure == 'all' else 'the rows marked noisy and the whole models'}"
           if args.remeasure else "")
    )
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("left"), TimeRemainingColumn(), console=console,
    )
    with progress:
        task = progress.add_task("starting", total=None)

        def on_start(job, index, total):
            progress.update(task, total=total, description=job.label[:60])

        def on_noisy(job, timing, attempt):
            final = attempt > settings.retimes
            progress.console.print(
                f"  [yellow]noisy[/] {job.label[:70]}: spread {timing.spread:.0%}, other processes used "
                f"{timing.contention:.0%} of the CPU" + (" - marked" if final else f" - timing it again (try "
                                                         f"{attempt + 1} of {settings.retimes + 1})"),
                highlight=False)

        summary = profile(
            space, settings, kernel_root=args.cache, tracker=args.rpc_tracker, device_key=args.device_key,
            remeasure=args.remeasure, on_start=on_start, on_done=lambda job, seconds: progress.advance(task),
            on_noisy=on_noisy,
        )
    if summary.start_contention > settings.max_contention:
        console.print(f"[yellow]warning:[/] other processes used {summary.start_contention:.0%} of the CPU when the "
                      f"profile started (load average {summary.load_average:.2f}): timings taken on a busy machine "
                      "are checked one by one", highlight=False)
    console.print(
        f"measured {len(summary.measured)}, already in the table {summary.skipped}, failed {len(summary.failed)}, "
        f"re-timed as noisy {len(summary.retimed)}, still noisy {len(summary.noisy)} "
        f"({summary.seconds:.0f} s); table: {settings.db}"
    )
    for label, reason in summary.failed:
        console.print(f"  [red]failed[/] {label}: {reason}")
    if summary.noisy:
        console.print(f"[red]{len(summary.noisy)} timing(s) stayed noisy and are marked[/] (another process competed "
                      f"for the CPU, or the repeats spread wider than {settings.max_spread:.0%}); `nas fit-latency` "
                      f"refuses them. On a quiet machine run: nas profile {args.study} --remeasure",
                      highlight=False)
    return summary


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit, check, and only then write the predictor; a check that fails writes nothing and exits 1."""
    from latency_model import db
    from latency_model.predictor import LOO, Predictor, PredictorRefused, check
    from latency_model.settings import LatencySettings

    from .disk import ensure_writable

    if args.study:
        settings = Study.load(args.study).latency_with(db=args.db, device=args.device)
        out = Path(args.out or settings.predictor)
        fix = f"nas profile {args.study} --remeasure"
    elif args.device and args.out:
        settings = LatencySettings(db=args.db or DEFAULT_URL, device=args.device)
        out = Path(args.out)
        fix = "nas profile STUDY --remeasure"
    else:
        raise ConfigError("", "give a study file, or --device and --out (and --db unless the default)")
    max_error = args.max_model_error if args.max_model_error is not None else settings.max_model_error
    ensure_writable(out.parent, "--out" if not args.study else "latency.predictor", need_mb=1)
    engine = db.connect(settings.db)
    rows = db.latest(engine, settings.device)
    if not rows:
        known = ", ".join(db.devices(engine)) or "none"
        raise ConfigError("latency.device" if args.study else "--device",
                          f"no measurements for device {settings.device!r} in {db.redact(settings.db)} "
                          f"(devices: {known}); run `nas profile` first", str(args.study) if args.study else None)
    models = db.model_rows(engine, settings.device)
    predictor, accuracy = Predictor.fit(rows, settings.device, holdout=args.holdout, seed=args.seed,
                                        meta=db.device_info(engine, settings.device), models=models)
    table = Table(title=f"accuracy of the fitted op models on the {args.holdout:.0%} of shapes held out, and of the "
                        "whole-model totals (in sample, and each model left out of the fit)", title_justify="left")
    for column in ("op", "held out", "RMSE ms", "MAPE", "within ±5 %", "within ±10 %"):
        table.add_column(column)
    for name, acc in sorted(accuracy.items(), key=lambda kv: ("|" not in kv[0], kv[0])):
        table.add_row(name, str(acc.count), f"{acc.rmse_ms:.4f}", f"{acc.mape:.1%}", f"{acc.within_5pct:.0%}",
                      f"{acc.within_10pct:.0%}")
    console.print(table)
    try:
        gate = check(rows, models, predictor.model_checks, max_error, fix, allow_noisy=args.allow_noisy)
    except PredictorRefused as e:
        console.print(f"[red]refused:[/] {e}; {out} was not written", highlight=False)
        return 1
    predictor.meta["gate"] = gate
    path = predictor.save(out)
    if gate["checked"]:
        console.print(f"whole models out of sample: {gate['model_within_10pct']:.0%} within ±10 %, MAPE "
                      f"{gate['model_mape']:.1%} (accepted up to {max_error:.0%}), {accuracy[LOO].count} models")
    else:
        console.print("[yellow]no whole-model timings: the composition is not calibrated and the predictor is "
                      "unchecked[/] (latency.calibration: 0)")
    if gate["noisy_allowed"]:
        console.print(f"[yellow]{gate['noisy_allowed']} timing(s) marked noisy were fitted (--allow-noisy)[/]")
    console.print(f"fitted on {len(rows)} measurements of {settings.device}; wrote {path}")
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    from latency_model.predictor import Predictor
    from search_spaces import ArchConfig

    settings = _settings(args)
    config = ArchConfig.load(args.config)
    predictor = Predictor.load(args.predictor or settings.predictor, device=settings.device,
                               allow_other_device=args.allow_other_device)
    batch = args.batch[0] if args.batch else settings.batch_sizes[0]
    measured, loads = None, None
    if args.measure:
        from kernels.runtime import KernelSet, to_kernels
        from latency_model.ops import ModelDims
        from latency_model.predictor import router_loads
        from latency_model.timing import time_model
        from search_spaces import build_model

        model = to_kernels(build_model(config), KernelSet(settings.target, settings.trials, args.cache))
        measured = time_model(model, batch, ModelDims.of(config.model).img, repeats=settings.repeats).median_ms
        loads = router_loads(model)  # compare like with like: MoE blocks at the split this model's routers made
    prediction = predictor.predict(config, batch, moe_loads=loads)
    table = Table(title=f"architecture {config.id}, batch {batch}, device {predictor.device}", title_justify="left")
    table.add_column("block")
    table.add_column("choices")
    table.add_column("predicted ms", justify="right")
    table.add_column("breakdown")
    for i, (block, parts) in enumerate(zip(config.blocks, prediction.blocks)):
        detail = ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
        table.add_row(str(i), block.describe(), f"{sum(parts.values()):.3f}", detail)
    table.add_row("-", "patch embed, tokens, final norm, head", f"{prediction.fixed_ms:.3f}", "")
    console.print(table)
    line = f"predicted {prediction.total_ms:.3f} ms"
    if measured is not None:
        line += f", measured {measured:.3f} ms (ratio {prediction.total_ms / measured:.2f})"
    console.print(line)
    if args.json:
        print(json.dumps({"config_id": config.id, "batch": batch, "device": predictor.device,
                          "predicted_ms": prediction.total_ms, "measured_ms": measured,
                          "breakdown": prediction.to_dict()}))
    return 0


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

    latency = add("latency", cmd_latency, "predict (and optionally measure) the latency of one architecture")
    study_options(latency)
    latency.add_argument("--config", required=True, help="ArchConfig file (YAML or JSON)")
    latency.add_argument("--predictor", help="predictor file (default: the study's)")
    latency.add_argument("--allow-other-device", action="store_true",
                         help="use a predictor fitted for another device")
    latency.add_argument("--measure", action="store_true",
                         help="also run the model on the kernels here and measure its forward latency")
    latency.add_argument("--trials", type=non_negative_int, help="tuning trials for kernels run with --measure")
    latency.add_argument("--json", action="store_true", help="end with one JSON line: predicted_ms, measured_ms, ...")
