"""The accelerator energy model: every layer of DeiT-Tiny and PVTv2-b0 at 224 priced as the released script prices
it (figures computed once from it, tests/data/accelerator_reference.json, with their provenance), its stored records,
whole models as the sum of their layers, the fallback where no tiling fits, MoE experts, and the study's key."""

import json
import math
from pathlib import Path

import optuna
import pytest
import yaml

from latency_model import accelerator
from latency_model.energy import EnergySettings, estimate, model_layers
from nas.search.notes import study_note
from nas.study import Study
from search_spaces import ArchConfig, BlockConfig, ConfigError, ModelSpec, registry
from search_spaces.accelerator_layers import Layer, conv, fc
from search_spaces.config import MoEConfig
from tiny import TINY_MODEL

REFERENCE = json.loads((Path(__file__).parent / "data" / "accelerator_reference.json").read_text())
DEIT = ModelSpec("deit_tiny_patch16_224", {"num_classes": 1000})
PVT = ModelSpec("pvt_v2_b0", {"num_classes": 1000})
ACCELERATOR = EnergySettings.from_dict({"model": "accelerator"})


def _layer(row) -> Layer:
    return Layer(row["type"], row["batch"], row["input_C"], row["output_M"], row["kernel_size"], row["stride"],
                 (row["input_H"], row["input_W"]), (row["output_E"], row["output_F"]), row["num_bits"])


def _released(tag: str) -> dict:
    return next(row for row in REFERENCE["layers"] if row["tag"] == tag)


@pytest.mark.parametrize("row", REFERENCE["layers"], ids=[row["tag"] for row in REFERENCE["layers"]])
def test_each_layer_is_priced_as_the_released_script_prices_it(row):
    layer = _layer(row)
    if "error" in row:  # the released search raises: no tiling fits; priced as the FC layer of its patches
        assert accelerator._search(layer) is None
        price = accelerator.price_layer(layer)
        assert price.priced_as == accelerator.patches_fc(layer) and price == accelerator.price_layer(price.priced_as)
        return
    price = accelerator.price_layer(layer)
    assert price.energy_mj == pytest.approx(row["energy_mj"], rel=1e-9)
    assert price.latency_s == pytest.approx(row["latency_s"], rel=1e-9)
    assert price.compute_mj == pytest.approx(row["compute_mj"], rel=1e-9)
    assert dict(price.tiling) == {k: v for k, v in row["tiling"].items() if k != "C3"}
    assert price.valid_tilings == row["valid_tilings"] and price.priced_as == layer


def test_the_released_scripts_stored_records(monkeypatch):
    """The FC and shift records equal; the conv record was written by an earlier version of the model, whose PE
    array was 14 x 12: with that array, it equals too."""
    conv_row, shift_row, fc_row = (_layer(r) for r in REFERENCE["records"])
    records = {r["type"]: r for r in REFERENCE["records"]}
    for layer in (fc_row, shift_row):
        price = accelerator._search(layer)
        assert price.energy_mj == pytest.approx(records[layer.kind]["energy_mj"], rel=1e-9)
        assert price.latency_s == pytest.approx(records[layer.kind]["latency_s"], rel=1e-9)
    released = accelerator._search(conv_row)
    assert released.compute_mj == pytest.approx(records["Conv"]["compute_mj"], rel=1e-9)
    assert released.latency_s < records["Conv"]["latency_s"]  # 16 x 12 PEs: a faster tiling fits
    monkeypatch.setattr(accelerator, "PES", 14 * 12)
    earlier = accelerator._search(conv_row)
    assert earlier.energy_mj == pytest.approx(records["Conv"]["energy_mj"], rel=1e-9)
    assert earlier.latency_s == pytest.approx(records["Conv"]["latency_s"], rel=1e-9)


def test_the_candidates_are_every_ordered_factorization():
    assert accelerator.tilings(12, 2) == ((12, 1), (4, 3), (6, 2), (2, 6), (3, 4), (1, 12))
    for n, parts in ((360, 3), (197, 4), (1, 4)):
        found = accelerator.tilings(n, parts)
        assert len(set(found)) == len(found) and all(len(t) == parts for t in found)
        assert all(math.prod(t) == n for t in found)
    assert len(accelerator.tilings(2 ** 6, 3)) == 28  # C(6 + 2, 2)


def _released_total(tags: list[str]) -> tuple[float, float]:
    rows = [_released(tag) for tag in tags]
    return sum(r["energy_mj"] for r in rows) * 1e3, sum(r["latency_s"] for r in rows) * 1e3


def test_a_whole_deit_tiny_is_the_released_sum_of_its_layers():
    dense = estimate(ArchConfig.dense(DEIT, 12), ACCELERATOR)
    block = [f"deit {name}" for name in ("qkv", "proj", "fc1", "fc2", "QK^T", "AV")]
    energy, latency = _released_total(["deit patch_embed as FC", "deit head"] + block * 12)
    assert dense.model == "accelerator" and dense.total_uj == pytest.approx(energy, rel=1e-9)
    assert dense.latency_ms == pytest.approx(latency, rel=1e-9)
    assert dense.total_uj == pytest.approx(sum(dense.frame_uj) + sum(c + m for c, m in dense.blocks_uj))
    paper = ArchConfig(DEIT, (BlockConfig("additive", "shift", "shift", "dense"),) * 12)
    shifted = estimate(paper, ACCELERATOR)
    energy, _ = _released_total(["deit patch_embed as FC", "deit head"] + [
        "deit qkv shift", "deit proj shift", "deit fc1", "deit fc2", "deit K^T V add", "deit Q(KV) add"] * 12)
    token_conv = accelerator.price_layer(_layer(_released("deit token conv (9,1) depthwise"))).energy_mj * 1e3
    assert shifted.total_uj == pytest.approx(energy + 12 * token_conv, rel=1e-9) and shifted.total_uj < dense.total_uj


def test_a_whole_pvt_v2_b0_is_the_released_sum_of_its_layers():
    dense = estimate(ArchConfig.dense(PVT, 8), ACCELERATOR)
    tags = ["pvt s1 patch_embed 7x7 s4", "pvt head"]
    for s in range(1, 5):
        if s > 1:
            tags.append(f"pvt s{s} patch_embed 3x3 s2")
        block = [f"pvt s{s} {name}" for name in ("q", "kv", "proj", "fc1", "fc2", "QK^T", "AV",
                                                 "dwconv (depthwise 3x3)")]
        tags += block * 2 + ([f"pvt s{s} sr conv"] * 2 if s < 4 else [])
    energy, latency = _released_total(tags)
    assert dense.total_uj == pytest.approx(energy, rel=1e-9) and dense.latency_ms == pytest.approx(latency, rel=1e-9)


def test_moe_experts_are_priced_at_the_tokens_routed_to_them():
    moe = BlockConfig("msa", "dense", "dense", "moe", MoEConfig(1, ("dense", "shift")))
    config = ArchConfig(DEIT, (moe,) + (BlockConfig(),) * 11)
    _, blocks = model_layers(config)
    assert blocks[0]["router"] == [fc(197, 192, 2)]
    half = [layer for part in ("expert0:dense", "expert1:shift") for layer in blocks[0][part]]
    assert {(layer.kind, layer.batch, layer.times) for layer in half} == {("FC", 98, 1.0), ("Shift", 98, 1.0)}
    _, all_dense = model_layers(config, routing={0: [1.0, 0.0]})
    assert all_dense[0]["expert1:shift"] == [] and {layer.batch for layer in all_dense[0]["expert0:dense"]} == {197}
    assert estimate(config, ACCELERATOR, routing={0: [1.0, 0.0]}).total_uj > estimate(config, ACCELERATOR).total_uj


def test_layers_as_the_released_hooks_record_them():
    depthwise = conv(2, 64, 64, (3, 3), 1, (14, 14), (14, 14), groups=64)
    assert (depthwise.batch, depthwise.in_channels, depthwise.out_channels, depthwise.kernel) == (128, 1, 1, 3.0)
    assert conv(1, 1, 1, (9, 1), 1, (65, 16), (65, 16)).kernel == 3.0  # sqrt(9 x 1), the same MACs
    patches = accelerator.patches_fc(conv(1, 3, 192, (16, 16), 16, (224, 224), (14, 14)))
    assert patches == fc(196, 768, 192)  # stride = kernel: the patch embedding is this FC layer
    with pytest.raises(ValueError, match="unknown layer kind"):
        Layer("Pool", 1, 1, 1)


def test_layer_rows_name_every_priced_layer():
    est = estimate(ArchConfig.dense(DEIT, 12), ACCELERATOR)
    rows = est.layer_rows()
    assert len(rows) == 2 + 12 * 6 and rows[0]["priced_as"] == "FC 196 x 768 -> 192"  # the patch embedding
    assert sum(r["energy_uj"] * r["times"] for r in rows) == pytest.approx(est.total_uj, rel=1e-6)
    assert est.to_dict()["model"] == "accelerator" and est.to_dict()["accelerator_latency_ms"] > 0


def _study(tmp_path, **sections):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "model": TINY_MODEL, **sections}))
    return path


def test_the_study_picks_the_model(tmp_path):
    study = Study.load(_study(tmp_path, energy={"model": "accelerator"},
                              objectives={"metrics": ["accuracy", "energy_uj"]}))
    assert study.energy.model == "accelerator" and study.energy.to_dict()["model"] == "accelerator"
    note = study_note(study, optuna.create_study())  # the study's note names the model searched on
    assert "- an objective: an estimate for an Eyeriss-like accelerator" in note and "energy model `accelerator`" in note
    assert Study.load(_study(tmp_path)).energy.model == "op_counts"
    with pytest.raises(ConfigError, match="energy.model.*'eyeriss'.*op_counts, accelerator"):
        Study.load(_study(tmp_path, energy={"model": "eyeriss"}))
    with pytest.raises(ConfigError, match="energy.table.*its own unit costs"):
        Study.load(_study(tmp_path, energy={"model": "accelerator", "table": "shiftaddnas"}))
    registry.register(registry.Primitive("attention", "unlisted", counts=lambda s, layers: None,
                                         description="counts but no accelerator layers"))
    try:
        space = {"choices": {"attention": ["msa", "unlisted"]}}
        Study.load(_study(tmp_path, space=space, objectives={"metrics": ["accuracy", "energy_uj"]}))  # op counts
        with pytest.raises(ConfigError, match="'unlisted' declares no accelerator layers"):
            Study.load(_study(tmp_path, space=space, energy={"model": "accelerator"},
                              objectives={"metrics": ["accuracy", "energy_uj"]}))
    finally:
        registry.unregister("attention", "unlisted")
