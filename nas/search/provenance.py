"""An exported trial's file: its ArchConfig (``nas show`` and ``ArchConfig.load`` read it) with a ``provenance``
section: the study file, study name, trial number, its metrics and predicted latency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial

from search_spaces import ArchConfig
from search_spaces.errors import ConfigError

from .. import attributes as attr
from ..study import Study


def provenance(study: Study, trial: FrozenTrial, study_attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where an exported trial comes from and what it scored (``study_attrs``: the stored study's attributes, which
    hold a test accuracy evaluated after the trial)."""
    attrs = attr.with_test_split(trial.user_attrs, study_attrs or {}, trial.number)
    copied = (attr.SEARCH_ACCURACY, attr.SEARCH_SE, attr.TEST_ACCURACY, attr.TEST_SE, attr.LATENCY_MS,
              attr.LATENCY_BREAKDOWN, attr.ENERGY_UJ, attr.ENERGY_BREAKDOWN, attr.MOE_SPLIT, attr.REFERENCE)
    return {
        "study_file": str(study.path.resolve()),  # nas finetune works from any folder
        "study": study.name, "trial": trial.number, "latency_device": study.latency.device,
        **{key: attrs.get(key) for key in copied},
    }


def config_text(config: ArchConfig, origin: dict[str, Any]) -> str:
    """An exported ArchConfig file's text: the architecture and its ``provenance``."""
    return yaml.safe_dump({**config.to_dict(), "provenance": origin}, sort_keys=False)


def write_config(path: Path, config: ArchConfig, origin: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_text(config, origin))
    return path


def named_study(path: str | Path) -> str | None:
    """The study file an exported config names in its provenance, read without validating the config (whose
    primitives may come from that study's plugins); None when it names none or cannot be read."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None  # read_export says what is wrong with the file
    origin = data.get("provenance") if isinstance(data, dict) else None
    study = origin.get("study_file") if isinstance(origin, dict) else None
    return study if isinstance(study, str) and study else None


def read_export(path: str | Path) -> tuple[ArchConfig, dict[str, Any]]:
    """An exported (or plain) ArchConfig file and its provenance (empty for a plain one)."""
    config = ArchConfig.load(path)  # validates, with errors naming the file
    origin = yaml.safe_load(Path(path).read_text()).get("provenance") or {}
    if not isinstance(origin, dict):
        raise ConfigError("provenance", f"expected a mapping, got {origin!r}", str(path))
    return config, origin


__all__ = ["config_text", "named_study", "provenance", "read_export", "write_config"]
