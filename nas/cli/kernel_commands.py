"""``nas kernels check``, ``tune`` and ``build``: the TVM kernels from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from kernels import target as targets
from kernels.check import AWKWARD_SHAPES, all_specs, check, check_prebuilt
from kernels.matshift import DEFAULT_VARIANT
from kernels.measure import measure
from kernels.prebuilt import PrebuiltKernels, build
from kernels.spec import KernelError, KernelSpec, variants
from kernels.tuning import task_dir
from latency_model.decomposition import kernel_tasks

from ..study import Study
from .output import console


def cmd_check(args: argparse.Namespace) -> int:
    specs = list(all_specs(AWKWARD_SHAPES))
    if args.prebuilt:
        prebuilt = PrebuiltKernels.load(args.prebuilt, require=specs)
        where, run = f"{prebuilt.manifest.kind} ({args.prebuilt})", lambda spec: check_prebuilt(prebuilt, spec)
    else:
        where, run = args.target, lambda spec: check(spec, args.target, trials=args.trials, root=args.cache)
    table = Table(title=f"kernels on {where}: each against its numpy reference", title_justify="left")
    for column in ("kernel", "variant", "dtype", "[batch x] M x K x N", "result", "max error"):
        table.add_column(column)
    failures = 0
    with Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(), console=console, transient=True) as bar:
        task = bar.add_task("check", total=len(specs))
        for spec in specs:
            result = run(spec)
            failures += not result.ok
            error = "" if result.max_error is None else f"{result.max_error:.3g}"
            status = result.status if result.ok else f"[red]{result.status}[/] {result.detail}"
            batch = f"{spec.batch} x " if spec.batch > 1 else ""
            table.add_row(spec.kernel, spec.variant, spec.dtype, f"{batch}{spec.M}x{spec.K}x{spec.N}", status, error)
            bar.advance(task)
    console.print(table)
    if failures:
        console.print(f"[red]{failures} of {len(specs)} kernel checks failed[/]")
        return 1
    console.print(f"all {len(specs)} kernel checks passed")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    spec = KernelSpec(args.kernel, args.variant or _default_variant(args.kernel), args.M, args.K, args.N, args.dtype or "",
                      batch=args.batch)
    progress = Progress(
        TextColumn(f"tuning {spec.key}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("trials"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task("tune", total=args.trials)
        kernel, timing = measure(
            spec,
            args.target,
            trials=args.trials,
            repeats=args.repeats,
            tracker=args.rpc_tracker,
            device_key=args.device_key,
            root=args.cache,
            on_trials=lambda n: progress.advance(task, n),
        )
    where = f"{args.device_key} via {args.rpc_tracker}" if args.rpc_tracker else "this machine"
    state = "cache hit" if kernel.cache_hit else (f"tuned in {kernel.tuning_seconds:.0f} s" if kernel.tuned else "built")
    tuned = f"tuned, {kernel.trials} trials" if kernel.tuned else "[yellow]UNTUNED[/] (default schedule)"
    console.print(f"{spec.key} on {targets.describe(kernel.target)['kind']} ({where}): {tuned}; {state}")
    console.print(
        f"median {timing.median_ms:.4f} ms (min {timing.min_ms:.4f}, max {timing.max_ms:.4f}, "
        f"std {timing.std_ms:.4f}, {timing.repeats} repeats)"
    )
    console.print(f"cache: {task_dir(spec, kernel.target, args.cache)}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    specs = list(all_specs(AWKWARD_SHAPES)) if args.checks else []
    if args.study is not None:


        study = Study.load(args.study)
        batches = args.batch_sizes or list(study.latency.batch_sizes)
        specs += kernel_tasks(study.space, batches, every_candidate=True)
    elif not args.checks:
        raise KernelError("study", "name a study (its space's kernels at its batch sizes) or --checks (the shapes of "
                                   "`nas kernels check`), or both")
    with console.status(f"compiling {len(specs)} kernels for {args.target}"):
        manifest = build(specs, args.target, args.out)
    console.print(f"{len(manifest.kernels)} kernels for {manifest.kind} {manifest.arch or ''} in {args.out} "
                  f"(kernels.so + manifest.json). Where the TVM runtime is installed: `nas kernels check --prebuilt "
                  f"{args.out}`, or a study with `latency.prebuilt: {args.out}` (profile, latency --measure)")
    return 0


def _default_variant(kernel: str) -> str:
    options = [v for k, v in variants(kernel)]
    if not options:
        known = sorted({k for k, _ in variants()})
        raise KernelError("kernel", f"unknown kernel {kernel!r} (choose from {', '.join(known)})")
    return {"matmul": "fp32", "matshift": DEFAULT_VARIANT, "matadd": "binary_real"}.get(kernel, options[0])


def add_commands(add, positive_int, non_negative_int) -> None:
    """Register ``nas kernels ...`` through the CLI's ``add(name, handler, help)``."""
    kernels = add("kernels", None, "check, tune and time the TVM kernels (matmul, matshift, matadd, shiftlinear, additive)")
    sub = kernels.add_subparsers(dest="kernels_command", metavar="KERNELS_COMMAND", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--target", default="cpu", help="'cpu' (this machine), 'cuda', 'cuda:sm_XX' or a TVM target dict as JSON"
        )
        parser.add_argument(
            "--cache", type=Path, default=None,
            help="kernel cache folder (default: $SHIFTADD_CACHE or ~/.cache/shiftadd-nas/tvm)",
        )

    check = sub.add_parser(
        "check",
        help="run every kernel on random inputs and compare with its numpy reference",
        description="Run every kernel variant at shapes that are not multiples of the tile sizes (and with a batch, "
        "where a variant takes one) and compare with its numpy reference: integer kernels must match bit for bit, "
        "on random inputs and, where a variant defines them, on inputs at the ends of int32 that make the sums "
        "wrap around; float kernels within fp32 rounding. --trials checks the tuned kernels. On a CUDA target "
        "without a GPU the kernels are compiled (to CUDA source) but not run.",
    )
    common(check)
    check.add_argument("--trials", type=non_negative_int, default=0, help="tune each kernel first (default: 0)")
    check.add_argument("--prebuilt", type=Path, metavar="DIR",
                       help="check the kernels of a `nas kernels build --checks` folder on its device instead, with "
                            "the TVM runtime alone (nothing is compiled)")
    check.set_defaults(handler=cmd_check)

    build = sub.add_parser(
        "build",
        help="cross-compile the kernels a study needs into one library, to run elsewhere with the TVM runtime alone",
        description="Compile every kernel task a study's space produces at its batch sizes (each candidate variant "
        "of a dispatched kernel included), untuned, for --target, into DIR/kernels.so with DIR/manifest.json (target, "
        "TVM version, kernel code fingerprint, checksum, tasks). No device is needed: for CUDA, TVM generates the "
        "CUDA source and compiles it with NVRTC. Carry DIR to the machine that runs them (which needs only the TVM "
        "runtime); a manifest that does not match the study, the kernel code or the GPU is refused there, in one "
        "line. --checks adds the shapes of `nas kernels check`.",
    )
    build.add_argument("study", nargs="?", type=Path, help="the study file (optional with --checks)")
    build.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder to write")
    build.add_argument("--batch-sizes", type=positive_int, nargs="+", help="default: the study's latency.batch_sizes")
    build.add_argument("--checks", action="store_true", help="also the tasks of `nas kernels check`")
    common(build)
    build.set_defaults(handler=cmd_build)

    tune = sub.add_parser(
        "tune",
        help="tune one kernel task (cached) and time it",
        description="Tune one kernel task with MetaSchedule, store it in the cache (a second run is a cache hit) "
        "and time it, on this machine or on a remote device through TVM's RPC tracker.",
    )
    tune.add_argument("kernel", help="matmul, matshift, matadd, shiftlinear or additive (additive attention's whole "
                                     "mixing: M tokens, K head dim, N heads)")
    tune.add_argument("M", type=positive_int)
    tune.add_argument("K", type=positive_int)
    tune.add_argument("N", type=positive_int)
    tune.add_argument(
        "--variant",
        help="matmul: fp32; matshift: xor (default, no multiply), mul or select; matadd: binary_real (default), "
             "lut4 or packed_popcount; shiftlinear: i16; additive: lut4",
    )
    tune.add_argument("--dtype", help="value dtype where a variant takes several (matadd binary_real: float32, int32)")
    tune.add_argument("--batch", type=positive_int, default=1,
                      help="independent products in one call, for a variant that takes a batch (matadd binary_real: "
                           "every (image, head) at once); additive: the images; default: 1")
    tune.add_argument("--trials", type=non_negative_int, default=64, help="MetaSchedule trials; 0 = untuned (default: 64)")
    tune.add_argument("--repeats", type=positive_int, default=15, help="timing repeats (default: 15)")
    tune.add_argument("--rpc-tracker", metavar="HOST:PORT", help="time on a remote device registered with this tracker")
    tune.add_argument("--device-key", metavar="KEY", help="the remote device's key at the tracker")
    common(tune)
    tune.set_defaults(handler=cmd_tune)
