"""What a finished search gives: its report (front, plots, where it pays, the refined front) and its exported
architecture files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from search_spaces.errors import StateError

from ..disk import ensure_writable
from ..export import export as write_configs
from ..search.dashboard import artifact_store, publish_study, replace_study_artifacts
from ..search.objective import score_test_split
from ..search.refined import refined_front, trust, write_refined
from ..search.report import report as write_report
from ..search.report import shown_trials
from ..search.storage import open_study
from ..study import Study
from ..study_latency import where_it_pays
from .base import report_folder
from .search_steps import stored_refinement

if TYPE_CHECKING:

    from ..search.report import Report


def report(study: Study, out: Path | None = None, on_test: Callable[[int], None] | None = None) -> "Report":
    """The Pareto plot, the allocation chart and the CSV of the study's trials, in ``out`` (default:
    ``<study folder>/runs/<name>/report``). The front's and the reference trials' test accuracy is evaluated first
    where their trials did not (supernet mode, :func:`nas.search.objective.score_test_split`; ``on_test(trial number)``
    before each)."""
    out = ensure_writable(out or report_folder(study) / "report", "--out", need_mb=1)
    ostudy = open_study(study, create=False)
    untested = ""
    try:
        score_test_split(study, ostudy, shown_trials(ostudy), on_test)
    except StateError as e:  # the supernet is gone or stale: the report still shows what the trials stored
        untested = str(e)
    title = f"{study.name}: {study.model.name} on {study.data.source}, {study.latency.device}"
    written = write_report(ostudy, out, title, where_it_pays(study))
    written.untested = untested
    refined = stored_refinement(study, ostudy)
    if refined:
        written.refined, written.refined_front = refined, refined_front(refined, written.metrics)
        written.trust = trust(refined)
        written.files += write_refined(refined, written.refined_front, out, title)
    replace_study_artifacts(ostudy, artifact_store(study.artifact_location), written.files)
    publish_study(study, ostudy)
    return written


def export(study: Study, which: str, out: Path) -> list[Path]:
    """Write the ArchConfig files of the chosen trials (``best``, ``pareto`` or a trial number) into ``out``;
    ``best`` and ``pareto`` from the refined front when the study was refined."""
    ostudy = open_study(study, create=False)
    return write_configs(study, ostudy, which, out, stored_refinement(study, ostudy))
