"""Writing and reading the measurement table: devices, module and kernel timings (newest row per key wins), whole-model
timings, failures."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..keys import measurement_key, model_key, shape_key
from .schema import Device, Failure, LatencyDBError, Measurement, ModelMeasurement


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
