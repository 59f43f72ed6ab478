"""What optuna-dashboard shows of a study besides its numbers, written to its storage: a note per trial, a note on the
study (their text: :mod:`.notes`), and artifacts; and ``nas dashboard``'s server.

- **Trial note** (Markdown, optuna-dashboard's ``save_note``), written by whichever process tells the trial (an
  Optuna-backend worker, the Ray searcher in the Ray driver), just before it tells it.
- **Study note**: written by the search driver before and after a search, by ``nas fit-latency`` and by
  ``nas report``, and only when it changed (a re-profile, a refit, finished references).
- **Artifacts** (Optuna's artifact store; ``artifacts:`` in the study file, default ``runs/<name>/artifacts`` next
  to it): each trial's ArchConfig YAML with its provenance, ready for ``nas finetune``; the report's ``pareto.png``,
  ``allocation.png`` and ``trials.csv`` on the study (replaced when the report is written again). ``nas dashboard``
  serves them.

The trial's user attributes stay the machine-readable record (JSON, :mod:`nas.attributes`); the notes are written
from them, for a person.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from kernels.lazy import lazy_import
from search_spaces import ArchConfig
from search_spaces.errors import ConfigError, ResourceError, StateError

from .. import attributes as attr
from ..study import Study
from ..upstream.optuna_internals import remove_study_artifact, study_artifacts
from .notes import study_note, trial_note
from .provenance import config_text, provenance
from .storage import open_study

optuna_dashboard = lazy_import("optuna_dashboard")


# The objective names the dashboard shows (a study's metrics, by their names in the study file).
OBJECTIVE_NAMES = {"accuracy": "search_accuracy", "latency_ms": "predicted_latency_ms",
                   "energy_uj": "estimated_energy_uj"}


REMOTE_STORES = ("s3", "gs")


# ---- the artifact store -------------------------------------------------------------------------------------------
def artifact_store(location: str, where: str = "artifacts"):
    """An Optuna artifact store for a folder, ``s3://bucket[/prefix]`` or ``gs://bucket[/prefix]``."""
    scheme, _, rest = location.partition("://") if "://" in location else ("", "", location)
    if scheme in REMOTE_STORES:
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(where, f"expected {scheme}://BUCKET[/PREFIX], got {location!r}")
        try:
            if scheme == "s3":
                store = optuna.artifacts.Boto3ArtifactStore(bucket)
            else:
                store = optuna.artifacts.GCSArtifactStore(bucket)
        except ImportError as e:
            package = "boto3" if scheme == "s3" else "google-cloud-storage"
            raise ResourceError(where, f"{location} needs {package} (pip install {package}): {e}") from None
        return _Prefixed(store, prefix) if prefix else store
    if scheme not in ("", "file"):
        raise ConfigError(where, f"unknown artifact store {location!r}: a folder, s3://BUCKET or gs://BUCKET")
    folder = Path(rest)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResourceError(where, f"cannot create the artifact folder {folder}: {e.strerror}") from None
    return optuna.artifacts.FileSystemArtifactStore(str(folder))


class _Prefixed:
    """An artifact store that keeps its artifacts under a key prefix of a bucket."""

    def __init__(self, store, prefix: str) -> None:
        self.store, self.prefix = store, prefix.strip("/") + "/"

    def open_reader(self, artifact_id: str):
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


def upload(store, study_or_trial: optuna.Study | optuna.Trial, name: str, content: bytes | str) -> str:
    """Upload ``content`` as an artifact called ``name`` of a study or a live trial; returns its id."""
    data = content.encode() if isinstance(content, str) else content
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        return optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path),
                                                study_or_trial=study_or_trial)


def replace_study_artifacts(ostudy: optuna.Study, store, files: Iterable[Path]) -> list[str]:
    """Upload each file to the study, removing the study's earlier artifacts of the same name first (a report
    written again replaces its charts, it does not pile them up)."""
    files = list(files)
    names = {f.name for f in files}
    for artifact_id, name in study_artifacts(ostudy).items():
        if name in names:
            remove_study_artifact(ostudy, store, artifact_id)
    return [upload(store, ostudy, f.name, f.read_bytes()) for f in files]


def publish_trial(study: Study, trial: optuna.Trial, state: TrialState, store=None) -> None:
    """Write a live trial's note and upload its ArchConfig file, before it is told (a finished trial takes no new
    artifact). What goes wrong here is said once on the trial and never fails it."""
    attrs = trial.user_attrs
    try:
        optuna_dashboard.save_note(trial, trial_note(trial.number, state, attrs, study.latency.device))
        if store is not None and attrs.get(attr.CONFIG) and state == TrialState.COMPLETE:
            config = ArchConfig.from_json(attrs[attr.CONFIG])
            upload(store, trial, f"trial-{trial.number}.yaml", config_text(config, provenance(study, trial)))
    except Exception as e:  # noqa: BLE001 - the dashboard's view of a trial must not cost the trial itself
        trial.set_user_attr(attr.DASHBOARD_ERROR, f"{type(e).__name__}: {e}"[:500])


def note_finetune(study: Study, number: int, finetuned: Mapping[str, Any]) -> bool:
    """Add what ``nas finetune`` found to the note of the stored trial it fine-tuned (the trial's attributes are
    final once it is told: the note is where a later result goes). False when there is no such stored trial."""
    ostudy = _stored(study)
    trials = ostudy.get_trials(deepcopy=False) if ostudy is not None else []
    if not 0 <= number < len(trials):
        return False
    frozen = trials[number]
    optuna_dashboard.save_note(optuna.trial.Trial(ostudy, frozen._trial_id),
              trial_note(number, frozen.state, attr.with_test_split(frozen.user_attrs, ostudy.user_attrs, number),
                         study.latency.device, finetuned))
    return True


def note_test_split(study: Study, ostudy: optuna.Study, number: int) -> None:
    """Rewrite a stored trial's note with the test accuracy evaluated after it
    (:func:`nas.search.objective.score_test_split`)."""
    frozen = ostudy.get_trials(deepcopy=False)[number]
    optuna_dashboard.save_note(optuna.trial.Trial(ostudy, frozen._trial_id),
              trial_note(number, frozen.state, attr.with_test_split(frozen.user_attrs, ostudy.user_attrs, number),
                         study.latency.device))


def _stored(study: Study) -> optuna.Study | None:
    """The study's Optuna study when its storage holds it; None otherwise (and no SQLite file is created to find
    out)."""

    url = make_url(study.storage)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        return None
    try:
        return open_study(study, create=False)
    except (StateError, ResourceError):
        return None


def publish_study(study: Study, ostudy: optuna.Study) -> bool:
    """Write the study note and the dashboard's objective names when they changed; True if the note was written."""
    names = [OBJECTIVE_NAMES.get(m, m) for m in study.objectives.metrics]
    if ostudy.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ostudy.set_metric_names(names)
    body = study_note(study, ostudy)
    if optuna_dashboard.get_note(ostudy) == body:
        return False
    optuna_dashboard.save_note(ostudy, body)
    return True


def publish_stored_study(study: Study) -> bool:
    """:func:`publish_study` for a study that may not be in its storage yet (then there is nothing to note)."""
    ostudy = _stored(study)
    return publish_study(study, ostudy) if ostudy is not None else False


def serve(storage: Any, host: str, port: int, artifacts: Any = None) -> None:
    """Serve optuna-dashboard on ``storage`` (a URL or Optuna storage) at ``host:port`` until interrupted, with the
    trials' architecture files from ``artifacts`` (an artifact store, or None)."""
    optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=artifacts)
