"""Process-wide settings, made at entry points only (the ``nas`` command, a search worker process, a Ray trial),
each by one function."""

from __future__ import annotations

import os
import warnings

import optuna
import torch


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads for this process."""

    torch.set_num_threads(threads)


def set_tvm_threads(threads: int) -> None:
    """TVM's runtime threads for this process. Call it before the process's first kernel runs: TVM reads
    ``TVM_NUM_THREADS`` when it starts its thread pool, and kernels compiled here target that many cores (the
    target, and so the kernel cache folder, depend on it)."""
    os.environ["TVM_NUM_THREADS"] = str(threads)


def quiet_search_worker_warnings() -> None:
    """A search worker runs each trial as ``Study.optimize`` does (heartbeat thread, tell) but outside it, and Optuna
    warns about that on every trial; the warning says nothing a user can act on."""
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def quiet_optuna_logging() -> None:
    """Optuna logs every trial at INFO; the commands' progress displays say what matters."""

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def start_worker(threads: int, tvm: bool = False) -> None:
    """What a search or refine worker process does first: Optuna's per-trial logging and warnings quiet, and, given
    ``threads``, torch's threads (and with ``tvm`` TVM's: a worker that times kernels) set to its share of the cores."""
    quiet_optuna_logging()
    quiet_search_worker_warnings()
    if threads:
        set_torch_threads(threads)
        if tvm:
            set_tvm_threads(threads)
