"""``nas validate``, ``pretrain``, ``search``, ``dashboard``, ``export``, ``finetune``, ``report`` and ``run``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from search_spaces.config import ConfigError

from .study import Study

console = Console()


def _load(args: argparse.Namespace) -> Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress display says what matters
    return Study.load(args.study, storage=getattr(args, "storage", None))


@contextmanager
def _in_study(study: Study) -> Iterator[None]:
    """Errors about a study's files and settings name the study file too."""
    try:
        yield
    except ConfigError as e:
        raise (e.in_file(study.path) if e.source is None else e) from None


def _data(study: Study):
    from latency_model.ops import ModelDims

    from . import data

    dims = ModelDims.of(study.model)
    return data.load(study.data, dims.img, dims.classes)


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a study file without running it: every section, the model, the data and the space."""
    from latency_model.db import redact

    from latency_model.predictor import Predictor, PredictorError

    from .teacher import load_teacher

    from .study import create_pruner, create_sampler

    study = _load(args)
    with _in_study(study):
        create_sampler(study)  # their arguments are checked when built
        create_pruner(study)
        splits = _data(study)
        if study.checkpoint is not None:
            load_teacher(study)  # the checkpoint reads and fits the model
        if Path(study.latency.predictor).is_file():
            try:
                Predictor.load(study.latency.predictor, device=study.latency.device)  # fitted for this device
            except PredictorError as e:
                raise ConfigError("latency.predictor", str(e)) from None
    console.print(f"[green]ok[/] {study.path}: study {study.name!r}")
    console.print(f"  model {study.model.name}, {study.space.depth} blocks, {study.space.size():,} architectures")
    console.print(f"  data {study.data.source}: {len(splits.train)} train / {len(splits.search)} search / "
                  f"{len(splits.test)} test images")
    console.print(f"  objectives {list(study.objectives.metrics)}"
                  + (f", latency budget {study.objectives.latency_budget_ms} ms"
                     if study.objectives.latency_budget_ms else ""))
    console.print(f"  budget {study.budget.n_trials} trials x {study.budget.epochs} epochs "
                  f"({study.budget.steps_per_epoch or 'full'} steps each); sampler {study.sampler.name}, "
                  f"pruner {study.pruner.name}")
    console.print(f"  storage {redact(study.storage)}; teacher {study.teacher_path}; "
                  f"predictor {study.latency.predictor}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .teacher import pretrain

    study = _load(args)
    with _in_study(study):
        splits = _data(study)
    epochs = study.budget.pretrain_epochs
    with Progress(TextColumn("pretraining the dense teacher"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("", total=epochs)

        def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
            progress.update(task, advance=1, description=f"loss {loss:.3f}, search accuracy {accuracy:.3f}")

        result = pretrain(study, splits.train, splits.search, force=args.force, on_epoch=on_epoch)
    if result.cached:
        console.print(f"teacher already trained for this study: {result.path} (search accuracy "
                      f"{result.search_accuracy:.3f}); --force retrains")
    else:
        console.print(f"trained the teacher for {result.epochs} epochs in {result.seconds:.0f} s: search accuracy "
                      f"{result.search_accuracy:.3f}; wrote {result.path}")
    return 0


def _run_search(study: Study, n_trials: int | None, workers: int, timeout_s: float | None) -> None:
    from .search import search

    total = n_trials or study.budget.n_trials
    shown_failures: set[int] = set()
    console.print(f"search [bold]{study.name}[/]: {total} trials, {workers} worker process(es), "
                  f"{study.budget.epochs} epochs of {study.budget.steps_per_epoch or 'all'} steps per trial")
    with Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("starting workers", total=total)

        last_line = ""

        def on_progress(p) -> None:
            nonlocal last_line
            c = p.counts
            line = (f"done {c.get('COMPLETE', 0)}, running {c.get('RUNNING', 0)}, pruned {c.get('PRUNED', 0)}, "
                    f"failed {c.get('FAIL', 0)}  {p.best}")
            progress.update(task, completed=min(p.finished, total), description=line)
            if not console.is_terminal and line != last_line:  # a log file gets one line per change instead
                progress.console.print(f"trials {min(p.finished, total)}/{total}: {line}")
                last_line = line
            for number, reason in p.failures:
                if number not in shown_failures:
                    shown_failures.add(number)
                    progress.console.print(f"[red]trial {number} failed[/]: {reason.splitlines()[0][:200]}")

        summary = search(study, n_trials, workers, timeout_s, on_progress=on_progress)
    ran = summary.after.finished - summary.before.finished
    console.print(f"{ran} trial(s) finished in this run ({summary.seconds:.0f} s), {summary.after.finished} in the "
                  f"study; {summary.after.best}")


def _run_ray_search(study: Study, args: argparse.Namespace) -> None:
    from .ray_search import search

    where = f"the Ray cluster at {args.ray_address}" if args.ray_address else "a local Ray"
    console.print(f"search [bold]{study.name}[/] on {where}: up to {args.workers} concurrent trial(s), "
                  f"{args.cpus_per_trial} CPU and {args.gpus_per_trial} GPU each")
    summary = search(study, args.n_trials, args.workers, args.ray_address, args.cpus_per_trial,
                     args.gpus_per_trial, on_trial=lambda tid, state: console.print(f"  ray trial {tid}: {state}"),
                     timeout_s=getattr(args, "timeout", None))
    console.print(f"{summary.ran} trial(s) finished in this run ({summary.seconds:.0f} s), {summary.finished} in "
                  "the study")


def cmd_search(args: argparse.Namespace) -> int:
    study = _load(args)
    if args.backend == "ray":
        _run_ray_search(study, args)
    else:
        if args.ray_address:
            raise ConfigError("--ray-address", "only with --backend ray")
        _run_search(study, args.n_trials, args.workers, args.timeout)
    console.print(f"next: nas report {args.study}   |   nas dashboard {args.study}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from latency_model.db import redact

    from .search import storage_of

    if not (args.study or args.storage):
        raise ConfigError("", "give a study file or --storage URL")
    url = args.storage or Study.load(args.study).storage
    storage = storage_of(url)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] serving on {args.host}: anyone who can reach this machine can read and "
                      "edit the studies; optuna-dashboard has no authentication")
    console.print(f"optuna-dashboard for {redact(url)} at [bold]http://{args.host}:{args.port}/[/] (Ctrl-C stops it)",
                  highlight=False)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


def _open(study: Study):
    from .search import open_study

    return open_study(study, create=False)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    study = _load(args)
    paths = export(study, _open(study), args.trial, args.out)
    for path in paths:
        console.print(f"wrote {path}")
    console.print(f"next: nas finetune {paths[0]} --out {args.out / 'finetuned'}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .export import finetune, read_export

    config, origin = read_export(args.config)
    study_file = args.study or origin.get("study_file")
    if not study_file:
        raise ConfigError("provenance.study_file", "this config names no study; give --study STUDY.yaml",
                          str(args.config))
    study = Study.load(study_file)
    epochs = args.epochs or study.budget.finetune_epochs
    with Progress(TextColumn(f"fine-tuning {config.id}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("", total=epochs)
        result = finetune(study, config, epochs, args.out, measure=not args.no_measure, origin=origin,
                          on_epoch=lambda e, acc: progress.update(task, advance=1,
                                                                  description=f"search acc {acc:.3f}"))
    line = (f"test accuracy {result.test_accuracy:.4f} ± {result.test_se:.4f} (1 SE), search accuracy "
            f"{result.search_accuracy:.4f}, predicted latency {result.predicted_ms:.3f} ms")
    if result.measured_ms is not None:
        line += f", measured {result.measured_ms:.3f} ms on the kernels"
    console.print(line)
    console.print(f"wrote {result.weights}, {args.out / 'arch.yaml'}, {args.out / 'result.json'}")
    console.print(f"rebuild: nas.checkpoints.load_model('{args.out / 'arch.yaml'}', '{result.weights}')")
    return 0


def _print_front(rep) -> None:
    table = Table(title="Pareto front, chosen on search accuracy vs predicted latency; test accuracy ± 1 SE is "
                        "what to report", title_justify="left")
    for column in ("trial", "search acc", "test acc ± SE", "latency ms", "architecture"):
        table.add_column(column)
    for p in rep.front:
        table.add_row(p.label, f"{p.accuracy:.4f}", p.test_text, f"{p.latency_ms:.3f}", "; ".join(
            f"{i}:{b.describe()}" for i, b in enumerate(p.config.blocks)))
    console.print(table)
    for p in rep.points:
        if p.reference and p not in rep.front:
            console.print(f"reference {p.reference}: search accuracy {p.accuracy:.4f}, test {p.test_text}, "
                          f"{p.latency_ms:.3f} ms (not on the front)")


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    from .disk import ensure_writable

    study = _load(args)
    out = ensure_writable(args.out or study.folder / "runs" / study.name / "report", "--out", need_mb=1)
    rep = report(_open(study), out, f"{study.name}: {study.model.name} on {study.data.source}, "
                                    f"{study.latency.device}")
    _print_front(rep)
    console.print("wrote " + ", ".join(str(f) for f in rep.files))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """profile -> fit-latency -> pretrain -> search -> report -> export best, each step skipped when done."""
    from latency_model.predictor import Predictor, PredictorError

    from . import latency_commands
    from .export import export
    from .report import report
    from .teacher import is_pretrained

    from .disk import ensure_database_writable, ensure_writable

    study = _load(args)
    started = time.perf_counter()
    out = args.out or study.folder / "runs" / study.name
    settings = study.latency
    # every place the steps write to, checked before the first step: not a full disk found at step 4
    ensure_database_writable(settings.db, "latency.db")
    ensure_writable(Path(settings.predictor).parent, "latency.predictor", need_mb=1)
    if study.checkpoint is None:  # pretrain writes the teacher next to the study
        ensure_writable(study.teacher_path.parent, "model.checkpoint")
    ensure_database_writable(study.storage, "storage")
    ensure_writable(out, "--out")
    trials = settings.trials if args.kernel_trials is None else args.kernel_trials
    # Profiling what the table already holds is a quick no-op, and it catches a space with shapes the table lacks
    # (another study's predictor file in the same folder, shapes that failed last time).
    console.print(f"[bold]1/6 profile[/] kernels and modules of the space on {settings.device}, {trials} tuning "
                  "trials per kernel" + (" (untuned default schedules: quick, slower kernels)" if trials == 0
                                         else ""))
    ns = argparse.Namespace(study=args.study, target=None, device=None, db=None, batch=None, cache=None,
                            trials=trials, rpc_tracker=None, device_key=None, remeasure=None)
    profiled = latency_commands.run_profile(ns)
    if profiled.noisy:
        console.print("[red]stopped before the search:[/] a search priced by noisy timings optimises a number no "
                      "machine produces", highlight=False)
        return 1
    if profiled.failed:
        console.print(f"[yellow]{len(profiled.failed)} shape(s) could not be measured[/]: the predictor prices them "
                      "with its fitted model; the next `nas run` or `nas profile` tries them again")
    try:
        up_to_date = not profiled.measured and Predictor.load(settings.predictor, device=settings.device) is not None
    except PredictorError:  # missing, unreadable, or fitted for another device
        up_to_date = False
    if up_to_date:
        console.print(f"[dim]2/6 latency predictor: {settings.predictor} (up to date)[/]")
    else:
        console.print("[bold]2/6 fit-latency[/]")
        fitted = latency_commands.cmd_fit(argparse.Namespace(study=args.study, db=None, device=None, out=None,
                                                              holdout=0.2, seed=0, max_model_error=None,
                                                              allow_noisy=False))
        if fitted != 0:
            console.print("[red]stopped before the search:[/] the predictor did not pass its check (above)")
            return 1
    if study.checkpoint is None and not is_pretrained(study):
        console.print("[bold]3/6 pretrain[/] the dense teacher")
        cmd_pretrain(argparse.Namespace(study=args.study, storage=args.storage, force=False))
    else:
        console.print(f"[dim]3/6 teacher: {study.teacher_path} (cached)[/]")
    console.print("[bold]4/6 search[/]")
    if args.backend == "ray":
        _run_ray_search(study, args)
    else:
        _run_search(study, args.n_trials, args.workers, None)
    console.print("[bold]5/6 report[/]")
    ostudy = _open(study)
    rep = report(ostudy, out / "report", f"{study.name}: {study.model.name} on {study.data.source}, "
                                         f"{study.latency.device}")
    _print_front(rep)
    console.print("[bold]6/6 export[/] the best trial")
    paths = export(study, ostudy, "best", out / "best")
    console.print(f"\ndone in {time.perf_counter() - started:.0f} s.")
    console.print(f"  report:    {', '.join(str(f) for f in rep.files)}")
    console.print(f"  best:      {paths[0]}")
    console.print(f"  dashboard: nas dashboard {args.study}   (then open http://127.0.0.1:8080/)")
    console.print(f"  finetune:  nas finetune {paths[0]} --out {out / 'finetuned'}")
    return 0


class _Once(argparse.Action):
    """An option that may be given once (argparse would silently keep the last)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, f"_{self.dest}_given", False):
            parser.error(f"{option_string} may be given once (got {getattr(namespace, self.dest)!r} and {values!r})")
        setattr(namespace, f"_{self.dest}_given", True)
        setattr(namespace, self.dest, values)


def add_commands(add, positive_int, non_negative_int) -> None:
    def study_arg(parser: argparse.ArgumentParser, storage: bool = True) -> None:
        parser.add_argument("study", type=Path, help="study file (YAML), e.g. studies/quickstart.yaml")
        if storage:
            parser.add_argument("--storage", help="Optuna storage URL (default: the study's, "
                                                  "else sqlite:///<study folder>/<name>.db)")

    validate = add("validate", cmd_validate, "check a study file (every section, the model, the data) without "
                                             "running anything")
    study_arg(validate, storage=False)

    pretrain = add("pretrain", cmd_pretrain, "train the dense teacher on the study's data (cached next to the study)")
    study_arg(pretrain, storage=False)
    pretrain.add_argument("--force", action="store_true", help="retrain even if the teacher file is up to date")

    def search_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--n-trials", type=positive_int, help="finished trials to reach (default: the study's "
                                                                  "budget.n_trials); a re-run continues up to it")
        parser.add_argument("--workers", type=positive_int, default=1,
                            help="optuna backend: local worker processes sharing the storage (CPU threads are split "
                                 "between them); ray backend: trials run at once (default: 1)")
        parser.add_argument("--backend", choices=("optuna", "ray"), default="optuna",
                            help="optuna: local processes (default); ray: Ray Tune trials, on a local Ray or a cluster")
        parser.add_argument("--ray-address", metavar="auto|HOST:PORT",
                            help="join this Ray cluster (default: start a light local Ray for this search)")
        parser.add_argument("--cpus-per-trial", type=float, default=1.0,
                            help="ray: CPUs reserved per trial; torch and TVM threads are capped to it (default: 1)")
        parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="ray: GPUs per trial (default: 0)")

    search = add("search", cmd_search, "run or continue the study's search (local worker processes, or Ray Tune "
                                        "with --backend ray)")
    study_arg(search)
    search_options(search)
    search.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")

    dashboard = add("dashboard", cmd_dashboard, "serve optuna-dashboard for a study's storage")
    dashboard.add_argument("study", type=Path, nargs="?", help="study file whose storage to show")
    dashboard.add_argument("--storage", help="storage URL instead of a study file")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine "
                                                               "only; 0.0.0.0 exposes it to the network)")
    dashboard.add_argument("--port", type=positive_int, default=8080, help="port (default: 8080)")

    export = add("export", cmd_export, "write the ArchConfig of chosen trials with their metrics and latency")
    study_arg(export)
    export.add_argument("--trial", default="best", action=_Once, help="best (default; Pareto search: the fastest Pareto trial whose "
                                                        "search accuracy is within one standard error of the top), "
                                                        "pareto, or a number")
    export.add_argument("--out", type=Path, required=True, help="folder to write trial-<n>.yaml into")

    finetune = add("finetune", cmd_finetune, "fine-tune an exported architecture from the teacher and save it")
    finetune.add_argument("config", type=Path, help="ArchConfig file written by nas export")
    finetune.add_argument("--study", type=Path, help="study file (default: the one the export names)")
    finetune.add_argument("--epochs", type=positive_int, help="full passes over the data (default: the study's "
                                                              "budget.finetune_epochs)")
    finetune.add_argument("--out", type=Path, required=True, help="folder for model.safetensors, arch.yaml, "
                                                                   "result.json")
    finetune.add_argument("--no-measure", action="store_true", help="skip timing the model on the kernels")

    report = add("report", cmd_report, "Pareto plot, per-block allocation chart and CSV of a study")
    study_arg(report)
    report.add_argument("--out", type=Path, help="folder (default: <study folder>/runs/<name>/report)")

    run = add("run", cmd_run, "everything a study still needs: profile, fit-latency, pretrain, search, report, "
                              "export best (each step skipped when already done)")
    study_arg(run)
    search_options(run)
    run.add_argument("--kernel-trials", type=non_negative_int,
                     help="MetaSchedule trials per kernel when profiling (default: the study's latency.trials; "
                          "0: untuned default schedules)")
    run.add_argument("--out", type=Path, help="folder for the report and export (default: <study folder>/runs/<name>)")
