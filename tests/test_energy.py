"""Operation counts and the energy estimate: dense counts equal torch's FLOP counter on real timm models, each
primitive's counts equal a count by hand, unit-cost tables and the study's energy: section, energy in a study."""

import pytest
import timm
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from latency_model.energy import TABLES, EnergySettings, UnitCosts, estimate, model_counts
from nas.study import Study
from tiny import TINY_MODEL, vit
from search_spaces import ArchConfig, BlockConfig, ConfigError, ModelSpec, registry
from search_spaces import counts as oc
from search_spaces.config import MoEConfig
from search_spaces.ops.moe import MoELoad
from search_spaces.reparam import create_model

SHAPES = registry.Shapes(batch=1, tokens=4, channels=8, heads=2, hidden=16)


@pytest.fixture
def unfused_attention():
    """timm's attention with explicit products: torch's FLOP counter does not count the CPU's fused kernel."""
    before = timm.layers.use_fused_attn()
    timm.layers.set_fused_attn(False)
    yield
    timm.layers.set_fused_attn(before)


@pytest.mark.parametrize("spec, depth", [
    (vit(), 2),
    (ModelSpec("pvt_v2_b0", {"img_size": 64, "depths": (1, 1, 1, 1), "num_classes": 10}), 4),  # sr convs 8, 4, 2
    (ModelSpec("pvt_v2_b0", {"img_size": 64, "depths": (1, 1, 1, 1), "num_classes": 10, "linear": True}), 4),
], ids=["vit", "pvt_v2", "pvt_v2-linear"])
def test_dense_products_equal_torchs_flop_count(unfused_attention, spec, depth):
    model = create_model(spec).eval()
    img = spec.kwargs["img_size"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(2, 3, img, img))
    counted = counter.get_flop_counts()["Global"]
    assert {str(op) for op in counted} >= {"aten.convolution", "aten.addmm", "aten.bmm"}
    assert model_counts(ArchConfig.dense(spec, depth), batch=2).total.products == counter.get_total_flops()


def test_dense_linear_and_shift_linear_counted_by_hand():
    layers = SHAPES.linear_layers("qkv")  # 4 rows, 8 -> 24
    dense = registry.get("linear", "dense").op_counts(SHAPES, layers)
    assert dense.ops == {"mult.fp32": 768, "add.fp32": 768 + 96} and dense.products == 1536
    assert dense.weight_bytes == (8 * 24 + 24) * 4 and dense.activation_bytes == (32 + 96) * 4
    shift = registry.get("linear", "shift").op_counts(SHAPES, layers)
    assert {k: v for k, v in shift.ops.items() if v} == {
        "shift.int32": 768, "add.int32": 768, "mult.fp32": 32 + 96, "add.fp32": 96}  # no fp32 product left
    assert shift.weight_bytes == 8 * 24 * 5 / 8 + 24 * 4  # 5-bit codes, fp32 bias
    # shift16 at the width it runs: 16-bit shifts, its activations read as int16, each row's maximum and scaling
    shift16 = registry.get("linear", "shift16").op_counts(SHAPES, layers)
    assert {k: v for k, v in shift16.ops.items() if v} == {
        "shift.int16": 768, "add.int32": 768, "cmp.fp32": 32, "mult.fp32": 32 + 96, "add.fp32": 96}
    assert shift16.weight_bytes == shift.weight_bytes and shift16.activation_bytes == 32 * 2 + 96 * 4
    for table in TABLES.values():  # a 16-bit shift between the 8- and 32-bit ones
        assert table.ops["shift.int8"] < table.ops["shift.int16"] < table.ops["shift.int32"]
        assert sum(table.price(shift16)) < sum(table.price(shift))


def test_attention_and_mlp_counted_by_hand():
    # 2 heads of 4 tokens by 4 dims, each attending over 4 tokens
    msa = registry.get("attention", "msa").op_counts(SHAPES)
    assert msa.ops == {"mult.fp32": 32 + 128 + 32 + 128, "add.fp32": 128 + 64 + 128, "cmp.fp32": 32,
                       "exp.fp32": 32 + 8}
    additive = registry.get("attention", "additive").op_counts(SHAPES)
    assert additive.products == 2 * 128  # K_bᵀ V and Q_b (K_bᵀ V): one addition per term, no multiplication
    assert additive.ops == {"mult.fp32": 128 + 64 + 64 + 288, "add.fp32": 80 + 64 + 256 + 32 + 40 + 288 + 32,
                            "cmp.fp32": 64, "exp.fp32": 16 + 8}
    mlp = registry.get("mlp", "dense").op_counts(SHAPES, SHAPES.linear_layers("mlp"))  # 8 -> 16 -> 8, GELU
    assert mlp.ops == {"mult.fp32": 1024 + 192, "add.fp32": 1024 + 64 + 32 + 64, "exp.fp32": 64}
    router = registry.get("mlp", "moe").op_counts(SHAPES, ((4, 2, 1),))  # 4 tokens, 2 experts, top-1
    assert router.ops == {"mult.fp32": 64 + 8 + 4 + 32, "add.fp32": 72 + 16 + 4 + 32, "cmp.fp32": 16,
                          "exp.fp32": 12}


def test_moe_experts_are_counted_at_the_tokens_routed_to_them(tiny_spec):
    moe = BlockConfig("msa", "dense", "dense", "moe", MoEConfig(1, ("dense", "shift")))
    config = ArchConfig(tiny_spec, (moe, BlockConfig()))
    tokens = model_counts(config).blocks[1]["mlp"].ops["mult.fp32"]  # a dense MLP over every token
    all_dense = model_counts(config, routing={0: [1.0, 0.0]}).blocks[0]
    assert all_dense["expert0:dense"].ops["mult.fp32"] == tokens and all_dense["expert1:shift"].total_ops == 0
    assert all_dense["expert1:shift"].weight_bytes == 0  # an expert no token reaches reads no weight
    images = MoELoad.from_counts([[17, 0], [0, 17]])  # half the images send every token to each expert
    half = model_counts(config, routing={0: images}).blocks[0]
    assert half["expert0:dense"].ops["mult.fp32"] == pytest.approx(tokens / 2)
    assert half["expert0:dense"].weight_bytes == pytest.approx(all_dense["expert0:dense"].weight_bytes / 2)


def test_energy_is_deterministic_and_shifts_spend_less(tiny_spec):
    dense = ArchConfig.dense(tiny_spec, 2)
    shifted = ArchConfig(tiny_spec, (BlockConfig("msa", "shift", "shift", "shift"),) * 2)
    for table in TABLES.values():
        first, again = estimate(dense, table), estimate(dense, table)
        assert first == again and first.total_uj == pytest.approx(first.compute_uj + first.memory_uj)
        assert sum(c + m for c, m in first.blocks_uj) + sum(first.frame_uj) == pytest.approx(first.total_uj)
        cheaper = estimate(shifted, table)
        assert cheaper.compute_uj < first.compute_uj and cheaper.memory_uj < first.memory_uj


def test_a_table_prices_only_what_it_knows():
    table = UnitCosts("tiny", {"add.fp32": 1.0}, dram_pj_per_byte=2.0, sram_pj_per_byte=0.5)
    assert table.price(oc.OpCounts({"add.fp32": 3}, weight_bytes=10, activation_bytes=4)) == (3.0, 22.0)
    with pytest.raises(ConfigError, match="no cost for mult.fp32"):
        table.price(oc.linear(1, 2, 2))


def test_the_energy_section_names_a_table_and_overrides_entries():
    assert EnergySettings.from_dict(None).table.name == "horowitz45nm"
    paper = EnergySettings.from_dict({"table": "shiftaddnas"}).table
    assert (paper.ops["mult.fp32"], paper.ops["add.fp32"], paper.ops["shift.int32"]) == (3.7, 0.9, 0.13)
    assert (paper.ops["mult.int8"], paper.ops["add.int8"], paper.ops["shift.int8"]) == (0.2, 0.03, 0.024)
    custom = EnergySettings.from_dict({"ops": {"shift.int32": 0.05}, "dram_pj_per_byte": 100}).table
    assert custom.name == "horowitz45nm+study" and custom.ops["shift.int32"] == 0.05
    assert custom.dram_pj_per_byte == 100 and custom.ops["mult.fp32"] == 3.7


def _study(tmp_path, **sections):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "model": TINY_MODEL, **sections}))
    return path


def test_energy_objectives_and_a_primitive_without_counts(tmp_path):
    study = Study.load(_study(tmp_path, objectives={"metrics": ["accuracy", "latency_ms", "energy_uj"]}))
    assert study.objectives.directions == ["maximize", "minimize", "minimize"]
    budget = Study.load(_study(tmp_path, objectives={"metrics": ["accuracy"], "energy_budget_uj": 40}))
    assert budget.objectives.budgets == {"energy_uj": 40.0} and budget.objectives.uses_energy
    registry.register(registry.Primitive("attention", "uncounted", description="declares no counts"))
    try:
        space = {"choices": {"attention": ["msa", "uncounted"]}}
        Study.load(_study(tmp_path, space=space))  # energy not searched on: fine
        with pytest.raises(ConfigError, match="'uncounted' declares no operation counts"):
            Study.load(_study(tmp_path, space=space, objectives={"metrics": ["accuracy", "energy_uj"]}))
    finally:
        registry.unregister("attention", "uncounted")
