import multiprocessing as mp

import pytest
from sqlalchemy import create_engine, text

from kernels.measure import Timing
from latency_model import db


def _timing(ms: float) -> Timing:
    return Timing(ms, ms * 0.9, ms * 1.1, ms * 0.05, 5)


def test_schema_round_trip_and_newest_row_wins(tmp_path):
    url = f"sqlite:///{tmp_path / 'lat.db'}"
    engine = db.connect(url)
    device = db.get_or_create_device(engine, "dev-a", {"kind": "llvm"}, cores=2)
    assert db.get_or_create_device(engine, "dev-a", {"kind": "llvm"}) == device
    db.add_measurement(engine, device, "tvm.matmul", "fp32", {"M": 4, "K": 8, "N": 2}, dtype="float32",
                       tuned=True, trials=8, timing=_timing(1.5))
    db.add_measurement(engine, device, "tvm.matmul", "fp32", {"N": 2, "K": 8, "M": 4}, dtype="float32",
                       tuned=True, trials=16, timing=_timing(1.2))  # re-profiled: same shape, new row
    rows = db.latest(db.connect(url), "dev-a")
    assert len(rows) == 1
    row = rows[0]
    assert (row.op, row.variant, row.shape, row.trials, row.median_ms) == ("tvm.matmul", "fp32", {"M": 4, "K": 8, "N": 2}, 16, 1.2)
    # nothing was overwritten: both rows are kept
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM measurements")).scalar() == 2
    assert db.measured_keys(engine, "dev-a") == {("tvm.matmul", "fp32", '{"K":8,"M":4,"N":2}', "float32")}
    assert db.latest(engine, "nobody") == []


def test_migration_from_schema_1_keeps_rows(tmp_path):
    path = tmp_path / "old.db"
    old = create_engine(f"sqlite:///{path}")
    with old.begin() as c:  # the version-1 layout: no trials or tuning_record columns
        c.execute(text("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)"))
        c.execute(text("INSERT INTO schema_version VALUES (1)"))
        c.execute(text(
            "CREATE TABLE devices (id INTEGER PRIMARY KEY, name VARCHAR(200) UNIQUE, target TEXT, cpu_model VARCHAR, "
            "gpu_model VARCHAR, cores INTEGER, tvm_version VARCHAR, torch_version VARCHAR, created_at DATETIME)"))
        c.execute(text(
            "CREATE TABLE measurements (id INTEGER PRIMARY KEY, device_id INTEGER REFERENCES devices(id), op VARCHAR, "
            "variant VARCHAR, shape VARCHAR, dtype VARCHAR, tuned BOOLEAN, median_ms FLOAT, min_ms FLOAT, "
            "max_ms FLOAT, std_ms FLOAT, repeats INTEGER, measured_at DATETIME)"))
        c.execute(text("INSERT INTO devices VALUES (1, 'old-dev', '{}', 'cpu', '', 2, '0.26', '2.13', "
                       "'2026-01-01 00:00:00')"))
        c.execute(text("INSERT INTO measurements VALUES (1, 1, 'tvm.matshift', 'select', :shape, "
                       "'int32', 1, 0.5, 0.4, 0.6, 0.01, 5, '2026-01-01 00:00:00')"), {"shape": '{"K":2,"M":1,"N":3}'})
    engine = db.connect(f"sqlite:///{path}")
    with engine.connect() as c:
        assert c.execute(text("SELECT version FROM schema_version")).scalar() == db.SCHEMA_VERSION
    rows = db.latest(engine, "old-dev")
    assert len(rows) == 1 and rows[0].median_ms == 0.5 and rows[0].trials == 0
    device = db.get_or_create_device(engine, "old-dev", {})
    db.add_measurement(engine, device, "tvm.matshift", "select", {"M": 2, "K": 2, "N": 3}, trials=4, timing=_timing(1))
    assert len(db.latest(engine, "old-dev")) == 2


def test_newer_schema_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = db.connect(url)
    with engine.begin() as c:
        c.execute(text("UPDATE schema_version SET version = 99"))
    with pytest.raises(db.LatencyDBError, match="schema 99, newer"):
        db.connect(url)


def test_bad_url_is_reported_without_password():
    with pytest.raises(db.LatencyDBError) as info:
        db.connect("nosuchdb://user:secret@host/x")
    assert "secret" not in str(info.value) and "nosuchdb" in str(info.value)


def _writer(url: str, name: str, count: int) -> None:
    engine = db.connect(url)
    device = db.get_or_create_device(engine, "shared", {"kind": "llvm"})
    for i in range(count):
        db.add_measurement(engine, device, "tvm.matmul", name, {"M": i, "K": 1, "N": 1}, timing=_timing(1.0 + i))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_processes_writing_at_once_lose_nothing(database, tmp_path, request):
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else f"sqlite:///{tmp_path / 'shared.db'}"
    db.connect(url)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, name, 60)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = db.latest(db.connect(url), "shared")
    assert sorted((r.variant, r.shape["M"]) for r in rows) == sorted((n, i) for n in "ab" for i in range(60))


def test_migration_from_schema_5_gives_whole_models_a_reference_and_parts_in_situ(tmp_path):
    url = f"sqlite:///{tmp_path / 'five.db'}"
    engine = db.connect(url)
    device = db.get_or_create_device(engine, "dev", {})
    db.add_model_measurement(engine, device, '{"m": 1}', 1, {}, _timing(2.0))
    with engine.begin() as c:  # back to the schema-5 layout: no reference column, no parts in situ
        c.execute(text("ALTER TABLE model_measurements DROP COLUMN reference_ms"))
        c.execute(text("ALTER TABLE model_measurements DROP COLUMN parts_ms"))
        c.execute(text("UPDATE schema_version SET version = 5"))
    engine.dispose()
    engine = db.connect(url)
    with engine.connect() as c:
        assert c.execute(text("SELECT version FROM schema_version")).scalar() == db.SCHEMA_VERSION == 7
    (old,) = db.model_rows(engine, "dev")
    assert old.median_ms == 2.0 and old.reference_ms is None and old.at_speed(1.0) == 2.0  # read as timed
    assert old.parts_ms is None
    db.add_model_measurement(engine, device, '{"m": 2}', 1, {}, _timing(3.0), reference_ms=1.5,
                             parts_ms={"0.attention": 0.5, "0.mlp": 0.75})
    new = next(r for r in db.model_rows(engine, "dev") if r.config == '{"m": 2}')
    assert new.reference_ms == 1.5 and new.at_speed(1.0) == pytest.approx(2.0)
    assert new.parts_ms == {"0.attention": 0.5, "0.mlp": 0.75}
