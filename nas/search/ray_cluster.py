"""Ray, joined or started: the part of the Ray backend that ``nas search --driver ray`` and ``nas refine --backend ray``
share, importable without Ray (Ray loads on the first call)."""

from __future__ import annotations

import os
import socket

from kernels.lazy import lazy_import

from ..upstream import ray_internals
from .storage import SearchError

ray = lazy_import("ray")


def trial_device(device: str, gpus_per_trial: float) -> str:
    """Where a Ray trial trains: on the GPU Ray gave it (Ray sets ``CUDA_VISIBLE_DEVICES``, so it is ``cuda`` in
    the trial) when it has one and the study does not say ``cpu``; on the CPU otherwise, whatever the node has."""
    return "cpu" if device == "cpu" or gpus_per_trial <= 0 else "cuda"


def join_ray(ray_address: str | None, cpus_per_trial: float, workers: int) -> None:
    """Join the cluster at ``ray_address``, or start a light local Ray sized for ``workers`` trials, whatever
    cluster another process started (or left behind) on this machine."""
    if not ray_address:
        # "local": a new Ray of its own; without it ray.init joins the cluster named by RAY_ADDRESS or by the last
        # one started here (/tmp/ray/ray_current_cluster), even a dead one, and refuses num_cpus for it
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(cpus_per_trial * workers)),
                 include_dashboard=False, object_store_memory=256 * 1024**2, logging_level="warning",
                 log_to_driver=False)
        return
    _check_reachable(ray_address)
    if ray_internals.cluster_token() and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        # `ray start` turns token authentication on; a driver presents the token it finds only in token mode
        ray_internals.use_token_authentication()
    try:
        ray.init(address=ray_address, logging_level="warning", log_to_driver=False)
    except (ConnectionError, RuntimeError) as e:
        hint = ""
        if not ray_internals.cluster_token():
            hint = (" (if the cluster uses token authentication, the default of `ray start`: copy the head's "
                    "~/.ray/auth_token to this machine, or set RAY_AUTH_TOKEN)")
        raise SearchError("--ray-address", f"cannot join the Ray cluster at {ray_address}: "
                                           f"{str(e).splitlines()[0]}{hint}") from None


def _check_reachable(ray_address: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT where nothing answers is one line at once (Ray itself retries for minutes); ``auto`` and other
    forms are Ray's to resolve."""

    host, _, port = ray_address.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise SearchError("--ray-address", f"cannot join the Ray cluster at {ray_address}: nothing answers there "
                                           f"({e.strerror or e}); is its head running (`ray start --head --port "
                                           f"{port}`)?") from None
