"""``nas validate``, ``pretrain``, ``supernet``, ``search``, ``dashboard``, ``export``, ``finetune``, ``report`` and ``run``."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from latency_model.energy import NOTE as ENERGY_NOTE
from search_spaces.errors import ConfigError

from . import pipeline
from .driver import BACKENDS, get_driver
from .latency_commands import show_nothing_pays
from .report import METRIC_LABELS
from .study import Study

console = Console()


def _load(args: argparse.Namespace) -> Study:
    return Study.load(args.study, storage=getattr(args, "storage", None)).on_device(getattr(args, "device", None))


def _search_options(args: argparse.Namespace) -> pipeline.SearchOptions:
    return pipeline.SearchOptions(n_trials=args.n_trials, workers=args.workers, timeout_s=getattr(args, "timeout", None),
                                  ray_address=args.ray_address, cpus_per_trial=args.cpus_per_trial,
                                  gpus_per_trial=args.gpus_per_trial,
                                  **({} if args.driver_seed is None else {"driver_seed": args.driver_seed}))


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a study file without running it: every section, the model, the data and the space."""
    from latency_model.db import redact

    study = _load(args)
    checked = pipeline.validate(study)
    splits = checked.splits
    console.print(f"[green]ok[/] {study.path}: study {study.name!r}")
    console.print(f"  model {study.model.name}, {study.space.depth} blocks, {study.space.size():,} architectures")
    console.print(f"  data {study.data.source}: {len(splits.train)} train / {len(splits.search)} search / "
                  f"{len(splits.test)} test images")
    units = {"latency_ms": "ms", "energy_uj": "µJ"}
    console.print(f"  objectives {list(study.objectives.metrics)}"
                  + "".join(f", {m.split('_')[0]} budget {b} {units[m]}" for m, b in study.objectives.budgets.items()))
    if study.objectives.uses_energy:
        table = study.energy.table
        console.print(f"  energy: unit costs {table.name} ({ENERGY_NOTE})")
    console.print(f"  training on {checked.placement.describe()} (train.device {study.train.device})")
    console.print(f"  budget {study.budget.n_trials} trials x {study.budget.epochs} epochs "
                  f"({study.budget.steps_per_epoch or 'full'} steps each); sampler {study.sampler.name}, "
                  f"pruner {study.pruner.name}")
    console.print(f"  storage {redact(study.storage)}; teacher {study.teacher_path}; "
                  f"predictor {study.latency.predictor}")
    if study.evaluation.supernet:
        console.print(f"  evaluation: supernet mode, trials inherit from {study.supernet_path} (+"
                      f"{study.evaluation.finetune_steps} steps); `nas supernet` trains it in "
                      f"{study.evaluation.supernet_steps} steps")
    return 0


def show_pretrain(study: Study, force: bool = False) -> None:
    """Pretrain the teacher with a progress bar, and say what was done."""
    epochs = study.budget.pretrain_epochs
    with Progress(TextColumn("pretraining the dense teacher"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("", total=epochs)

        def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
            progress.update(task, advance=1, description=f"loss {loss:.3f}, search accuracy {accuracy:.3f}")

        def on_wait() -> None:
            progress.console.print(f"another process is training this teacher ({study.teacher_path}): waiting for "
                                   "it, then using its file")

        result = pipeline.pretrain(study, force=force, on_epoch=on_epoch, on_wait=on_wait)
    if result.cached:
        console.print(f"teacher already trained for this study: {result.path} (search accuracy "
                      f"{result.search_accuracy:.3f}); --force retrains")
    else:
        console.print(f"trained the teacher for {result.epochs} epochs in {result.seconds:.0f} s: search accuracy "
                      f"{result.search_accuracy:.3f}; wrote {result.path}")


def cmd_pretrain(args: argparse.Namespace) -> int:
    show_pretrain(_load(args), force=args.force)
    return 0


def show_supernet(study: Study, force: bool = False) -> None:
    """Train the supernet with a progress bar, and say what was done."""
    steps = study.evaluation.supernet_steps
    with Progress(TextColumn("training the supernet"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("", total=steps)

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, description=f"loss {loss:.3f}")

        def on_wait() -> None:
            progress.console.print(f"another process is training this supernet ({study.supernet_path}): waiting "
                                   "for it, then using its file")

        result = pipeline.supernet(study, force=force, on_step=on_step, on_wait=on_wait)
    if result.set_aside:
        console.print(f"[yellow]not used:[/] {result.set_aside}", highlight=False)
    if result.cached:
        console.print(f"supernet already trained for this study: {result.path}; --force retrains")
        return
    resumed = f", resumed at step {result.resumed_from}" if result.resumed_from else ""
    console.print(f"trained the supernet for {result.steps} steps in {result.seconds:.0f} s{resumed}; wrote "
                  f"{result.path}")


def cmd_supernet(args: argparse.Namespace) -> int:
    study = _load(args)
    if not study.evaluation.supernet:
        console.print(f"[yellow]note:[/] {study.path} scores trials in {study.evaluation.mode} mode; set "
                      "evaluation.mode: supernet for its trials to use this supernet", highlight=False)
    show_supernet(study, force=args.force)
    return 0


def show_search(study: Study, backend: str, options: pipeline.SearchOptions, warn_nothing_pays: bool = True
                ) -> pipeline.SearchSummary:
    """Run the search with a progress bar (and a line per change when the output is not a terminal), after the line
    that says so when no choice of the space is priced below dense anywhere (unless the caller has said it)."""
    driver = get_driver(backend)
    driver.check(study, options)
    total = options.trials_for(study)
    if warn_nothing_pays:
        show_nothing_pays(pipeline.where_it_pays(study), study)
    console.print(f"search [bold]{study.name}[/] {driver.describe(study, options)}; driver seed "
                  f"{options.driver_seed}")
    shown_failures: set[int] = set()
    with Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("starting", total=total)
        last_line = ""

        def on_progress(p: pipeline.Progress) -> None:
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

        def on_trial(trial_id: str, state: str) -> None:
            progress.console.print(f"  {backend} trial {trial_id}: {state}")

        events = pipeline.SearchEvents(on_progress=on_progress, on_trial=on_trial if backend == "ray" else None)
        summary = driver.run(study, options, events)
    for note in summary.notes:
        console.print(f"[yellow]{note}[/]")
    console.print(f"{summary.ran} trial(s) finished in this run ({summary.seconds:.0f} s), {summary.after.finished} "
                  f"in the study; {summary.after.best}")
    return summary


def cmd_search(args: argparse.Namespace) -> int:
    show_search(_load(args), args.backend, _search_options(args))
    console.print(f"next: nas report {args.study}   |   nas dashboard {args.study}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from latency_model.db import redact

    from .search import storage_of

    from .dashboard import artifact_location, artifact_store

    if not (args.study or args.storage):
        raise ConfigError("study", "give a study file or --storage URL")
    study = Study.load(args.study) if args.study else None
    url = args.storage or study.storage
    storage = storage_of(url)
    location = args.artifacts or (artifact_location(study) if study is not None else None)
    store = artifact_store(location, "--artifacts" if args.artifacts else "artifacts") if location else None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] serving on {args.host}: anyone who can reach this machine can read and "
                      "edit the studies; optuna-dashboard has no authentication")
    console.print(f"optuna-dashboard for {redact(url)} at [bold]http://{args.host}:{args.port}/[/] (Ctrl-C stops it)",
                  highlight=False)
    console.print(f"  artifacts: {location}" if location else "  artifacts: none (give --artifacts FOLDER or a study file)",
                  highlight=False)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port, artifact_store=store)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    paths = pipeline.export(_load(args), args.trial, args.out)
    for path in paths:
        console.print(f"wrote {path}")
    console.print(f"next: nas finetune {paths[0]} --out {args.out / 'finetuned'}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    job = pipeline.FinetuneJob.of(args.config, args.study, args.epochs, args.device)
    with Progress(TextColumn(f"fine-tuning {job.config.id}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("", total=job.epochs)
        result = pipeline.finetune(job, args.out, measure=not args.no_measure,
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
    chosen = "search accuracy vs " + " and ".join(METRIC_LABELS[m].split(" (")[0] for m in rep.metrics[1:])
    table = Table(title=f"Pareto front, chosen on {chosen}; test accuracy ± 1 SE is what to report",
                  title_justify="left")
    energy = any(not math.isnan(p.energy_uj) for p in rep.points)
    for column in ("trial", "search acc", "test acc ± SE", "latency ms", *(("energy µJ",) if energy else ()),
                   "architecture"):
        table.add_column(column)
    for p in rep.front:
        table.add_row(p.label, f"{p.accuracy:.4f}", p.test_text, f"{p.latency_ms:.3f}",
                      *((f"{p.energy_uj:.3f}",) if energy else ()),
                      "; ".join(f"{i}:{b.describe()}" for i, b in enumerate(p.config.blocks)))
    console.print(table)
    if rep.untested:
        console.print(f"[yellow]test accuracy not evaluated[/] for the supernet-mode trials shown: {rep.untested}",
                      highlight=False)
    for p in rep.points:
        if p.reference and p not in rep.front:
            console.print(f"reference {p.reference}: search accuracy {p.accuracy:.4f}, test {p.test_text}, "
                          f"{p.latency_ms:.3f} ms" + (f", {p.energy_uj:.3f} µJ" if energy else "")
                          + " (not on the front)")
    if energy:
        console.print(f"energy: {ENERGY_NOTE}")


def _on_test(number: int) -> None:
    console.print(f"  trial {number}: evaluating its test split (supernet mode scores trials on the search split "
                  "only)", highlight=False)


def cmd_report(args: argparse.Namespace) -> int:
    rep = pipeline.report(_load(args), args.out, on_test=_on_test)
    _print_front(rep)
    console.print("wrote " + ", ".join(str(f) for f in rep.files))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """profile -> fit-latency -> pretrain [-> supernet] -> search -> report -> export best, each step skipped when
    done."""
    from .latency_commands import show_fit, show_profile

    study = _load(args)
    options = _search_options(args)
    get_driver(args.backend).check(study, options)  # a flag the backend refuses: said before step 1
    started = time.perf_counter()
    out = args.out or pipeline.report_folder(study)
    pipeline.preflight(study, out)
    profiling = pipeline.ProfileOptions(trials=args.kernel_trials)
    trials = profiling.settings(study).trials
    # Profiling what the table already holds is a quick no-op, and it catches a space with shapes the table lacks
    # (another study's predictor file in the same folder, shapes that failed last time).
    console.print(f"[bold]1/6 profile[/] kernels and modules of the space on {study.latency.device}, {trials} tuning "
                  "trials per kernel" + (" (untuned default schedules: quick, slower kernels)" if trials == 0
                                         else ""))
    profiled = show_profile(study, profiling)
    if profiled.noisy:
        console.print("[red]stopped before the search:[/] a search priced by noisy timings optimises a number no "
                      "machine produces", highlight=False)
        return 1
    if profiled.failed:
        console.print(f"[yellow]{len(profiled.failed)} shape(s) could not be measured[/]: the predictor prices them "
                      "with its fitted model; the next `nas run` or `nas profile` tries them again")
    if pipeline.needs_fit(study, profiled):
        console.print("[bold]2/6 fit-latency[/]")
        if show_fit(study, pipeline.FitOptions()).refused is not None:
            console.print("[red]stopped before the search:[/] the predictor did not pass its check (above)")
            return 1
    else:
        console.print(f"[dim]2/6 latency predictor: {study.latency.predictor} (up to date)[/]")
    if pipeline.needs_pretrain(study):
        console.print("[bold]3/6 pretrain[/] the dense teacher")
        show_pretrain(study)
    else:
        console.print(f"[dim]3/6 teacher: {study.teacher_path} (cached)[/]")
    if study.evaluation.supernet:
        if pipeline.needs_supernet(study):
            console.print("[bold]3/6 supernet[/]: trials will inherit its weights (evaluation.mode: supernet)")
            show_supernet(study)
        else:
            console.print(f"[dim]3/6 supernet: {study.supernet_path} (cached)[/]")
    console.print("[bold]4/6 search[/]")
    show_search(study, args.backend, options, warn_nothing_pays=False)  # the profile's table ended with it
    console.print("[bold]5/6 report[/]")
    rep = pipeline.report(study, out / "report", on_test=_on_test)
    _print_front(rep)
    console.print("[bold]6/6 export[/] the best trial")
    paths = pipeline.export(study, "best", out / "best")
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

    def device_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--device", metavar="auto|cpu|cuda|cuda:N",
                            help="where to train (default: the study's train.device, auto: CUDA when there is one)")

    validate = add("validate", cmd_validate, "check a study file (every section, the model, the data) without "
                                             "running anything")
    study_arg(validate, storage=False)
    device_arg(validate)

    pretrain = add("pretrain", cmd_pretrain, "train the dense teacher on the study's data (cached next to the study)")
    study_arg(pretrain, storage=False)
    device_arg(pretrain)
    pretrain.add_argument("--force", action="store_true", help="retrain even if the teacher file is up to date")

    supernet = add("supernet", cmd_supernet, "train the study's weight-sharing supernet, from which trials inherit "
                                             "their weights in evaluation.mode: supernet (cached next to the study; "
                                             "a killed run resumes)")
    study_arg(supernet, storage=False)
    device_arg(supernet)
    supernet.add_argument("--force", action="store_true", help="retrain even if the supernet file is up to date")

    def search_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--n-trials", type=positive_int, help="finished trials to reach (default: the study's "
                                                                  "budget.n_trials); a re-run continues up to it")
        parser.add_argument("--workers", type=positive_int, default=1,
                            help="optuna backend: local worker processes sharing the storage (CPU threads are split "
                                 "between them); ray backend: trials run at once (default: 1)")
        parser.add_argument("--backend", choices=list(BACKENDS), default="optuna",
                            help="optuna: local processes (default); ray: Ray Tune trials, on a local Ray or a cluster")
        parser.add_argument("--ray-address", metavar="auto|HOST:PORT",
                            help="join this Ray cluster (default: start a light local Ray for this search)")
        parser.add_argument("--cpus-per-trial", type=float, default=1.0,
                            help="ray: CPUs reserved per trial; torch and TVM threads are capped to it (default: 1)")
        parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="ray: GPUs per trial (default: 0)")
        parser.add_argument("--driver-seed", type=int, metavar="N",
                            help="seed this run's samplers with N and the study's sampler.seed (default: drawn at "
                                 "random and printed, so that searches started together on one study propose "
                                 "different architectures; each trial records its sampler's seed)")

    search = add("search", cmd_search, "run or continue the study's search (local worker processes, or Ray Tune "
                                        "with --backend ray)")
    study_arg(search)
    search_options(search)
    device_arg(search)
    search.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")

    dashboard = add("dashboard", cmd_dashboard, "serve optuna-dashboard for a study's storage")
    dashboard.add_argument("study", type=Path, nargs="?", help="study file whose storage to show")
    dashboard.add_argument("--storage", help="storage URL instead of a study file")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine "
                                                               "only; 0.0.0.0 exposes it to the network)")
    dashboard.add_argument("--port", type=positive_int, default=8080, help="port (default: 8080)")
    dashboard.add_argument("--artifacts", help="the artifact store to serve: a folder, s3://BUCKET or gs://BUCKET "
                                               "(default: the study's `artifacts:`, runs/<name>/artifacts)")

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
    device_arg(finetune)

    report = add("report", cmd_report, "Pareto plot, per-block allocation chart and CSV of a study")
    study_arg(report)
    report.add_argument("--out", type=Path, help="folder (default: <study folder>/runs/<name>/report)")

    run = add("run", cmd_run, "everything a study still needs: profile, fit-latency, pretrain, search, report, "
                              "export best (each step skipped when already done)")
    study_arg(run)
    search_options(run)
    device_arg(run)
    run.add_argument("--kernel-trials", type=non_negative_int,
                     help="MetaSchedule trials per kernel when profiling (default: the study's latency.trials; "
                          "0: untuned default schedules)")
    run.add_argument("--out", type=Path, help="folder for the report and export (default: <study folder>/runs/<name>)")
