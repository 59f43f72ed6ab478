"""Opening a database of an older schema migrates it in place, one version at a time, keeping every row."""

from __future__ import annotations

from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import Engine

from .schema import SCHEMA_VERSION, Base, Failure, LatencyDBError, ModelMeasurement, SchemaVersion


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


def create_or_migrate(engine: Engine) -> None:
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
