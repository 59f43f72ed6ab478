"""``nas validate``, ``search``, ``refine``, ``dashboard``, ``export`` and ``report``: each parses its arguments into a
:mod:`nas.pipeline` step's options, calls it and prints the result."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from latency_model.db import redact
from search_spaces.errors import ConfigError

from .. import pipeline
from ..search.backends import BACKENDS, get_driver
from ..search.dashboard import artifact_store, serve
from ..search.report import METRIC_LABELS
from ..search.storage import storage_of
from ..study import Study
from .common import device_arg, load_study, study_arg
from .latency_commands import show_nothing_pays
from .output import console


def search_options(args: argparse.Namespace) -> pipeline.SearchOptions:
    return pipeline.SearchOptions(n_trials=args.n_trials, workers=args.workers,
                                  timeout_s=getattr(args, "timeout", None), ray_address=args.ray_address, cpus_per_trial=args.cpus_per_trial,
                                  gpus_per_trial=args.gpus_per_trial,
                                  **({} if args.driver_seed is None else {"driver_seed": args.driver_seed}))


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a study file without running it: every section, the model, the data and the space."""
    study = load_study(args)
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
        console.print(f"  energy: model {study.energy.model}, {study.energy.name} ({study.energy.note})")
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


def search_header(study: Study, backend: str, options: pipeline.SearchOptions) -> None:
    console.print(f"search [bold]{study.name}[/] {get_driver(backend).describe(study, options)}; driver seed "
                  f"{options.driver_seed}")


class SearchView:
    """The search's progress bar (and a line per change when the output is not a terminal), as a context."""

    def __init__(self, study: Study, backend: str, options: pipeline.SearchOptions) -> None:
        self.total, self.backend = options.trials_for(study), backend
        self.progress = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), TimeElapsedColumn(), console=console)
        self.shown_failures: set[int] = set()
        self.last_line = ""

    def __enter__(self) -> "SearchView":
        self.progress.__enter__()
        self.task = self.progress.add_task("starting", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def events(self) -> pipeline.SearchEvents:
        return pipeline.SearchEvents(on_progress=self.on_progress,
                                     on_trial=self.on_trial if self.backend == "ray" else None)

    def on_progress(self, p: pipeline.Progress) -> None:
        c = p.counts
        line = (f"done {c.get('COMPLETE', 0)}, running {c.get('RUNNING', 0)}, pruned {c.get('PRUNED', 0)}, "
                f"failed {c.get('FAIL', 0)}  {p.best}")
        self.progress.update(self.task, completed=min(p.finished, self.total), description=line)
        if not console.is_terminal and line != self.last_line:  # a log file gets one line per change instead
            self.progress.console.print(f"trials {min(p.finished, self.total)}/{self.total}: {line}")
            self.last_line = line
        for number, reason in p.failures:
            if number not in self.shown_failures:
                self.shown_failures.add(number)
                self.progress.console.print(f"[red]trial {number} failed[/]: {reason.splitlines()[0][:200]}")

    def on_trial(self, trial_id: str, state: str) -> None:
        self.progress.console.print(f"  {self.backend} trial {trial_id}: {state}")


def print_search(summary: pipeline.SearchSummary) -> None:
    for note in summary.notes:
        console.print(f"[yellow]{note}[/]")
    console.print(f"{summary.ran} trial(s) finished in this run ({summary.seconds:.0f} s), {summary.after.finished} "
                  f"in the study; {summary.after.best}")


def show_search(study: Study, backend: str, options: pipeline.SearchOptions) -> pipeline.SearchSummary:
    """Run the search with a progress bar, after the line that says so when no choice of the space is priced below
    dense anywhere."""
    driver = get_driver(backend)
    driver.check(study, options)
    show_nothing_pays(pipeline.where_it_pays(study), study)
    search_header(study, backend, options)
    with SearchView(study, backend, options) as view:
        summary = driver.run(study, options, view.events())
    print_search(summary)
    return summary


def cmd_search(args: argparse.Namespace) -> int:
    show_search(load_study(args), args.backend, search_options(args))
    console.print(f"next: nas report {args.study}   |   nas dashboard {args.study}")
    return 0


class RefineView:
    """The refine's progress bar over its jobs (a line per change when the output is not a terminal)."""

    def __init__(self, study: Study, options: pipeline.RefineOptions) -> None:
        self.settings = options.settings(study)
        self.progress = Progress(TextColumn("refine jobs"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), TimeElapsedColumn(), console=console)
        self.last_line = ""
        self.shown_failures: set[str] = set()

    def __enter__(self) -> "RefineView":
        self.progress.__enter__()
        self.task = self.progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def on_wait(self) -> None: ...

    def on_progress(self, counts) -> None:
        line = f"running {counts.running}, waiting {counts.waiting}, failed {len(counts.failed)}"
        self.progress.update(self.task, total=counts.total, completed=counts.done, description=line)
        if not console.is_terminal and line != self.last_line:
            self.progress.console.print(f"refine jobs {counts.done}/{counts.total}: {line}")
            self.last_line = line
        for label, reason in counts.failed:
            if label not in self.shown_failures:
                self.shown_failures.add(label)
                self.progress.console.print(f"[red]refine job {label} failed[/]: {reason.splitlines()[0][:200]}")

    def on_measure(self, label: str) -> None:
        self.progress.console.print(f"  timing {label} on this device", highlight=False)


def refine_header(study: Study, options: pipeline.RefineOptions) -> None:
    s = options.settings(study)
    where = (f"as Ray tasks on {options.ray_address or 'a local Ray'}" if options.backend == "ray" else
             f"on {options.workers} worker process(es) here")
    console.print(f"refine [bold]{study.name}[/]: the front's top {s['top']} and the dense reference, {s['seeds']} "
                  f"seed(s) x {s['epochs']} epochs each, {where}; finished jobs are kept, a rerun trains the rest",
                  highlight=False)


def print_refine(result: pipeline.RefineResult) -> None:
    table = Table(title="Refined: each architecture fine-tuned for real; search accuracy selects, test accuracy ± 1 SE "
                        "(images and seeds) is what to report", title_justify="left")
    energy = any(not math.isnan(p.energy_uj) for p in result.points)
    for column in ("trial", "inherited", "search acc", "test acc ± SE", "latency ms (predicted / measured)",
                   *(("energy µJ",) if energy else ()), "front", "blocks: attention/qkv/proj/mlp"):
        table.add_column(column)
    front = {id(p) for p in result.front}
    for p in sorted(result.points, key=lambda p: -p.accuracy):
        measured = "-" if p.measured_ms is None else f"{p.measured_ms:.3f}"
        table.add_row(p.label, f"{p.inherited:.4f}", f"{p.accuracy:.4f}", p.test_text,
                      f"{p.latency_ms:.3f} / {measured}", *((f"{p.energy_uj:.1f}",) if energy else ()),
                      "*" if id(p) in front else "", p.config.compact())
    console.print(table)
    console.print(f"{result.ran} job(s) trained in this run of {result.jobs} ({result.seconds:.0f} s); proxy trust: "
                  f"{result.trust.text}", highlight=False)
    if result.trust.disagreement:
        console.print(f"[yellow]{result.trust.disagreement}[/]", highlight=False)


def _refine_options(args: argparse.Namespace) -> pipeline.RefineOptions:
    return pipeline.RefineOptions(top=args.top, seeds=args.seeds, epochs=args.epochs, workers=args.workers,
                                  backend=args.backend, ray_address=args.ray_address,
                                  cpus_per_job=args.cpus_per_job, gpus_per_job=args.gpus_per_job,
                                  measure=not args.no_measure)


def cmd_refine(args: argparse.Namespace) -> int:
    study = load_study(args)
    options = _refine_options(args)
    refine_header(study, options)
    with RefineView(study, options) as view:
        result = pipeline.refine(study, options, on_progress=view.on_progress, on_measure=view.on_measure)
    print_refine(result)
    console.print(f"next: nas report {args.study}   |   nas export {args.study} --trial best --out OUT")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    if not (args.study or args.storage):
        raise ConfigError("study", "give a study file or --storage URL")
    study = Study.load(args.study) if args.study else None
    url = args.storage or study.storage
    storage = storage_of(url)
    location = args.artifacts or (study.artifact_location if study is not None else None)
    store = artifact_store(location, "--artifacts" if args.artifacts else "artifacts") if location else None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] serving on {args.host}: anyone who can reach this machine can read and "
                      "edit the studies; optuna-dashboard has no authentication")
    console.print(f"optuna-dashboard for {redact(url)} at [bold]http://{args.host}:{args.port}/[/] (Ctrl-C stops it)",
                  highlight=False)
    console.print(f"  artifacts: {location}" if location else "  artifacts: none (give --artifacts FOLDER or a study file)",
                  highlight=False)
    serve(storage, args.host, args.port, store)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    paths = pipeline.export(load_study(args), args.trial, args.out)
    for path in paths:
        console.print(f"wrote {path}")
    console.print(f"next: nas finetune {paths[0]} --out {args.out / 'finetuned'}")
    return 0


def print_front(rep) -> None:
    chosen = "search accuracy vs " + " and ".join(METRIC_LABELS[m].split(" (")[0] for m in rep.metrics[1:])
    table = Table(title=f"Pareto front, chosen on {chosen}; test accuracy ± 1 SE is what to report",
                  title_justify="left")
    energy = any(not math.isnan(p.energy_uj) for p in rep.points)
    for column in ("trial", "search acc", "test acc ± SE", "latency ms", *(("energy µJ",) if energy else ()),
                   "blocks: attention/qkv/proj/mlp"):
        table.add_column(column)
    for p in rep.front:
        table.add_row(p.label, f"{p.accuracy:.4f}", p.test_text, f"{p.latency_ms:.3f}",
                      *((f"{p.energy_uj:.3f}",) if energy else ()), p.config.compact())
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
        console.print(f"energy: {rep.energy_note}")
    if rep.refined:
        console.print(f"refined: {len(rep.refined)} architectures fine-tuned for real, {len(rep.refined_front)} on "
                      f"the refined front, which `nas export` picks from; proxy trust: {rep.trust.text}",
                      highlight=False)
        if rep.trust.disagreement:
            console.print(f"[yellow]{rep.trust.disagreement}[/]", highlight=False)


def on_test(number: int) -> None:
    console.print(f"  trial {number}: evaluating its test split (supernet mode scores trials on the search split "
                  "only)", highlight=False)


def cmd_report(args: argparse.Namespace) -> int:
    rep = pipeline.report(load_study(args), args.out, on_test=on_test)
    print_front(rep)
    console.print("wrote " + ", ".join(str(f) for f in rep.files))
    return 0


class _Once(argparse.Action):
    """An option that may be given once (argparse would silently keep the last)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, f"_{self.dest}_given", False):
            parser.error(f"{option_string} may be given once (got {getattr(namespace, self.dest)!r} and {values!r})")
        setattr(namespace, f"_{self.dest}_given", True)
        setattr(namespace, self.dest, values)


def search_args(parser: argparse.ArgumentParser, positive_int) -> None:
    """The options of a search, shared by ``nas search`` and ``nas run``."""
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



def add_commands(add, positive_int, non_negative_int) -> None:
    validate = add("validate", cmd_validate, "check a study file (every section, the model, the data) without "
                                             "running anything")
    study_arg(validate, storage=False)
    device_arg(validate)

    search = add("search", cmd_search, "run or continue the study's search (local worker processes, or Ray Tune "
                                        "with --backend ray)")
    study_arg(search)
    search_args(search, positive_int)
    device_arg(search)
    search.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")

    refine = add("refine", cmd_refine, "fine-tune the search front's best candidates and the dense reference for "
                                       "real, on local workers or Ray tasks (resumable: finished jobs are kept)")
    study_arg(refine)
    refine.add_argument("--top", type=non_negative_int, help="candidates of the front, spread along it (default: the "
                                                             "study's refine.top, else 3)")
    refine.add_argument("--seeds", type=positive_int, help="fine-tunes per candidate, seeds train.seed, +1, ... "
                                                           "(default: the study's refine.seeds, else 1)")
    refine.add_argument("--epochs", type=positive_int, help="full passes over the train split per fine-tune "
                                                            "(default: refine.epochs, else budget.finetune_epochs)")
    refine.add_argument("--workers", type=positive_int, default=1,
                        help="jobs at once: local worker processes (optuna backend) or Ray tasks (default: 1)")
    refine.add_argument("--backend", choices=list(pipeline.REFINE_BACKENDS), default="optuna",
                        help="optuna: local processes (default); ray: Ray tasks on a local Ray or a cluster")
    refine.add_argument("--ray-address", metavar="auto|HOST:PORT",
                        help="join this Ray cluster (default: a light local Ray); its nodes must reach the storage")
    refine.add_argument("--cpus-per-job", type=float, default=1.0, help="ray: CPUs per job (default: 1)")
    refine.add_argument("--gpus-per-job", type=float, default=0.0, help="ray: GPUs per job (default: 0)")
    refine.add_argument("--no-measure", action="store_true",
                        help="skip timing the refined architectures on this device")
    device_arg(refine)

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

    report = add("report", cmd_report, "Pareto plot, per-block allocation chart and CSV of a study")
    study_arg(report)
    report.add_argument("--out", type=Path, help="folder (default: <study folder>/runs/<name>/report)")
