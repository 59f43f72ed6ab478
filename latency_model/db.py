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

An *op* is what the predictor composes a model from: a module a model runs (``module.attention``, ``module.mlp``,
...) or a TVM kernel (``tvm.matmul``, ``tvm.matshift``, ``tvm.matadd``); :mod:`latency_model.keys` names them. Its
shape is a small dict of named integers (``{"M": 197, "K": 192, "N": 576}``), stored as canonical JSON
(:func:`~latency_model.keys.shape_key`).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from search_spaces.errors import ResourceError

from .keys import measurement_key, model_key, shape_key

SCHEMA_VERSION = 7
DEFAULT_URL = "sqlite:///studies/latency.db"


class LatencyDBError(ResourceError):
    """The measurement database cannot be opened or used; ``where`` is the setting that names it (``latency.db``),
    the message says which URL and why."""


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class Device(Base):
    """A machine + target the kernels were measured on."""

    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    target: Mapped[str] = mapped_column(Text)  # TVM target as JSON
    cpu_model: Mapped[str] = mapped_column(String(200), default="")
    gpu_model: Mapped[str] = mapped_column(String(200), default="")
    cores: Mapped[int] = mapped_column(Integer, default=0)
    tvm_version: Mapped[str] = mapped_column(String(50), default="")
    torch_version: Mapped[str] = mapped_column(String(50), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=lambda: datetime.now(timezone.utc))
    measurements: Mapped[list["Measurement"]] = relationship(back_populates="device")


class Measurement(Base):
    """One timing of one op at one shape on one device."""

    __tablename__ = "measurements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    op: Mapped[str] = mapped_column(String(64), index=True)
    variant: Mapped[str] = mapped_column(String(64), default="")
    shape: Mapped[str] = mapped_column(String(400))  # canonical JSON of named dims
    dtype: Mapped[str] = mapped_column(String(32), default="")
    tuned: Mapped[bool] = mapped_column(Boolean, default=False)
    trials: Mapped[int] = mapped_column(Integer, default=0)  # added in schema 2
    tuning_record: Mapped[str] = mapped_column(String(500), default="")  # cache folder of the kernel; schema 2
    median_ms: Mapped[float] = mapped_column(Float)
    min_ms: Mapped[float] = mapped_column(Float)
    max_ms: Mapped[float] = mapped_column(Float)
    std_ms: Mapped[float] = mapped_column(Float)
    repeats: Mapped[int] = mapped_column(Integer)
    spread: Mapped[float] = mapped_column(Float, default=0.0)  # schema 5
    contention: Mapped[float] = mapped_column(Float, default=0.0)  # schema 5
    attempts: Mapped[int] = mapped_column(Integer, default=1)  # schema 5
    noisy: Mapped[bool] = mapped_column(Boolean, default=False)  # schema 5
    measured_at: Mapped[datetime] = mapped_column(DateTime, default=lambda: datetime.now(timezone.utc), index=True)
    device: Mapped[Device] = relationship(back_populates="measurements")


class ModelMeasurement(Base):
    """One timing of a whole model (an ArchConfig at a batch size): calibrates how module times compose."""

    __tablename__ = "model_measurements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    config: Mapped[str] = mapped_column(Text)  # ArchConfig JSON
    batch: Mapped[int] = mapped_column(Integer)
    # block -> how the routers spread the timed pass's images (MoELoad JSON; a list of expert shares in tables
    # written before per-image loads). The column keeps its first name so that stored tables open unchanged.
    moe_shares: Mapped[str] = mapped_column(Text, default="{}")
    median_ms: Mapped[float] = mapped_column(Float)
    min_ms: Mapped[float] = mapped_column(Float)
    max_ms: Mapped[float] = mapped_column(Float)
    std_ms: Mapped[float] = mapped_column(Float)
    repeats: Mapped[int] = mapped_column(Integer)
    spread: Mapped[float] = mapped_column(Float, default=0.0)  # schema 5
    contention: Mapped[float] = mapped_column(Float, default=0.0)  # schema 5
    attempts: Mapped[int] = mapped_column(Integer, default=1)  # schema 5
    noisy: Mapped[bool] = mapped_column(Boolean, default=False)  # schema 5
    # the dense model of the same shape and batch, timed in turn with this one (schema 6; None before)
    reference_ms: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    # "<block>.attention" / "<block>.mlp" -> ms, each part timed inside the running model (schema 7; None before,
    # and in the compiled runtime, where a block runs as one graph)
    parts_ms: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    measured_at: Mapped[datetime] = mapped_column(DateTime, default=lambda: datetime.now(timezone.utc))


class Failure(Base):
    """A shape that could not be measured (a TVM compile or tuning error, a module that would not run), and why:
    kept so a failure is on record, not only on the screen of the run that hit it."""

    __tablename__ = "failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    job: Mapped[str] = mapped_column(String(500))  # what was being measured, as the profile labels it
    reason: Mapped[str] = mapped_column(Text)
    trials: Mapped[int] = mapped_column(Integer, default=0)
    failed_at: Mapped[datetime] = mapped_column(DateTime, default=lambda: datetime.now(timezone.utc))


# ---- migrations: version n -> n + 1, each keeping every row ---------------------------------------------------
def _migrate_1_to_2(connection) -> None:
    """Schema 2 records the tuning budget and the kernel's cache entry with every measurement."""
    connection.execute(text("ALTER TABLE measurements ADD COLUMN trials INTEGER NOT NULL DEFAULT 0"))
    connection.execute(text("ALTER TABLE measurements ADD COLUMN tuning_record VARCHAR(500) NOT NULL DEFAULT ''"))


def _migrate_2_to_3(connection) -> None:
    """Schema 3 adds whole-model timings (the composition calibration)."""
    ModelMeasurement.__table__.create(connection)


def _migrate_3_to_4(connection) -> None:
    """Schema 4 records the shapes that failed to measure."""
    Failure.__table__.create(connection)


def _migrate_4_to_5(connection) -> None:
    """Schema 5 records how trustworthy each timing is; earlier rows read as one clean attempt. (A table created by
    an earlier migration from today's definition has the columns already.)"""
    columns = {"spread": "FLOAT NOT NULL DEFAULT 0", "contention": "FLOAT NOT NULL DEFAULT 0",
               "attempts": "INTEGER NOT NULL DEFAULT 1", "noisy": "BOOLEAN NOT NULL DEFAULT false"}
    for table in ("measurements", "model_measurements"):
        present = {c["name"] for c in inspect(connection).get_columns(table)}
        for name, kind in columns.items():
            if name not in present:
                connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))


def _migrate_5_to_6(connection) -> None:
    """Schema 6 times a reference with each whole model; earlier rows have none (their composition reads them as
    timed)."""
    if "reference_ms" not in {c["name"] for c in inspect(connection).get_columns("model_measurements")}:
        connection.execute(text("ALTER TABLE model_measurements ADD COLUMN reference_ms FLOAT"))


def _migrate_6_to_7(connection) -> None:
    """Schema 7 times each block's parts in situ with a whole model; earlier rows have none."""
    if "parts_ms" not in {c["name"] for c in inspect(connection).get_columns("model_measurements")}:
        connection.execute(text("ALTER TABLE model_measurements ADD COLUMN parts_ms TEXT"))


MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4, 4: _migrate_4_to_5, 5: _migrate_5_to_6,
              6: _migrate_6_to_7}


def redact(url: str) -> str:
    """A database URL fit for messages and logs: the password hidden (everything before '@' if it does not parse)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@", 1)[-1] if "@" in url else url


def anchor_sqlite(url: str, folder: Path) -> str:
    """``url`` with a relative SQLite file path made relative to ``folder`` (a study's), as every other path of a
    study file is; SQLAlchemy alone would resolve it against the current directory. Other URLs are returned as
    given."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # refused with its key where it is checked
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:") or Path(database).is_absolute():
        return url
    return parsed.set(database=str(folder / database)).render_as_string(hide_password=False)


def connect(url: str = DEFAULT_URL) -> Engine:
    """Open (and create or migrate) the measurement database at ``url``."""
    try:
        engine = create_engine(url, connect_args={"timeout": 60} if url.startswith("sqlite") else {})
    except (ArgumentError, NoSuchModuleError) as e:
        raise LatencyDBError("latency.db", f"measurement database URL {redact(url)!r} is not usable: {e}") from None
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            # WAL lets readers run while a profiler writes; busy_timeout makes concurrent writers wait, not fail.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

    for attempt in range(3):
        try:
            _create_or_migrate(engine)
            return engine
        except IntegrityError:
            continue  # another process created the schema at the same moment: look again
        except OperationalError as e:
            if attempt < 2 and "already exists" in str(e.orig):
                continue
            raise LatencyDBError("latency.db", f"cannot open measurement database {redact(url)}: {e.orig}") from None
    raise LatencyDBError("latency.db", f"cannot open measurement database {redact(url)}: schema creation kept racing")


def _create_or_migrate(engine: Engine) -> None:
    with engine.begin() as connection:
        tables = set(inspect(connection).get_table_names())
        if "measurements" not in tables:
            Base.metadata.create_all(connection)
            connection.execute(SchemaVersion.__table__.insert().values(version=SCHEMA_VERSION))
            return
        version = connection.execute(select(func.max(SchemaVersion.version))).scalar() or 1
        if version > SCHEMA_VERSION:
            raise LatencyDBError(
                "latency.db",
                f"the measurement database has schema {version}, newer than this code's {SCHEMA_VERSION}: upgrade"
            )
        while version < SCHEMA_VERSION:
            MIGRATIONS[version](connection)
            version += 1
            connection.execute(SchemaVersion.__table__.delete())
            connection.execute(SchemaVersion.__table__.insert().values(version=version))


def host_description() -> dict[str, Any]:
    """CPU model and core count of this machine, plus the versions that shape its timings."""
    import os

    import torch
    import tvm

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu_model": cpu, "cores": os.cpu_count() or 0, "tvm_version": tvm.__version__,
            "torch_version": torch.__version__}


def get_or_create_device(engine: Engine, name: str, target: Mapping[str, Any], **description: Any) -> int:
    """The id of device ``name``; created with ``target`` and the description on first use. Safe when several
    processes register the same device at once: the loser of the insert race reads the winner's row."""
    for _ in range(2):
        try:
            with Session(engine) as session, session.begin():
                device = session.scalar(select(Device).where(Device.name == name))
                if device is None:
                    device = Device(name=name, target=json.dumps(target, sort_keys=True), **description)
                    session.add(device)
                    session.flush()
                return device.id
        except IntegrityError:
            continue  # another process inserted it between our select and insert
    raise LatencyDBError("latency.db", f"cannot register device {name!r}")


@dataclass(frozen=True)
class Row:
    """A measurement as plain data (newest per op/variant/shape/dtype when read with :func:`latest`)."""

    op: str
    variant: str
    shape: dict[str, int]
    dtype: str
    tuned: bool
    trials: int
    median_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    repeats: int
    spread: float = 0.0
    contention: float = 0.0
    noisy: bool = False


def _quality(timing: Any, attempts: int, noisy: bool) -> dict[str, Any]:
    return {"spread": float(getattr(timing, "spread", 0.0)), "contention": float(getattr(timing, "contention", 0.0)),
            "attempts": attempts, "noisy": noisy}


def add_measurement(engine: Engine, device_id: int, op: str, variant: str, shape: Mapping[str, int], *,
                    dtype: str = "", tuned: bool = False, trials: int = 0, tuning_record: str = "",
                    timing: Any, attempts: int = 1, noisy: bool = False) -> None:
    """Append one measurement (``timing`` has median_ms, min_ms, max_ms, std_ms, repeats, and optionally spread and
    contention) in its own transaction; ``noisy`` marks a timing that stayed noisy after ``attempts`` tries."""
    with Session(engine) as session, session.begin():
        session.add(
            Measurement(
                device_id=device_id, op=str(op), variant=variant, shape=shape_key(shape), dtype=dtype, tuned=tuned,
                trials=trials, tuning_record=tuning_record, median_ms=timing.median_ms, min_ms=timing.min_ms,
                max_ms=timing.max_ms, std_ms=timing.std_ms, repeats=timing.repeats,
                **_quality(timing, attempts, noisy),
            )
        )


def latest(engine: Engine, device: str, ops: Iterable[str] | None = None) -> list[Row]:
    """The newest measurement of every (op, variant, shape, dtype) of a device."""
    with Session(engine) as session:
        device_id = session.scalar(select(Device.id).where(Device.name == device))
        if device_id is None:
            return []
        query = select(Measurement).where(Measurement.device_id == device_id).order_by(Measurement.measured_at,
                                                                                       Measurement.id)
        if ops is not None:
            query = query.where(Measurement.op.in_(list(ops)))
        newest: dict[tuple, Measurement] = {}
        for m in session.scalars(query):
            newest[(m.op, m.variant, m.shape, m.dtype)] = m
        return [
            Row(m.op, m.variant, json.loads(m.shape), m.dtype, m.tuned, m.trials, m.median_ms, m.min_ms, m.max_ms,
                m.std_ms, m.repeats, m.spread, m.contention, m.noisy)
            for m in newest.values()
        ]


def measured_keys(engine: Engine, device: str) -> set[tuple[str, str, str, str]]:
    """(op, variant, shape key, dtype) of everything already measured on a device: what profiling can skip."""
    with Session(engine) as session:
        rows = session.execute(
            select(Measurement.op, Measurement.variant, Measurement.shape, Measurement.dtype)
            .join(Device)
            .where(Device.name == device)
            .distinct()
        )
        return {tuple(r) for r in rows}


def noisy_keys(engine: Engine, device: str) -> set[tuple]:
    """Row keys (as :func:`measured_keys`, and ``("model", config, batch)`` for whole models) whose newest timing is
    marked noisy: what ``nas profile --remeasure`` re-times."""
    keys: set[tuple] = {measurement_key(r.op, r.variant, r.shape, r.dtype) for r in latest(engine, device) if r.noisy}
    return keys | {model_key(m.config, m.batch) for m in model_rows(engine, device) if m.noisy}


def add_model_measurement(engine: Engine, device_id: int, config_json: str, batch: int,
                          moe_routing: Mapping[int, Any], timing: Any, attempts: int = 1,
                          noisy: bool = False, reference_ms: float | None = None,
                          parts_ms: Mapping[str, float] | None = None) -> None:
    """``moe_routing``: per MoE block, its routing as JSON-able data (``MoELoad.to_json()``); ``reference_ms``: the
    dense model timed in turn with it; ``parts_ms``: its parts timed in situ."""
    with Session(engine) as session, session.begin():
        session.add(ModelMeasurement(
            device_id=device_id, config=config_json, batch=batch, moe_shares=json.dumps(dict(moe_routing)),
            median_ms=timing.median_ms, min_ms=timing.min_ms, max_ms=timing.max_ms, std_ms=timing.std_ms,
            repeats=timing.repeats, reference_ms=reference_ms,
            parts_ms=None if parts_ms is None else json.dumps(dict(parts_ms), sort_keys=True),
            **_quality(timing, attempts, noisy)))


@dataclass(frozen=True)
class ModelRow:
    config: str
    batch: int
    moe_routing: dict[int, Any]  # block -> MoELoad JSON (or expert shares, in older tables)
    median_ms: float
    spread: float = 0.0
    contention: float = 0.0
    noisy: bool = False
    reference_ms: float | None = None  # the dense model timed in turn with it (tables before schema 6: None)
    parts_ms: dict[str, float] | None = None  # its parts timed in situ (before schema 7, and compiled: None)

    def speed_factor(self, reference_ms: float | None) -> float:
        """What scales its timings to the speed the dense model ran ``reference_ms`` at (1 when it or
        ``reference_ms`` has no reference): what makes timings of several launches comparable."""
        if not self.reference_ms or not reference_ms:
            return 1.0
        return reference_ms / self.reference_ms

    def at_speed(self, reference_ms: float | None) -> float:
        """Its time had it been taken at the speed the dense model ran ``reference_ms`` at."""
        return self.median_ms * self.speed_factor(reference_ms)


def add_failure(engine: Engine, device_id: int, job: str, reason: str, trials: int = 0) -> None:
    with Session(engine) as session, session.begin():
        session.add(Failure(device_id=device_id, job=job[:500], reason=reason, trials=trials))


def failures(engine: Engine, device: str) -> list[tuple[str, str, datetime]]:
    """(job, reason, when) of every failed measurement of ``device``, oldest first."""
    with Session(engine) as session:
        query = (select(Failure.job, Failure.reason, Failure.failed_at).join(Device, Failure.device_id == Device.id)
                 .where(Device.name == device).order_by(Failure.id))
        return [tuple(row) for row in session.execute(query)]


def model_rows(engine: Engine, device: str) -> list[ModelRow]:
    """The newest whole-model timing of every (config, batch) of a device."""
    with Session(engine) as session:
        query = (select(ModelMeasurement).join(Device, ModelMeasurement.device_id == Device.id)
                 .where(Device.name == device).order_by(ModelMeasurement.measured_at, ModelMeasurement.id))
        newest = {(m.config, m.batch): m for m in session.scalars(query)}
        return [ModelRow(m.config, m.batch, {int(k): v for k, v in json.loads(m.moe_shares).items()}, m.median_ms,
                         m.spread, m.contention, m.noisy, m.reference_ms,
                         None if m.parts_ms is None else json.loads(m.parts_ms))
                for m in newest.values()]


def devices(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(select(Device.name).order_by(Device.name)))


def device_info(engine: Engine, name: str) -> dict[str, Any]:
    """What the table knows of a device (target, CPU, versions): stored in the predictor file it is fitted into."""
    with Session(engine) as session:
        device = session.scalar(select(Device).where(Device.name == name))
        if device is None:
            return {}
        return {"target": json.loads(device.target), "cpu_model": device.cpu_model, "gpu_model": device.gpu_model,
                "cores": device.cores, "tvm_version": device.tvm_version, "torch_version": device.torch_version}
