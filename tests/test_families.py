"""Model families: the PVTv2 adapter (blocks over stages at their own sizes, primitives built from its separate q/kv
and its MLP's depthwise conv, the per-block op decomposition, stage overrides) and the end-to-end PVT quick-start."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from latency_model.decomposition import config_ops, kernel_tasks, space_ops
from nas import attributes as attr
from nas.training.checkpoints import load_weights
from nas.cli import main
from tiny import stored_trials
from search_spaces import ArchConfig, BlockConfig, ConfigError, ModelSpec, MoEConfig, SearchSpace, build_model
from search_spaces.families import ModelDims, family_for
from search_spaces.families.pvt_v2 import FusedProjections
from search_spaces.ops.attention import AdditiveAttention, LinearAttention
from search_spaces.ops.moe import GridExpert, MoEMlp
from search_spaces.ops.shift import ShiftLinear
from search_spaces.reparam import create_model, transformer_blocks

ROOT = Path(__file__).resolve().parents[1]
# three stages at 8x8, 4x4 and 2x2 tokens, keys and values from a 2x2 grid in the first two
SMALL = ModelSpec("pvt_v2_b0", {"img_size": 32, "depths": [2, 1, 1], "embed_dims": [16, 32, 64],
                                "num_heads": [1, 2, 4], "sr_ratios": [4, 2, 1], "mlp_ratios": [2, 2, 2],
                                "num_classes": 10})


@pytest.mark.parametrize("name", [f"pvt_v2_b{i}" for i in range(6)] + ["pvt_v2_b2_li"])
def test_every_pvt_v2_builds_under_sampled_configs_and_runs(name):
    spec = ModelSpec(name, {"img_size": 32, "num_classes": 5})
    space = SearchSpace.from_dict({}, spec)
    dims = ModelDims.of(spec)
    assert space.depth == len(dims.blocks) == sum(create_model(spec).depths)
    assert [b.tokens for b in dims.blocks][0] == 64 and dims.stages == 4
    config = space.sample(np.random.default_rng(len(name)))
    model = build_model(config).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    kinds = {type(b.attn) for b in transformer_blocks(model)}
    assert kinds & {AdditiveAttention, LinearAttention}  # the sample replaced some attention outright


def test_blocks_run_at_their_stage_sizes():
    dims = ModelDims.of(SMALL)
    assert [(b.stage, b.tokens, b.channels, b.heads, b.hidden, b.kv_tokens) for b in dims.blocks] == [
        (0, 64, 16, 1, 32, 4), (0, 64, 16, 1, 32, 4), (1, 16, 32, 2, 64, 4), (2, 4, 64, 4, 128, 4)]
    assert [dict(b.attention_dims) for b in dims.blocks] == [{"R": 4}, {"R": 4}, {"R": 2}, {"R": 1}]
    linear = ModelDims.of(ModelSpec(SMALL.name, {**SMALL.kwargs, "linear": True}))
    assert {b.kv_tokens for b in linear.blocks} == {49} and dict(linear.blocks[0].attention_dims)["P"] == 7


def test_fused_projections_are_the_attentions_q_and_kv():
    attn = transformer_blocks(create_model(SMALL))[0].attn
    fused = FusedProjections(attn)
    x = torch.randn(2, 64, 16)
    q, k, v = fused.qkv(x).chunk(3, dim=-1)
    keys, values = attn.kv(x).chunk(2, dim=-1)
    torch.testing.assert_close(q, attn.q(x))
    torch.testing.assert_close(k, keys)
    torch.testing.assert_close(v, values)


def test_primitives_map_onto_a_pvt_block():
    model = create_model(SMALL)
    dense = [b.attn for b in transformer_blocks(model)]
    blocks = (BlockConfig("msa", "shift", "shift", "shift"), BlockConfig("additive", "shift", "dense", "moe",
              MoEConfig(1, ("dense", "shift")), "tensor"), BlockConfig("linear", "dense", "shift", "dense"),
              BlockConfig())
    converted = build_model(ArchConfig(SMALL, blocks), teacher=model)
    b0, b1, b2, b3 = transformer_blocks(converted)
    # msa keeps the spatial-reduction attention, q and kv both shift; the MLP keeps its depthwise conv
    assert isinstance(b0.attn.q, ShiftLinear) and isinstance(b0.attn.kv, ShiftLinear) and b0.attn.sr is not None
    assert isinstance(b0.mlp.fc1, ShiftLinear) and isinstance(b0.mlp.fc2, ShiftLinear)
    assert isinstance(b0.mlp.dwconv, torch.nn.Conv2d)
    # additive: one fused qkv over every token (no sr), converted to shift; the MoE's experts keep the conv
    assert isinstance(b1.attn, AdditiveAttention) and isinstance(b1.attn.qkv, ShiftLinear)
    assert not hasattr(b1.attn, "sr") and b1.attn.qkv.weight.shape == (48, 16)
    assert isinstance(b1.mlp, MoEMlp) and all(isinstance(e, GridExpert) for e in b1.mlp.experts)
    assert isinstance(b2.attn, LinearAttention) and isinstance(b2.attn.proj, ShiftLinear)
    assert type(b3.attn) is type(dense[3])  # dense blocks are untouched
    for (name, mine), theirs in zip(b3.attn.state_dict().items(), dense[3].state_dict().values()):
        assert torch.equal(mine, theirs), name
    assert dense[0].sr is not None and not isinstance(dense[0].q, ShiftLinear)  # the teacher is never modified
    out = converted(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert b1.mlp.experts[1].mlp.fc1.weight.grad is not None


def test_a_grid_expert_is_the_mlp_with_unrouted_tokens_at_zero():
    mlp = transformer_blocks(create_model(SMALL))[0].mlp
    x = torch.randn(2, 64, 16)
    expert = GridExpert(mlp)
    every = torch.arange(128)
    torch.testing.assert_close(expert(x.reshape(128, 16), every, (2, 8, 8)), mlp(x, (8, 8)).reshape(128, 16))
    rows = torch.tensor([0, 5, 9, 70, 127])
    padded = torch.cat([x.reshape(128, 16)[rows], torch.zeros(3, 16)])  # padded to a kernel bucket of 8
    got = expert(padded, rows, (2, 8, 8))
    hidden = mlp.fc1(x.reshape(128, 16))
    kept = torch.zeros_like(hidden).index_copy(0, rows, hidden[rows]).reshape(2, 8, 8, -1).permute(0, 3, 1, 2)
    want = mlp.fc2(mlp.act(mlp.dwconv(kept).permute(0, 2, 3, 1).reshape(128, -1)[rows]))
    assert got.shape == (8, 16)
    torch.testing.assert_close(got[:5], want)


def test_space_ops_cover_every_sampled_configs_ops_at_each_stage():
    space = SearchSpace.from_dict({"moe": {"top_k": [1, 2]}}, SMALL)
    covered = {op.key for op in space_ops(space, [1, 2])}
    rng = np.random.default_rng(0)
    for _ in range(20):
        config = space.sample(rng)
        for batch in (1, 2):
            ops = list(config_ops(config, batch))
            assert {op.key for op in ops} <= covered
    attention = [op for op in space_ops(space, [1]) if op.op == "module.attention"]
    assert {op.dims["T"] for op in attention} == {64, 16, 4}
    assert all(("R" in op.dims) == op.variant.startswith("msa/") for op in attention)  # others drop the reduction
    mlps = [op for op in space_ops(space, [2]) if op.op == "module.mlp"]
    assert all(op.dims["G"] == 2 * op.dims["T"] for op in mlps)
    # an expert scatters onto the grid even with every token (X): another module than the whole MLP at that size
    experts = {(op.dims["M"], op.dims["C"]) for op in mlps if op.dims.get("X") == 1}
    wholes = {(op.dims["M"], op.dims["C"]) for op in mlps if "X" not in op.dims}
    assert experts & wholes and all(op.dims["M"] == op.dims["G"] for op in mlps if "X" not in op.dims)
    tasks = {(s.kernel, s.M, s.K, s.N) for s in kernel_tasks(space, [1])}
    assert ("matshift", 64, 16, 16) in tasks and ("matshift", 4, 16, 32) in tasks  # msa's q, and kv at 2x2 tokens
    assert ("matshift", 64, 16, 48) in tasks  # the fused qkv of additive/linear attention
    assert ("additive", 64, 16, 1) in tasks  # additive's mixing over every token of stage 0: T x D x heads


def test_stages_override_by_stage_and_blocks_override_them():
    space = SearchSpace.from_dict({"choices": {"attention": ["msa", "linear"]},
                                   "stages": {0: {"attention": ["additive"]}, 2: {"mlp": ["dense"]}},
                                   "blocks": {1: {"qkv": ["dense"]}}}, SMALL)
    assert [b.attention for b in space.blocks] == [("additive",), ("additive",), ("msa", "linear"), ("msa", "linear")]
    assert space.blocks[1].qkv == ("dense",) and space.blocks[0].qkv == ("dense", "shift", "shift16", "int8")
    assert space.blocks[3].mlp == ("dense",) and space.blocks[2].mlp != ("dense",)
    with pytest.raises(ConfigError, match=r"stage index 3 is not in 0..2"):
        SearchSpace.from_dict({"stages": {3: {"attention": ["msa"]}}}, SMALL)


def test_a_linear_checkpoint_for_a_plain_model_names_the_key(tmp_path):
    torch.save(create_model(ModelSpec(SMALL.name, {**SMALL.kwargs, "linear": True})).state_dict(), tmp_path / "li.pt")
    with pytest.raises(ConfigError, match="linear=True PVTv2 and the model linear=False: set model.kwargs.linear: "
                                          "true"):
        load_weights(create_model(SMALL), tmp_path / "li.pt", "model.checkpoint")


def test_timing_cuts_a_pvt_down_to_one_block_per_stage():
    family = family_for(SMALL)
    small = family.timing_spec(SMALL)
    assert small.kwargs["depths"] == (1, 1, 1)
    assert [family.timing_index(ModelDims.of(SMALL), i) for i in range(4)] == [0, 0, 1, 2]
    frame = family.frame(create_model(small))
    assert frame(torch.randn(1, 3, 32, 32)).shape == (1, 10)



def test_an_expert_is_timed_with_its_scatter_even_when_it_gets_every_token(tmp_path):
    from kernels.runtime import KernelSet
    from latency_model.decomposition import Op, mlp_shape
    from latency_model.timing import build_op

    kernels, dims = KernelSet("cpu", trials=0, root=tmp_path), ModelDims.of(SMALL).blocks[0]
    expert, args = build_op(Op("module.mlp", "dense", mlp_shape(dims, 1, dims.tokens, expert=True)), SMALL, kernels)
    assert isinstance(expert, GridExpert) and expert(*args).shape == (64, 16)
    whole, _ = build_op(Op("module.mlp", "dense", mlp_shape(dims, 1)), SMALL, kernels)
    assert not isinstance(whole, GridExpert)


def test_pvt_quickstart_runs_end_to_end(tmp_path, capsys):
    """`nas run` on the bundled PVT quick-start, CI-sized: profile, fit, pretrain, supernet, search, report,
    export."""
    data = yaml.safe_load((ROOT / "studies" / "pvt_quickstart.yaml").read_text())
    data["budget"] = {"n_trials": 3, "epochs": 1, "steps_per_epoch": 2, "pretrain_epochs": 1, "finetune_epochs": 1}
    data["data"]["images"] = 600
    data["evaluation"]["supernet_steps"] = 3  # the quick-start searches in supernet mode
    data["refine"] = {"top": 1, "seeds": 1, "epochs": 1}  # and refines its front
    # plumbing, not timing: a shared CI machine's noise must not stop the run (the gate has tests of its own)
    data["latency"].update(trials=0, repeats=3, calibration=4, max_spread=10.0, max_contention=1.0,
                           max_model_error=10.0)
    study = tmp_path / "pvt_quickstart.yaml"
    study.write_text(yaml.safe_dump(data))
    assert main(["run", str(study), "--kernel-trials", "0"]) == 0
    said = capsys.readouterr().out
    assert "7/7 export" in said
    trials = [t for t in stored_trials(study) if t.state.name == "COMPLETE"]
    assert len(trials) == 3
    references = {t.user_attrs.get(attr.REFERENCE) for t in trials}
    assert references >= {"dense", "paper"}  # the paper's PVT allocation is a reference trial
    paper = next(t for t in trials if t.user_attrs.get(attr.REFERENCE) == "paper")
    config = ArchConfig.from_json(paper.user_attrs[attr.CONFIG])
    assert {b.attention for b in config.blocks} == {"additive"} and {b.mlp for b in config.blocks} == {"moe"}
    assert next((tmp_path / "runs" / "pvt_quickstart" / "best").glob("trial-*.yaml"))
