import json

import numpy as np
import pytest
import torch

from kernels.runtime import KernelSet, to_kernels
from latency_model import db
from latency_model.db import Row
from latency_model.keys import fitted_model_key, kernel_op
from latency_model.decomposition import ModelDims, Op
from latency_model.predictor import Predictor, PredictorError
from latency_model.profile import profile
from latency_model.settings import LatencySettings
from latency_model.timing import time_model, time_op
from search_spaces import ArchConfig, BlockConfig, MoEConfig, SearchSpace, build_model
from tiny import vit

MATMUL_FP32 = fitted_model_key(kernel_op("matmul"), "fp32", "float32")  # the fp32 matmul's fitted model


def _row(op, variant, shape, ms):
    return Row(op, variant, shape, "float32", True, 8, ms, ms, ms, 0.0, 5)


def test_fit_recovers_a_known_power_law():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(60):
        m, k, n = (int(v) for v in rng.integers(8, 2048, 3))
        rows.append(_row("tvm.matmul", "fp32", {"M": m, "K": k, "N": n}, 2e-7 * m * k ** 1.1 * n ** 0.8))
    predictor, accuracy = Predictor.fit(rows, "synthetic", holdout=0.2)
    assert accuracy[MATMUL_FP32].count == 12
    assert accuracy[MATMUL_FP32].mape < 1e-3 and accuracy["all"].within_5pct == 1.0
    model = predictor.models[MATMUL_FP32]
    assert model.dims == ["K", "M", "N"]
    assert model.coef[1:] == pytest.approx([1.1, 1.0, 0.8], abs=1e-3)
    # an unseen shape is predicted by the fitted law
    assert predictor.op_ms("tvm.matmul", "fp32", {"M": 3000, "K": 3000, "N": 3000}) == pytest.approx(
        2e-7 * 3000 * 3000 ** 1.1 * 3000 ** 0.8, rel=1e-3)


def test_a_batched_kernel_fits_with_its_single_calls_where_the_batch_dim_is_not_named():
    # a kernel's rows name B only above 1 (PVTv2 at 224 runs matadd on one image's heads at once in some stages and
    # one head in others): the fit reads the missing B as 1 and learns its exponent from the rows that name it
    rows = [_row("tvm.matadd", "binary_real", {"M": m, "K": 32, "N": 32, **({"B": b} if b > 1 else {})},
                 1e-4 * m * b ** 0.9) for m in (49, 196, 784, 3136) for b in (1, 2, 5, 8)]
    predictor, _ = Predictor.fit(rows, "synthetic", holdout=0.0)
    model = predictor.models[fitted_model_key(kernel_op("matadd"), "binary_real", "float32")]
    assert model.dims == ["B", "M"]
    assert predictor.op_ms("tvm.matadd", "binary_real", {"M": 500, "K": 32, "N": 32}) == pytest.approx(
        1e-4 * 500, rel=1e-3)
    assert predictor.op_ms("tvm.matadd", "binary_real", {"M": 500, "K": 32, "N": 32, "B": 4}) == pytest.approx(
        1e-4 * 500 * 4 ** 0.9, rel=1e-3)


def test_one_table_with_the_frames_of_two_families_fits_one_model_per_family():
    # a ViT's frame and a PVTv2's have different dims (patch vs stages): one table holds both when both
    # quick-starts are profiled on a device
    vit = [_row("module.frame", "", {"B": 1, "C": c, "classes": 10, "img": 32, "patch": 4}, 0.01 * c)
           for c in (32, 64, 128)]
    pvt = [_row("module.frame", "", {"B": 1, "C0": c, "C": 4 * c, "S": 3, "img": 32, "classes": 10}, 0.03 * c)
           for c in (16, 32, 64)]
    predictor, _ = Predictor.fit(vit + pvt, "synthetic")
    assert predictor.op_ms("module.frame", "", {"B": 1, "C": 96, "classes": 10, "img": 32, "patch": 4}) == \
        pytest.approx(0.96, rel=1e-3)
    assert predictor.op_ms("module.frame", "", {"B": 1, "C0": 48, "C": 192, "S": 3, "img": 32, "classes": 10}) == \
        pytest.approx(1.44, rel=1e-3)


def test_lookup_then_interpolation_in_m():
    rows = [_row("module.mlp", "shift", {"M": m, "C": 8, "Hd": 32}, 0.1 * m) for m in (10, 20, 40)]
    predictor, _ = Predictor.fit(rows, "dev")
    assert predictor.op_ms("module.mlp", "shift", {"M": 20, "C": 8, "Hd": 32}) == 2.0
    assert predictor.op_ms("module.mlp", "shift", {"M": 30, "C": 8, "Hd": 32}) == pytest.approx(3.0)
    with pytest.raises(PredictorError, match="no measurements of module.attention"):
        predictor.op_ms("module.attention", "msa/dense/dense", {"B": 1, "T": 5, "C": 8, "H": 2})


def test_json_round_trip_predicts_identically_and_refuses_other_devices(tmp_path):
    rows = [_row("tvm.matshift", "select", {"M": m, "K": 64, "N": n}, 1e-4 * m * n) for m in (5, 50, 500)
            for n in (16, 64)]
    predictor, _ = Predictor.fit(rows, "board-1")
    path = predictor.save(tmp_path / "p.json")
    loaded = Predictor.load(path, device="board-1")
    for shape in ({"M": 7, "K": 64, "N": 16}, {"M": 50, "K": 64, "N": 64}, {"M": 999, "K": 32, "N": 3}):
        assert loaded.op_ms("tvm.matshift", "select", shape) == predictor.op_ms("tvm.matshift", "select", shape)
    with pytest.raises(PredictorError, match="fitted for device 'board-1', not 'board-2'"):
        Predictor.load(path, device="board-2")
    assert Predictor.load(path, device="board-2", allow_other_device=True).device == "board-1"
    (tmp_path / "bad.json").write_text(json.dumps({"format": "pickle?"}))
    with pytest.raises(PredictorError, match="not a predictor file"):
        Predictor.load(tmp_path / "bad.json")


TINY = vit(patch_size=8, embed_dim=16, num_classes=3)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """A real (untuned) profile of a tiny space: kernels and modules timed on this machine."""
    root = tmp_path_factory.mktemp("profile")
    space = SearchSpace.from_dict(
        {"choices": {"attention": ["msa", "additive"], "qkv": ["dense", "shift"], "proj": ["dense"],
                     "mlp": ["dense", "shift", "moe"]}}, TINY)
    settings = LatencySettings(db=f"sqlite:///{root / 'lat.db'}", trials=0, repeats=5, calibration=5).resolved(root)
    summary = profile(space, settings, kernel_root=root / "kernels")
    assert not summary.failed, summary.failed
    again = profile(space, settings, kernel_root=root / "kernels")  # idempotent: everything is a table hit
    assert again.measured == [] and again.skipped == len(summary.measured)
    engine = db.connect(settings.db)
    models = db.model_rows(engine, settings.device)
    assert len(models) == settings.calibration  # whole models timed for the composition calibration
    assert all(m.reference_ms > 0 for m in models)  # each between two timings of the dense model
    parts = {f"{block}.{part}" for block in range(2) for part in ("attention", "mlp")}
    assert all(set(m.parts_ms) == parts and min(m.parts_ms.values()) > 0 for m in models)  # timed in situ
    predictor, accuracy = Predictor.fit(db.latest(engine, settings.device), settings.device, models=models)
    assert set(predictor.calibration) == {("vit", 1)} and accuracy["calibration"].count == settings.calibration
    assert {"attention", "mlp", "mlp:dense"} <= set(predictor.in_situ[("vit", 1)])  # each part priced in situ
    return space, settings, predictor, root


def test_predict_is_within_a_loose_bound_of_measure(profiled):
    space, settings, predictor, root = profiled
    config = ArchConfig(TINY, (BlockConfig("additive", "shift", "dense", "moe", MoEConfig()), BlockConfig()))
    prediction = predictor.predict(config, batch=1)
    parts = prediction.fixed_ms + sum(sum(b.values()) for b in prediction.blocks)
    assert prediction.total_ms == pytest.approx(parts + prediction.composition_ms)
    assert set(prediction.blocks[0]) >= {"attention", "router", "norms+residuals"}
    torch.set_num_threads(2)
    model = to_kernels(build_model(config), KernelSet("cpu", 0, root / "kernels"))
    measured = time_model(model, 1, 16, repeats=7).median_ms
    assert 0.33 < prediction.total_ms / measured < 3.0  # sanity only: accuracy figures live in bench/


def test_profile_times_every_matshift_variant_and_the_models_run_the_fastest(profiled):
    from collections import defaultdict

    from kernels.dispatch import CANDIDATES
    from latency_model.profile import table_dispatch, table_kernels

    space, settings, predictor, root = profiled
    engine = db.connect(settings.db)
    rows = db.latest(engine, settings.device)
    shift = defaultdict(dict)
    for row in rows:
        if row.op == "tvm.matshift":
            shift[(row.shape["M"], row.shape["K"], row.shape["N"])][row.variant] = row.median_ms
    assert shift and all(set(timed) == set(CANDIDATES["matshift"]) for timed in shift.values())
    dispatch = table_dispatch(engine, settings.device)
    for (m, k, n), timed in shift.items():
        assert dispatch.variant("matshift", m, k, n, "int32", default="none") == min(timed, key=timed.get)
    # additive attention is timed as the runtime calls it: its whole mixing, every head of the batch in one call
    assert {r.shape["N"] for r in rows if r.op == "tvm.additive"} == {TINY.kwargs["num_heads"]}
    assert not [r for r in rows if r.op == "tvm.matadd"]

    config = ArchConfig(TINY, (BlockConfig("msa", "shift", "dense", "shift"), BlockConfig()))
    kernels = table_kernels(settings, kernel_root=root / "kernels")
    to_kernels(build_model(config), kernels)(torch.randn(1, 3, 16, 16))
    ran = {(s.M, s.K, s.N): s.variant for s in kernels.specs if s.kernel == "matshift"}
    assert ran and all(variant == dispatch.variant("matshift", *shape, "int32", "none")
                       for shape, variant in ran.items())


def test_expert_latencies_order_experts_like_their_measured_modules(profiled):
    space, settings, predictor, root = profiled
    config = ArchConfig(TINY, (BlockConfig(mlp="moe", moe=MoEConfig(1, ("dense", "shift"))), BlockConfig()))
    lat = predictor.expert_latencies(config, 0)
    dims = ModelDims.of(TINY)
    kernels = KernelSet("cpu", 0, root / "kernels")
    measured = [
        time_op(Op("module.mlp", kind, (("C", 16), ("Hd", 64), ("M", dims.tokens))), TINY, kernels, repeats=7).median_ms
        for kind in ("dense", "shift")
    ]
    assert (lat[0] < lat[1]) == (measured[0] < measured[1])
    with pytest.raises(PredictorError, match="no MoE MLP"):
        predictor.expert_latencies(config, 1)


def test_calibration_models_span_the_number_of_kernel_blocks(tiny_spec):
    from latency_model.calibration import kernel_blocks
    from latency_model.profile import calibration_configs
    from search_spaces import SearchSpace

    space = SearchSpace.from_dict({}, tiny_spec)
    configs = calibration_configs(space, 6)
    # the all-dense model is measured, not guessed; then one each with 1 and 2 blocks on the kernels
    assert [kernel_blocks(c) for c in configs][:3] == [0, 1, 2]
    assert len(set(configs)) == 6  # distinct: each is one row of the table
    assert configs == calibration_configs(space, 6)  # fixed: a re-run finds them measured
    params = [space.params_of(c) for c in configs]  # every one is in the space
    assert len(params) == 6


def test_moe_experts_are_priced_at_the_buckets_each_image_runs_them_at():
    from latency_model.decomposition import block_ops
    from search_spaces.ops.moe import MoELoad

    dims = ModelDims.of(TINY)  # 5 tokens: 4 patches and the class token
    block = BlockConfig(mlp="moe", moe=MoEConfig(1, ("dense", "shift")))

    def experts(routing, batch=1):
        return sorted((o.expert, o.dims["M"], round(o.count, 6)) for o in block_ops(dims, batch, 0, block, routing)
                      if o.expert is not None)

    # half the images send every token to the dense expert, half to the shift one: each runs full, half the time
    # (the average split, 2.5 tokens each, would have run both on every image at a smaller bucket)
    either = MoELoad.from_counts([[5, 0], [0, 5]])
    assert experts(either) == [(0, 5, 0.5), (1, 5, 0.5)]
    assert experts([0.5, 0.5]) == [(0, 2, 1.0), (1, 2, 1.0)]
    # a batch of two: both images to one expert (1/4 each), or one image each (1/2: both run at 5 of 10 tokens)
    assert experts(either, batch=2) == [(0, 5, 0.5), (0, 10, 0.25), (1, 5, 0.5), (1, 10, 0.25)]
    with pytest.raises(ValueError, match="measured on another model"):
        block_ops(dims, 1, 0, block, MoELoad.from_counts([[9, 0]]))
    # a timed pass of those two images is priced as it ran: each expert at 5 of 10 tokens, every time
    timed = MoELoad.of_pass([[5, 0], [0, 5]])
    assert experts(timed, batch=2) == [(0, 5, 1.0), (1, 5, 1.0)]
    assert MoELoad.from_json(timed.to_json()) == timed
    with pytest.raises(ValueError, match="passes of 2 images cannot price a batch of 1"):
        block_ops(dims, 1, 0, block, timed)


def test_a_trials_moe_price_is_the_average_of_its_images_prices(profiled):
    from nas.training.trainer import evaluate
    from latency_model.predictor import router_loads

    space, settings, predictor, root = profiled
    config = ArchConfig(TINY, (BlockConfig(mlp="moe", moe=MoEConfig(1, ("dense", "shift"))),
                               BlockConfig(mlp="moe", moe=MoEConfig(1, ("dense", "shift")))))
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        for block in model.blocks:  # a router that splits images differently, so that the buckets vary
            block.mlp.router.weight.normal_(0, 2.0)
    images = torch.randn(12, 3, 16, 16)
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(12, dtype=torch.long))
    evaluation = evaluate(model, dataset, batch_size=5)
    priced = predictor.predict(config, 1, moe_loads=evaluation.moe_loads)
    each = []
    for image in images:
        with torch.no_grad():
            model(image[None])
        each.append(predictor.predict(config, 1, moe_loads=router_loads(model)).total_ms)
    assert len(set(np.round(each, 9))) > 1  # the images do cost differently
    assert priced.total_ms == pytest.approx(np.mean(each), rel=1e-9)
    tokens = priced.moe_tokens[0]  # padded tokens per pass, per expert: at least what it received, at most all 5
    received = [sum(c * p for c, p in enumerate(h)) for h in evaluation.moe_loads[0].histograms]
    assert all(r - 1e-9 <= t <= 5 for t, r in zip(tokens, received)) and sum(received) == pytest.approx(5)
