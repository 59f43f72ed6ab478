"""Connecting to the measurement database (created or migrated on first open), and the machine a row was measured on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError

from kernels.lazy import lazy_import

from .migrations import create_or_migrate
from .schema import LatencyDBError

tvm = lazy_import("tvm")


DEFAULT_URL = "sqlite:///studies/latency.db"


def redact(url: str) -> str:
    """A database URL fit for messages and logs: the password hidden (everything before '@' if it does not parse)."""

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@", 1)[-1] if "@" in url else url


def anchor_sqlite(url: str, folder: Path) -> str:
    """``url`` with a relative SQLite file path made relative to ``folder`` (a study's), as every other path of a
    study file is; SQLAlchemy alone would resolve it against the current directory. Other URLs are returned as
    given."""

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
            create_or_migrate(engine)
            return engine
        except IntegrityError:
            continue  # another process created the schema at the same moment: look again
        except OperationalError as e:
            if attempt < 2 and "already exists" in str(e.orig):
                continue
            raise LatencyDBError("latency.db", f"cannot open measurement database {redact(url)}: {e.orig}") from None
    raise LatencyDBError("latency.db", f"cannot open measurement database {redact(url)}: schema creation kept racing")


def host_description() -> dict[str, Any]:
    """CPU model and core count of this machine, plus the versions that shape its timings."""


    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu_model": cpu, "cores": os.cpu_count() or 0, "tvm_version": tvm.__version__,
            "torch_version": torch.__version__}
