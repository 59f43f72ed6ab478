"""The tables of the measurement database and its schema version (see :mod:`latency_model.db` for what they hold)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from search_spaces.errors import ResourceError

SCHEMA_VERSION = 7


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


class Timing:
    """The columns of one timing and how far it can be trusted, shared by module, kernel and whole-model rows (a
    column added to a table is added by a migration too)."""

    median_ms: Mapped[float] = mapped_column(Float)
    min_ms: Mapped[float] = mapped_column(Float)
    max_ms: Mapped[float] = mapped_column(Float)
    std_ms: Mapped[float] = mapped_column(Float)
    repeats: Mapped[int] = mapped_column(Integer)
    spread: Mapped[float] = mapped_column(Float, default=0.0)  # schema 5
    contention: Mapped[float] = mapped_column(Float, default=0.0)  # schema 5
    attempts: Mapped[int] = mapped_column(Integer, default=1)  # schema 5
    noisy: Mapped[bool] = mapped_column(Boolean, default=False)  # schema 5


class Measurement(Timing, Base):
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
    measured_at: Mapped[datetime] = mapped_column(DateTime, default=lambda: datetime.now(timezone.utc), index=True)
    device: Mapped[Device] = relationship(back_populates="measurements")


class ModelMeasurement(Timing, Base):
    """One timing of a whole model (an ArchConfig at a batch size): calibrates how module times compose."""

    __tablename__ = "model_measurements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    config: Mapped[str] = mapped_column(Text)  # ArchConfig JSON
    batch: Mapped[int] = mapped_column(Integer)
    # block -> how the routers spread the timed pass's images (MoELoad JSON; a list of expert shares in tables
    # written before per-image loads). The column keeps its first name so that stored tables open unchanged.
    moe_shares: Mapped[str] = mapped_column(Text, default="{}")
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
