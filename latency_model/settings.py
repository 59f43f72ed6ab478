"""The ``latency:`` section of a study file: where and how latency is measured and predicted.

    latency:
      target: cpu                          # cpu | cuda | cuda:sm_XX | a TVM target dict
      device: null                         # name in the measurement table (default: from the target,
                                           #   e.g. cpu-rocketlake-2c)
      db: null                             # any SQLAlchemy URL (default: sqlite:///<study folder>/latency.db;
                                           #   a relative SQLite path is relative to the study's folder)
      predictor: null                      # default: latency_<device>.json; relative to the study's folder
      batch_sizes: [1]                     # batch sizes to profile and predict at
      trials: 64                           # MetaSchedule trials per kernel (0: untuned default schedules)
      repeats: 15                          # timing repeats per measurement
      calibration: 8                       # whole models timed per batch size to calibrate how ops compose
      max_spread: 1.0                      # a timing whose repeats spread wider (IQR / median) is noisy
      max_contention: 0.1                  # ... or while other processes used more of the CPU than this share
      retimes: 2                           # a noisy timing is taken again up to this many times, then marked
      max_model_error: 0.5                 # nas fit-latency refuses a predictor whose whole-model error, out of
                                           #   sample (leave-one-out MAPE), is larger
      runtime: eager                       # eager | compiled: how models run around the kernels (torch op by op,
                                           #   or torch.compile'd); the device name says compiled, so the two
                                           #   runtimes' measurements and predictors never mix
      prebuilt: null                       # a `nas kernels build` folder: the kernels run from its library with the
                                           #   TVM runtime alone (nothing compiled or tuned here; relative to the
                                           #   study's folder)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kernels import target as targets
from kernels.host import cpu_name, cpu_threads
from kernels.spec import DEFAULT_CUDA_ARCH
from search_spaces.config import ConfigError
from search_spaces.errors import ResourceError
from search_spaces.schema import check_keys, check_number

from .db import DEFAULT_URL, anchor_sqlite

KEYS = ("target", "device", "db", "predictor", "batch_sizes", "trials", "repeats", "calibration", "max_spread",
        "max_contention", "retimes", "max_model_error", "runtime", "prebuilt")
RUNTIMES = ("eager", "compiled")
COMPILED_SUFFIX = "+compiled"  # ends the device name of the compiled runtime's measurements


def check_compiler(where: str = "latency.runtime") -> None:
    """The compiled runtime builds C++ with the compiler inductor uses (``$CXX``, else ``g++``): one line, before
    any work, when there is none."""
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        raise ResourceError(where, f"the compiled runtime runs the glue around the kernels through torch.compile "
                                   f"(inductor), which builds C++ with {compiler!r}, not found on PATH: install one "
                                   f"(apt-get install g++), point $CXX at one, or use latency.runtime: eager")


def default_device_name(target: Any) -> str:
    """A readable device name from a target: ``<kind>-<cpu or arch>-<cores>c``; ``cuda-<arch>`` for CUDA, named
    without TVM (a GPU machine may have its runtime alone, or none). A CPU is named by LLVM, through TVM: where TVM
    is not installed it stays unnamed (``""``), which training does not need; give ``latency.device`` there."""
    text = target.strip() if isinstance(target, str) else ""
    if text == "cuda" or text.startswith("cuda:"):
        return f"cuda-{text.split(':', 1)[1] if ':' in text else DEFAULT_CUDA_ARCH}"
    try:
        if text == "cpu":  # named without importing TVM where this machine was named before
            return f"cpu-{cpu_name()}-{cpu_threads()}c"
        described = targets.describe(targets.resolve(target))
    except ImportError:  # no TVM here
        return ""
    if described["kind"] == "cuda":
        return f"cuda-{described.get('arch', 'gpu')}"
    kind = "cpu" if described["kind"] == "llvm" else described["kind"]
    return f"{kind}-{described.get('mcpu', 'generic')}-{described.get('num-cores', 0)}c"


@dataclass(frozen=True)
class LatencySettings:
    target: str = "cpu"
    device: str = ""
    db: str = ""
    predictor: str = ""
    batch_sizes: tuple[int, ...] = (1,)
    trials: int = 64
    repeats: int = 15
    calibration: int = 8
    max_spread: float = 1.0
    max_contention: float = 0.1
    retimes: int = 2
    max_model_error: float = 0.5
    runtime: str = "eager"
    prebuilt: str = ""

    @property
    def compiled(self) -> bool:
        return self.runtime == "compiled"

    def check_runtime(self) -> None:
        """Refuse, before any work, a runtime this machine cannot run (the compiled one without a C++ compiler)."""
        if self.compiled:
            check_compiler()

    def is_noisy(self, timing: Any) -> bool:
        """Whether a timing is too noisy to fit: its repeats spread too wide, or other processes competed."""
        return timing.spread > self.max_spread or timing.contention > self.max_contention

    def resolved(self, study_dir: Path | None = None) -> "LatencySettings":
        """Fill the defaults that depend on the target (device name) and the study's folder (table, predictor)."""
        folder = study_dir or Path("studies")
        device = self.device or default_device_name(self.target)
        if self.compiled and not device.endswith(COMPILED_SUFFIX):
            device += COMPILED_SUFFIX
        predictor = self.predictor or f"latency_{device or 'unnamed'}.json"
        predictor = str(folder / predictor if study_dir is not None or not self.predictor else predictor)
        if self.db:
            db = self.db if study_dir is None else anchor_sqlite(self.db, study_dir)
        else:
            db = DEFAULT_URL if study_dir is None else f"sqlite:///{folder / 'latency.db'}"
        prebuilt = str(folder / self.prebuilt) if self.prebuilt and study_dir is not None else self.prebuilt
        return replace(self, device=device, predictor=predictor, db=db, prebuilt=prebuilt)

    @classmethod
    def from_dict(cls, data: Any, where: str = "latency") -> "LatencySettings":
        data = check_keys(data if data is not None else {}, where, (), KEYS)
        values: dict[str, Any] = {}
        for key in ("target", "device", "db", "predictor", "prebuilt"):
            if data.get(key) is not None:
                value = data[key]
                if key == "target" and isinstance(value, Mapping):
                    value = json.dumps(dict(value))
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"{where}.{key}", f"expected a non-empty string, got {value!r}")
                values[key] = value
        if data.get("runtime") is not None:
            if data["runtime"] not in RUNTIMES:
                raise ConfigError(f"{where}.runtime", f"unknown runtime {data['runtime']!r}; expected one of "
                                                      f"{', '.join(RUNTIMES)}")
            values["runtime"] = data["runtime"]
        if "batch_sizes" in data:
            sizes = data["batch_sizes"]
            if not isinstance(sizes, list) or not sizes or any(
                isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes
            ):
                raise ConfigError(f"{where}.batch_sizes", f"expected a list of positive integers, got {sizes!r}")
            values["batch_sizes"] = tuple(sizes)
        for key in ("max_spread", "max_contention", "max_model_error"):
            if key in data:
                values[key] = check_number(data[key], f"{where}.{key}", above=0, maximum=10)
        for key, minimum in (("trials", 0), ("repeats", 1), ("calibration", 0), ("retimes", 0)):
            if key in data:
                values[key] = check_number(data[key], f"{where}.{key}", integer=True, minimum=minimum)
        if values.get("calibration") in (1, 2, 3):
            raise ConfigError(f"{where}.calibration", f"expected 0 (no whole-model calibration, no out-of-sample "
                                                      f"check) or at least 4 (the check leaves one model out of a "
                                                      f"three-number fit), got {values['calibration']}")
        return cls(**values)
