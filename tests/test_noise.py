"""A latency table that knows when it is noisy: timings taken beside a real CPU hog are caught (re-timed, marked,
refused), never fitted in silence; the predictor's composition cannot go below its parts; its check is out of sample.
"""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from kernels.measure import CpuContention, Timing
from latency_model import db
from latency_model.db import ModelRow, Row
from latency_model.predictor import Predictor, PredictorError
from latency_model.gate import PredictorRefused, check
from nas.cli import main
from tiny import TINY_MODEL, write_study
from search_spaces import ArchConfig, BlockConfig, ModelSpec, MoEConfig

HOG = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


class CpuHog:
    """Real processes spinning on every core for at most ``seconds`` (they stop by themselves; killed on exit)."""

    def __init__(self, seconds: float = 120, processes: int = 2) -> None:
        self.seconds, self.count = seconds, processes

    def __enter__(self) -> "CpuHog":
        self.procs = [subprocess.Popen([sys.executable, "-c", HOG.format(seconds=self.seconds)])
                      for _ in range(self.count)]
        time.sleep(0.3)  # let them start spinning
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def test_contention_measures_other_processes_not_this_one():
    with CpuContention() as own:  # this process busy: not contention
        end = time.perf_counter() + 0.6
        while time.perf_counter() < end:
            pass
    with CpuHog(seconds=10), CpuContention() as hogged:
        time.sleep(0.6)
    assert hogged.share > 0.5 > own.share  # two spinning processes take most of the two cores


def _row(op, variant, shape, ms, noisy=False):
    return Row(op, variant, shape, "float32", True, 8, ms, ms, ms, 0.0, 5, 0.0, 0.0, noisy)


SPEC = ModelSpec(TINY_MODEL["name"], TINY_MODEL["kwargs"])
CONFIGS = [ArchConfig(SPEC, (BlockConfig(mlp=m0), BlockConfig(mlp=m1)))
           for m0 in ("dense", "shift") for m1 in ("dense", "shift")] + \
          [ArchConfig(SPEC, (BlockConfig(attention=a), BlockConfig(mlp="shift"))) for a in ("linear", "additive")]


def _table(parts_ms=1.0, overhead=0.2):
    """Op rows for the tiny model, and whole models that cost their parts plus ``overhead`` per kernel block."""
    from latency_model.decomposition import space_ops
    from search_spaces import SearchSpace

    space = SearchSpace.from_dict({"choices": {"attention": ["msa", "linear", "additive"], "qkv": ["dense"],
                                               "proj": ["dense"], "mlp": ["dense", "shift"]}}, SPEC)
    rows = [_row(op.op, op.variant, op.dims, parts_ms * (2 if "shift" in op.variant else 1))
            for op in space_ops(space, [1])]
    plain, _ = Predictor.fit(rows, "dev")
    from latency_model.calibration import kernel_blocks

    models = [ModelRow(c.to_json(), 1, {}, plain.predict(c).total_ms + overhead * kernel_blocks(c)) for c in CONFIGS]
    return rows, models


def test_composition_never_goes_below_its_parts_and_is_checked_out_of_sample():
    rows, models = _table()
    predictor, accuracy = Predictor.fit(rows, "dev", models=models)
    a, b, c = predictor.calibration[("vit", 1)]
    assert a >= 1 and b == pytest.approx(0.2, abs=1e-6) and c >= 0
    assert accuracy["models (leave-one-out)"].count == len(CONFIGS)
    assert check(rows, models, predictor.model_checks, 0.25, "fix")["model_within_10pct"] == 1.0
    # whole models measured *faster* than their parts (the parts were timed on a busy machine): the composition
    # does not go negative to follow them; every prediction stays at least the sum of its parts
    fast = [ModelRow(m.config, 1, {}, 0.3 * m.median_ms) for m in models]
    predictor, _ = Predictor.fit(rows, "dev", models=fast)
    assert predictor.calibration[("vit", 1)] == [1.0, 0.0, 0.0]
    for config in CONFIGS:
        p = predictor.predict(config)
        assert p.total_ms >= p.fixed_ms + sum(sum(b.values()) for b in p.blocks) > 0
    with pytest.raises(PredictorRefused, match=r"out of sample is \d+%.*--remeasure all"):
        check(rows, fast, predictor.model_checks, 0.25, "nas profile s.yaml --remeasure")


def test_models_timed_in_a_slower_launch_compose_at_one_speed_through_their_references():
    rows, models = _table()
    # a third of the models re-timed in a launch where the machine ran 1.6x slower: the dense model timed in turn
    # with each says so, and the composition reads every model at one speed (the median reference's: the first
    # launch's here)
    slow = [i % 3 == 1 for i in range(len(models))]
    drifted = [ModelRow(m.config, 1, {}, m.median_ms * (1.6 if s else 1.0), reference_ms=1.6 if s else 1.0)
               for m, s in zip(models, slow)]
    steady, _ = Predictor.fit(rows, "dev", models=models)
    predictor, _ = Predictor.fit(rows, "dev", models=drifted)
    assert predictor.calibration[("vit", 1)] == pytest.approx(steady.calibration[("vit", 1)], rel=1e-6)
    assert max(c.error for c in predictor.model_checks) < 0.01
    # without the references the same timings mislead the fit
    blind, _ = Predictor.fit(rows, "dev", models=[ModelRow(m.config, 1, {}, m.median_ms) for m in drifted])
    assert max(c.error for c in blind.model_checks) > 0.05


IN_SITU = {"attention:msa": 1.2, "attention:linear": 0.9, "attention:additive": 1.6, "mlp:dense": 1.3,
           "mlp:shift": 2.0}  # what each choice's part costs inside a model, over its price alone


IN_SITU_CONFIGS = [ArchConfig(SPEC, (BlockConfig(attention=a, mlp=m0), BlockConfig(attention=a, mlp=m1)))
                   for a in ("msa", "linear", "additive") for m0 in ("dense", "shift") for m1 in ("dense", "shift")]


def _in_situ_models(rows):
    """Whole models timed with their parts in situ: each part at its choice's factor, the whole its parts plus the
    norms and residuals and the frame (no other overhead)."""
    from latency_model.keys import part_name
    from latency_model.calibration import part_of

    plain, _ = Predictor.fit(rows, "dev")
    timed = []
    for config in IN_SITU_CONFIGS:
        prediction = plain.predict(config)
        parts, total = {}, prediction.fixed_ms
        for i, (block, entries) in enumerate(zip(config.blocks, prediction.blocks)):
            for name, ms in entries.items():
                part = part_of(name)
                if part is None:
                    total += ms
                    continue
                kind = block.attention if part == "attention" else block.mlp
                parts[part_name(i, part)] = parts.get(part_name(i, part), 0.0) + ms * IN_SITU[f"{part}:{kind}"]
        timed.append(ModelRow(config.to_json(), 1, {}, total + sum(parts.values()), reference_ms=1.0,
                              parts_ms=parts))
    return timed


def test_parts_timed_in_situ_price_each_choice_at_its_own_factor(tmp_path):
    rows, _ = _table()
    timed = _in_situ_models(rows)
    predictor, accuracy = Predictor.fit(rows, "dev", models=timed)
    factors = predictor.in_situ[("vit", 1)]
    assert {key: factors[key] for key in IN_SITU} == pytest.approx(IN_SITU)  # each choice's own factor
    assert factors["attention:additive/dense/dense"] == pytest.approx(1.6)  # and each attention variant's
    assert max(c.error for c in predictor.model_checks) < 0.01  # each model out of sample
    for m, config in zip(timed, IN_SITU_CONFIGS):
        assert predictor.predict(config).total_ms == pytest.approx(m.median_ms, rel=0.02)
    # one composition over the parts priced alone cannot follow costs that differ by choice
    alone, _ = Predictor.fit(rows, "dev", models=[ModelRow(m.config, 1, {}, m.median_ms) for m in timed])
    assert not alone.in_situ and max(c.error for c in alone.model_checks) > 0.05
    # the factors travel with the file
    loaded = Predictor.load(predictor.save(tmp_path / "p.json"), device="dev")
    assert loaded.in_situ == predictor.in_situ
    assert [loaded.predict(c).total_ms for c in IN_SITU_CONFIGS] == \
        [predictor.predict(c).total_ms for c in IN_SITU_CONFIGS]
    data = json.loads((tmp_path / "p.json").read_text())
    data["in_situ"]["vit/1"]["mlp:shift"] = -1
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(PredictorError, match="in-situ factor of mlp:shift .* not a positive number"):
        Predictor.load(tmp_path / "bad.json")


def test_one_whole_model_timed_during_a_hiccup_is_one_failed_check_not_a_shift_of_every_prediction():
    rows, models = _table()
    # as on a shared CI machine: one of the whole models timed 100x its true cost
    hiccup = [ModelRow(m.config, 1, {}, m.median_ms * (100 if i == 2 else 1)) for i, m in enumerate(models)]
    predictor, _ = Predictor.fit(rows, "dev", models=hiccup)
    assert predictor.calibration[("vit", 1)][1] == pytest.approx(0.2, rel=1e-3)
    outlier = ArchConfig.from_json(models[2].config).id
    worst = max(predictor.model_checks, key=lambda c: c.error)
    assert worst.config_id == outlier
    others = [c for c in predictor.model_checks if c.config_id != outlier]
    assert max(c.error for c in others) < 0.01
    found = check(rows, hiccup, predictor.model_checks, 0.25, "fix")
    assert found["model_within_10pct"] == pytest.approx((len(CONFIGS) - 1) / len(CONFIGS))


def test_the_gate_refuses_noisy_tables_and_too_few_models_with_one_line_each():
    rows, models = _table()
    predictor, _ = Predictor.fit(rows, "dev", models=models)
    noisy = [_row(r.op, r.variant, r.shape, r.median_ms, noisy=True) for r in rows]
    with pytest.raises(PredictorRefused, match="every one of the .* measurements is marked noisy"):
        check(noisy, models, predictor.model_checks, 0.25, "fix")
    one = rows[:-1] + noisy[-1:]
    with pytest.raises(PredictorRefused, match=r"1 timing\(s\) are marked noisy \(module.*--allow-noisy"):
        check(one, models, predictor.model_checks, 0.25, "fix")
    assert check(one, models, predictor.model_checks, 0.25, "fix", allow_noisy=True)["noisy_allowed"] == 1
    few, _ = Predictor.fit(rows, "dev", models=models[:3])
    with pytest.raises(PredictorRefused, match="3 whole-model timing.* at least 4"):
        check(rows, models[:3], few.model_checks, 0.25, "fix")


def test_a_predictor_that_could_price_a_model_at_or_below_zero_is_refused_on_load(tmp_path):
    rows, models = _table()
    predictor, _ = Predictor.fit(rows, "dev", models=models)
    data = predictor.to_dict()
    data["calibration"] = {"1": [0.6, 0.1, -3.0]}  # what the unconstrained fit made of a busy machine's table
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(PredictorError, match="below the sum of its parts.*refit"):
        Predictor.load(tmp_path / "old.json")
    data = predictor.to_dict()
    data["lookup"][next(iter(data["lookup"]))] = -1.0
    (tmp_path / "neg.json").write_text(json.dumps(data))
    with pytest.raises(PredictorError, match="not a positive number"):
        Predictor.load(tmp_path / "neg.json")


def _noise_study(root, max_model_error=0.6):
    return write_study(root / "noise.yaml", {
        "name": "noise", "model": TINY_MODEL,
        "space": {"choices": {"attention": ["msa", "additive"], "qkv": ["dense", "shift"], "proj": ["dense"],
                              "mlp": ["dense"]}},
        "latency": {"db": f"sqlite:///{root / 'latency.db'}", "predictor": str(root / "predictor.json"),
                    "trials": 0, "repeats": 5, "calibration": 4, "retimes": 1, "max_model_error": max_model_error},
    })


def test_a_profile_beside_a_cpu_hog_is_caught_and_a_quiet_remeasure_passes(searchable, tmp_path, capsys,
                                                                             monkeypatch):
    import latency_model.profile as profiling

    searchable(tmp_path)  # the session's kernels are compiled (the hog must not time compilation)
    monkeypatch.setattr(profiling, "RETIME_PAUSE_S", 0.05)
    # the gate's whole-model threshold is loose here: what this test checks is that marked rows are refused and
    # re-timed ones accepted; how close 4 tiny models at batch 1 come to their parts depends on the test machine
    study = _noise_study(tmp_path, max_model_error=1.5)
    with CpuHog(seconds=240):
        assert main(["profile", str(study)]) == 1
    out = capsys.readouterr().out
    out = " ".join(out.split())  # rich wraps long lines
    assert "noisy" in out and "marked" in out and f"nas profile {study} --remeasure" in out
    engine = db.connect(f"sqlite:///{tmp_path / 'latency.db'}")
    device = db.devices(engine)[0]
    rows, models = db.latest(engine, device), db.model_rows(engine, device)
    marked = [r for r in rows if r.noisy] + [m for m in models if m.noisy]
    assert len(marked) >= len(rows) // 2, "the hog took two cores; most timings must be marked"
    assert all(r.contention > 0.1 for r in rows if r.noisy and r.spread <= 1.0)
    before = len(rows) + len(models)

    assert main(["fit-latency", str(study)]) == 1  # refused, not fitted in silence
    out = capsys.readouterr().out
    out = " ".join(out.split())
    assert "refused" in out and "marked noisy" in out and "--remeasure" in out
    assert not (tmp_path / "predictor.json").exists()
    assert len(db.latest(engine, device)) + len(db.model_rows(engine, device)) == before  # nothing rewritten

    # the hog is gone: re-timing the marked rows (and the whole models) gives a table the gate accepts
    assert main(["profile", str(study), "--remeasure"]) == 0
    assert not any(r.noisy for r in db.latest(engine, device))
    assert main(["fit-latency", str(study)]) == 0
    meta = json.loads((tmp_path / "predictor.json").read_text())["meta"]
    assert meta["gate"]["checked"] and meta["gate"]["model_mape"] <= 1.5
    assert meta["kernel_variants"] and set(meta["kernel_variants"].values()) <= {"xor", "mul", "select"}


def test_nas_run_stops_before_searching_on_a_refused_predictor(searchable, tmp_path, capsys):
    """A table whose whole models disagree with their parts: nas run stops at fit-latency (exit 1), no search."""
    study = _noise_study(tmp_path)
    assert main(["profile", str(study)]) in (0, 1)
    engine = db.connect(f"sqlite:///{tmp_path / 'latency.db'}")
    device = db.devices(engine)[0]
    device_id = db.get_or_create_device(engine, device, {})
    rng = np.random.default_rng(0)
    for m in db.model_rows(engine, device):  # what a burst of load mid-profile leaves: models off by up to 10x
        ms = m.median_ms * rng.uniform(0.1, 10)
        db.add_model_measurement(engine, device_id, m.config, m.batch, m.moe_routing, Timing(ms, ms, ms, 0.0, 3))
    capsys.readouterr()
    assert main(["run", str(study)]) == 1
    out = capsys.readouterr().out
    assert "stopped before the search" in out and "4/7 search" not in out


def test_whole_models_of_a_space_the_table_does_not_hold_are_left_out_of_the_calibration():
    # one table serves every study profiled on a device; a whole model of another study whose ops were measured
    # under other keys (or not at all) cannot calibrate this fit: it is left out, not a crash of the fit
    rows, models = _table()
    moe = ArchConfig(SPEC, (BlockConfig(mlp="moe", moe=MoEConfig()), BlockConfig()))  # no MoE rows in this table
    predictor, accuracy = Predictor.fit(rows, "dev", models=models + [ModelRow(moe.to_json(), 1, {}, 5.0)])
    assert accuracy["models (leave-one-out)"].count == len(CONFIGS)
    assert moe.id not in {c.config_id for c in predictor.model_checks}
