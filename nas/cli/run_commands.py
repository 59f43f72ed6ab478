"""``nas run``: every step a study still needs, in order, drawn as it goes."""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

from .. import pipeline
from ..study import Study
from .common import device_arg, load_study, study_arg
from .latency_commands import ProfileView, print_fit, print_profile, profile_header
from .output import console
from .search_commands import (
    RefineView,
    SearchView,
    on_test,
    print_front,
    print_refine,
    print_search,
    refine_header,
    search_args,
    search_header,
    search_options,
)
from .training_commands import PretrainView, SupernetView, print_pretrain, print_supernet


class RunView(pipeline.RunEvents):
    """``nas run``'s rendering of :func:`nas.pipeline.run`: a numbered line per step, the step's own progress bar,
    and what the step's own command prints."""

    def __init__(self, study: Study, options: pipeline.RunOptions) -> None:
        self.study, self.options = study, options
        self.profiling = pipeline.ProfileOptions(trials=options.kernel_trials)
        self.view = None

    def step(self, step: pipeline.RunStep):
        study, number = self.study, f"{step.number}/{step.total}"
        if not step.runs:
            what = {"fit-latency": "latency predictor", "pretrain": "teacher"}.get(step.name, step.name)
            up_to_date = {"fit-latency": " (up to date)", "refine": ""}.get(step.name, " (cached)")
            console.print(f"[dim]{number} {what}: {step.cached}{up_to_date}[/]")
            return nullcontext()
        if step.name == "profile":
            trials = self.profiling.settings(study).trials
            console.print(f"[bold]{number} profile[/] kernels and modules of the space on {study.latency.device}, "
                          f"{trials} tuning trials per kernel"
                          + (" (untuned default schedules: quick, slower kernels)" if trials == 0 else ""))
            profile_header(study, self.profiling)
            self.view = ProfileView(study, self.profiling)
        elif step.name == "pretrain":
            console.print(f"[bold]{number} pretrain[/] the dense teacher")
            self.view = PretrainView(study)
        elif step.name == "supernet":
            console.print(f"[bold]{number} supernet[/]: trials will inherit its weights (evaluation.mode: supernet)")
            self.view = SupernetView(study)
        elif step.name == "search":
            console.print(f"[bold]{number} search[/]")
            search_header(study, self.options.backend, self.options.search)
            self.view = SearchView(study, self.options.backend, self.options.search)
        elif step.name == "refine":
            console.print(f"[bold]{number} refine[/] the front: its candidates trained for real")
            refine_header(study, self.options.refine_options())
            self.view = RefineView(study, self.options.refine_options())
        else:
            console.print(f"[bold]{number} {step.name}[/]" + (" the best trial" if step.name == "export" else ""))
            self.view = None
        return self.view if self.view is not None else nullcontext()

    def result(self, step: pipeline.RunStep, result) -> None:
        if step.name == "profile":
            print_profile(self.study, self.profiling, result)
            if result.noisy:
                console.print("[red]stopped before the search:[/] a search priced by noisy timings optimises a "
                              "number no machine produces", highlight=False)
            elif result.failed:
                console.print(f"[yellow]{len(result.failed)} shape(s) could not be measured[/]: the predictor "
                              "prices them with its fitted model; the next `nas run` or `nas profile` tries them "
                              "again")
        elif step.name == "fit-latency":
            print_fit(result, pipeline.FitOptions())
            if result.refused is not None:
                console.print("[red]stopped before the search:[/] the predictor did not pass its check (above)")
        elif step.name == "pretrain":
            print_pretrain(result)
        elif step.name == "supernet":
            print_supernet(result)
        elif step.name == "search":
            print_search(result)
        elif step.name == "refine":
            print_refine(result)
        elif step.name == "report":
            print_front(result)

    def waiting(self, step: str) -> None:
        if self.view is not None:
            self.view.on_wait()

    def profile_started(self, job, index: int, total: int) -> None:
        self.view.on_start(job, index, total)

    def profile_done(self, job, seconds: float) -> None:
        self.view.on_done(job, seconds)

    def profile_noisy(self, job, timing, attempt: int) -> None:
        self.view.on_noisy(job, timing, attempt)

    def pretrain_epoch(self, epoch: int, loss: float, accuracy: float) -> None:
        self.view.on_epoch(epoch, loss, accuracy)

    def supernet_step(self, step: int, steps: int, loss: float) -> None:
        self.view.on_step(step, steps, loss)

    def search_events(self) -> pipeline.SearchEvents:
        return self.view.events()

    def refine_progress(self, counts) -> None:
        self.view.on_progress(counts)

    def refine_measure(self, label: str) -> None:
        self.view.on_measure(label)

    def test_split(self, trial_number: int) -> None:
        on_test(trial_number)


def cmd_run(args: argparse.Namespace) -> int:
    """profile -> fit-latency -> pretrain [-> supernet] -> search -> refine -> report -> export best, each step
    skipped when done (:func:`nas.pipeline.run`)."""
    study = load_study(args)
    options = pipeline.RunOptions(backend=args.backend, search=search_options(args), kernel_trials=args.kernel_trials,
                                  out=args.out, refine=not args.no_refine)
    result = pipeline.run(study, options, RunView(study, options))
    if result.stopped is not None:
        return 1
    console.print(f"\ndone in {result.seconds:.0f} s.")
    console.print(f"  report:    {', '.join(str(f) for f in result.report.files)}")
    console.print(f"  best:      {result.best}")
    console.print(f"  dashboard: nas dashboard {args.study}   (then open http://127.0.0.1:8080/)")
    console.print(f"  finetune:  nas finetune {result.best} --out {result.out / 'finetuned'}")
    return 0


def add_commands(add, positive_int, non_negative_int) -> None:
    run = add("run", cmd_run, "everything a study still needs: profile, fit-latency, pretrain, search, refine, "
                              "report, export best (each step skipped when already done)")
    study_arg(run)
    search_args(run, positive_int)
    device_arg(run)
    run.add_argument("--kernel-trials", type=non_negative_int,
                     help="MetaSchedule trials per kernel when profiling (default: the study's latency.trials; "
                          "0: untuned default schedules)")
    run.add_argument("--out", type=Path, help="folder for the report and export (default: <study folder>/runs/<name>)")
    run.add_argument("--no-refine", action="store_true",
                     help="skip the refine step (the study's refine: section; `nas refine` runs it later)")
