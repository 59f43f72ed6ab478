"""The compiled runtime (latency.runtime: compiled): the same outputs as eager, its own rows, one line when it
cannot run."""

import os

import torch
import yaml

from kernels.runtime import KernelSet, compiled, to_kernels
from latency_model import db
from nas import pipeline
from nas.cli import main
from nas.study import Study
from tiny import PLUMBING_NOISE, TINY_MODEL
from search_spaces import ArchConfig, BlockConfig, ModelSpec, MoEConfig, build_model

PAPER = BlockConfig("additive", "shift", "shift", "moe", MoEConfig(1, ("dense", "shift")))


@torch.no_grad()
def test_a_compiled_block_computes_what_the_eager_block_does(tmp_path):
    spec = ModelSpec(TINY_MODEL["name"], TINY_MODEL["kwargs"])
    model = to_kernels(build_model(ArchConfig(spec, (PAPER, BlockConfig()))), KernelSet("cpu", 0, tmp_path))
    block = model.blocks[0]  # additive attention's fused kernel, shift projections and a shift expert on matshift
    x = torch.randn(2, 17, 32)
    eager = block(x)
    eager_routing = block.mlp.stats.per_image.clone()
    fast = compiled(block)
    for _ in range(2):  # the first call compiles, the second runs what was compiled
        out = fast(x)
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)
    assert torch.equal(block.mlp.stats.per_image, eager_routing)  # the router's record, which prices MoE blocks


@torch.no_grad()
def test_blocks_of_one_shape_share_one_compiled_graph(tmp_path):
    # each layer runs its own weights, but its handle is an input of the graph, not a constant dynamo guards on:
    # a guard per layer would recompile the block for every layer, and past torch's recompile limit (8) run the
    # rest of a deep model eagerly
    spec = ModelSpec(TINY_MODEL["name"], TINY_MODEL["kwargs"])
    block = BlockConfig("additive", "shift", "shift", "dense")
    model = to_kernels(build_model(ArchConfig(spec, (block, block))), KernelSet("cpu", 0, tmp_path))
    x = torch.randn(2, 17, 32)
    torch._dynamo.reset()  # blocks of other shapes compiled by earlier tests are recompiles of the same code
    with torch._dynamo.config.patch(error_on_recompile=True):
        for layer in model.blocks:
            torch.testing.assert_close(compiled(layer)(x), layer(x), rtol=1e-4, atol=1e-4)


def _study(folder, runtime: str, db_url: str) -> str:
    data = {"name": f"tiny_{runtime}", "model": TINY_MODEL,
            "space": {"choices": {"attention": ["msa"], "qkv": ["dense", "shift"], "proj": ["dense"],
                                  "mlp": ["dense"]}},
            "latency": {"db": db_url, "trials": 0, "repeats": 3, "calibration": 0, "runtime": runtime,
                        **PLUMBING_NOISE}}
    path = folder / f"{runtime}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_eager_and_compiled_profiles_keep_their_own_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTADD_CACHE", str(tmp_path / "kernels"))
    url = f"sqlite:///{tmp_path / 'latency.db'}"
    eager, fast = _study(tmp_path, "eager", url), _study(tmp_path, "compiled", url)
    for path in (eager, fast):
        profiled = pipeline.profile(Study.load(path))
        assert profiled.measured and not profiled.failed and not profiled.noisy
    engine = db.connect(url)
    names = db.devices(engine)
    assert len(names) == 2 and names[1] == names[0] + "+compiled"
    rows = {name: {(r.op, r.variant, str(r.shape)) for r in db.latest(engine, name)} for name in names}
    assert rows[names[0]] == rows[names[1]]  # the same ops, each runtime's own timing of them
    assert pipeline.fit_latency(Study.load(fast)).refused is None
    assert (tmp_path / f"latency_{names[1]}.json").exists() and not (tmp_path / f"latency_{names[0]}.json").exists()


def test_the_compiled_runtime_without_a_compiler_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXX", "no-such-compiler++")
    fast = _study(tmp_path, "compiled", f"sqlite:///{tmp_path / 'latency.db'}")
    assert main(["profile", fast]) == 2
    err = capsys.readouterr().err
    assert "latency.runtime" in err and "'no-such-compiler++'" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "latency.db")
