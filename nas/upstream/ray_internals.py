"""Ray Tune's private API, as the project uses it (written against ray 2.60; see :mod:`nas.upstream`).

The project's searcher subclasses ``ray.tune.search.optuna.OptunaSearch`` to store each trial's true end state and
its attributes in the Optuna study. That needs the Optuna trial behind a Ray trial id, the study, the metric, and
the set of trials already told, which ``OptunaSearch`` keeps in private attributes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import optuna

from kernels.lazy import lazy_import

raylet = lazy_import("ray._raylet")

# OptunaSearch attributes that hold a storage connection, sampler or search space: not picklable, and not needed by
# a searcher restored from Ray's experiment state (the project resumes through the Optuna study instead).
_UNPICKLABLE = {"_storage": None, "_ot_study": None, "_ot_trials": {}, "_sampler": None, "_space": None}


def pending_trial(searcher: Any, trial_id: str) -> optuna.Trial | None:
    """The Optuna trial the searcher opened for Ray trial ``trial_id``; None if it is unknown or already told."""
    if trial_id in searcher._completed_trials or trial_id not in searcher._ot_trials:
        return None
    return searcher._ot_trials[trial_id]


def tell(searcher: Any, trial_id: str, values: Any, state: optuna.trial.TrialState) -> None:
    """Tell the searcher's study a trial's end, and mark it told (the searcher will not tell it again)."""
    searcher._ot_study.tell(searcher._ot_trials[trial_id], values, state=state)
    searcher._completed_trials.add(trial_id)


def metric(searcher: Any) -> str | list[str]:
    """The metric name (a list of names for a multi-objective study) the searcher was set up with."""
    return searcher._metric


def picklable_state(searcher: Any) -> dict[str, Any]:
    """The searcher's ``__dict__`` without what cannot be pickled (see ``_UNPICKLABLE``)."""
    return {**searcher.__dict__, **_UNPICKLABLE}


def cluster_token() -> str | None:
    """The Ray cluster token this process would present: ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``
    names, or ``~/.ray/auth_token`` (where `ray start` writes it), in Ray's order; None when there is none."""

    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def use_token_authentication() -> None:
    """Present the cluster token from now on in this process: ``RAY_AUTH_MODE=token``, and Ray's config re-read
    (it reads the variable once, when ``ray`` is imported)."""

    os.environ["RAY_AUTH_MODE"] = "token"
    raylet.Config.initialize("")
    raylet.AuthenticationTokenLoader.instance().reset_cache()
