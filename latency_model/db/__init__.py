"""The measurement table: devices and the latency of each operation at each shape, in any SQLAlchemy database.

Default URL ``sqlite:///studies/latency.db``. The schema carries a version (table ``schema_version``); opening a
database of an older version migrates it in place, keeping every row. Measurements are append-only: re-profiling a
shape adds a row with a newer timestamp, and readers take the newest row per (device, op, variant, shape), so no
earlier figure is ever overwritten.

Every timing carries how far it can be trusted (schema 5): ``spread`` (interquartile range over median of its
repeats), ``contention`` (share of the CPU other processes used meanwhile), ``attempts`` (timings taken: a noisy one
is re-timed) and ``noisy`` (still noisy after its last attempt). ``nas fit-latency`` refuses a table whose newest rows
are marked noisy; ``nas profile --remeasure`` re-times them (a new row, newest wins).

A whole model's timing carries its reference (schema 6): ``reference_ms``, the dense model of the same shape and
batch timed in turn with it in the same process. A machine's speed drifts between launches far more than two
models' ratio does; the composition calibration reads each model's time at its launch's speed (``ModelRow.at_speed``).

A whole model's timing carries its parts timed in situ (schema 7): ``parts_ms``, each block's attention and MLP
timed inside the running model (:func:`latency_model.timing.time_parts`; eager runtime only), from which the
predictor learns what each choice costs as a model runs it rather than alone.

The package's modules: :mod:`.schema` (the tables), :mod:`.migrations` (older schemas brought up to date),
:mod:`.connection` (opening a database) and :mod:`.queries` (writing and reading rows); import them from here.

An *op* is what the predictor composes a model from: a module a model runs (``module.attention``, ``module.mlp``,
...) or a TVM kernel (``tvm.matmul``, ``tvm.matshift``, ``tvm.matadd``); :mod:`latency_model.keys` names them. Its
shape is a small dict of named integers (``{"M": 197, "K": 192, "N": 576}``), stored as canonical JSON
(:func:`~latency_model.keys.shape_key`).
"""

from .connection import DEFAULT_URL, anchor_sqlite, connect, host_description, redact
from .queries import (
                      ModelRow,
                      Row,
                      add_failure,
                      add_measurement,
                      add_model_measurement,
                      device_info,
                      devices,
                      failures,
                      get_or_create_device,
                      latest,
                      measured_keys,
                      model_rows,
                      noisy_keys,
)
from .schema import (
                      SCHEMA_VERSION,
                      Base,
                      Device,
                      Failure,
                      LatencyDBError,
                      Measurement,
                      ModelMeasurement,
                      SchemaVersion,
                      Timing,
)

__all__ = ["DEFAULT_URL", "SCHEMA_VERSION", "Base", "Device", "Failure", "LatencyDBError", "Measurement",
           "ModelMeasurement", "ModelRow", "Row", "SchemaVersion", "Timing", "add_failure", "add_measurement",
           "add_model_measurement", "anchor_sqlite", "connect", "device_info", "devices", "failures",
           "get_or_create_device", "host_description", "latest", "measured_keys", "model_rows", "noisy_keys", "redact"]
