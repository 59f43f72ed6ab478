"""The primitive registry: every stage reads it, so a primitive declared in one plugin module (here written by this
test) is drawn, built, profiled, priced and searched, in the search's worker processes too."""

import sys
import textwrap

import numpy as np
import pytest
import torch

from nas import attributes as attr
from nas import pipeline
from nas.cli import main
from nas.study import Study
from tiny import PLUMBING_NOISE, TINY_MODEL, model_section, search, stored_trials, write_study
from tiny import pvt as tiny_pvt
from search_spaces import BlockConfig, build_model, registry
from search_spaces.ops.attention import AdditiveAttention

PLUGIN = "pooled_attention"
SOURCE = textwrap.dedent('''
    """A new attention primitive: every token adds its head's mean value (no attention matrix, linear in tokens)."""
    from search_spaces import registry
    from search_spaces.ops.attention import ProjectedAttention


    class PooledAttention(ProjectedAttention):
        def mix(self, q, k, v):
            return v + v.mean(dim=-2, keepdim=True)


    registry.register(registry.Primitive(
        "attention", "pooled", build=lambda attn, block: PooledAttention(attn), module=PooledAttention,
        description="each token adds the mean value of its head"))
''')


@pytest.fixture
def plugin_study(tmp_path):
    (tmp_path / f"{PLUGIN}.py").write_text(SOURCE)
    study = write_study(tmp_path / "pooled.yaml", {
        "name": "pooled", "model": TINY_MODEL, "plugins": [PLUGIN],
        "space": {"choices": {"attention": ["pooled"], "qkv": ["dense", "shift"], "proj": ["dense"],
                              "mlp": ["dense"]}},
        "latency": {"db": f"sqlite:///{tmp_path / 'latency.db'}", "predictor": str(tmp_path / "predictor.json"),
                    "trials": 0, "repeats": 3, "calibration": 4, **PLUMBING_NOISE},
        "budget": {"n_trials": 2, "epochs": 1, "steps_per_epoch": 2, "pretrain_epochs": 1},
        "train": {"batch_size": 32}})
    yield study
    registry.unregister("attention", "pooled")  # the other tests' spaces offer the built-in primitives only
    sys.modules.pop(PLUGIN, None)
    sys.path[:] = [p for p in sys.path if p != str(tmp_path.resolve())]


def test_a_primitive_from_a_plugin_runs_through_every_stage(plugin_study, tmp_path, capsys):
    assert "pooled" not in registry.names("attention")
    study = Study.load(plugin_study)  # imports the plugin, which registers the primitive
    assert registry.names("attention")[-1] == "pooled" and study.plugins == (PLUGIN,)
    config = study.space.sample(np.random.default_rng(0))
    assert {b.attention for b in config.blocks} == {"pooled"}
    model = build_model(config)
    assert all(type(block.attn).__name__ == "PooledAttention" for block in model.blocks)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    capsys.readouterr()

    assert not pipeline.profile(study).failed
    assert pipeline.fit_latency(study).refused is None
    config.save(tmp_path / "arch.yaml")
    assert main(["latency", str(plugin_study), "--config", str(tmp_path / "arch.yaml")]) == 0
    said = capsys.readouterr().out
    assert "pooled qkv=" in said and "predicted" in said  # priced from its own measured module op

    pipeline.pretrain(study)
    search(plugin_study, workers=1)  # a worker process imports the plugin
    trials = [t for t in stored_trials(plugin_study) if t.state.name == "COMPLETE"]
    assert len(trials) == 2 and all(t.params.get("b0.attention", "pooled") == "pooled" for t in trials)
    assert all('"attention": "pooled"' in t.user_attrs[attr.CONFIG] for t in trials)

    # an exported config names its study, which is read first: its plugin registers the primitive again
    registry.unregister("attention", "pooled")
    sys.modules.pop(PLUGIN, None)
    exported = pipeline.export(Study.load(plugin_study), "best", tmp_path / "best")[0]
    registry.unregister("attention", "pooled")
    sys.modules.pop(PLUGIN, None)
    pipeline.finetune(pipeline.FinetuneJob.of(exported, epochs=1), tmp_path / "tuned", measure=False)
    assert (tmp_path / "tuned" / "model.safetensors").is_file()
    registry.unregister("attention", "pooled")
    sys.modules.pop(PLUGIN, None)
    capsys.readouterr()
    assert main(["show", str(exported)]) == 0 and "pooled qkv=" in capsys.readouterr().out  # nas show too


def test_registered_primitives_declare_what_each_stage_needs():
    for primitive in registry.primitives():
        assert primitive.run_on_kernels is None or primitive.module is not None, primitive
    shapes = registry.Shapes(batch=2, tokens=17, channels=32, heads=2, hidden=128)
    additive = registry.get("attention", "additive")
    # the whole mixing of both images in one call: 17 tokens x head dim 16 x 2 heads, a batch of 2 images
    assert additive.tasks(shapes) == [("additive", "lut4", 17, 16, 2, 2)]
    assert registry.get("linear", "shift").tasks(shapes, shapes.linear_layers("qkv")) == [("matshift", None, 34, 32, 96)]
    assert BlockConfig("msa", "dense", "dense", "shift").on_kernels
    assert not BlockConfig("linear", "dense", "dense", "dense").on_kernels
    with pytest.raises(ValueError, match="unknown slot"):
        registry.register(registry.Primitive("norm", "rms"))
    with pytest.raises(ValueError, match="module class"):
        registry.register(registry.Primitive("attention", "fast", run_on_kernels=lambda m, k: m))


def test_the_kernel_runtime_gives_additive_attention_its_fused_kernel(tmp_path, tiny_spec):
    from kernels.runtime import KernelAdditiveAttention, KernelSet, to_kernels
    from search_spaces import ArchConfig

    model = build_model(ArchConfig(tiny_spec, (BlockConfig("additive"), BlockConfig()))).eval()
    fast = to_kernels(model, KernelSet("cpu", trials=0, root=tmp_path))
    attention = fast.blocks[0].attn
    assert type(attention) is KernelAdditiveAttention and attention.qkv is not model.blocks[0].attn.qkv
    assert type(model.blocks[0].attn) is AdditiveAttention  # the original is left as it was
    assert model.blocks[0].attn.binary_product is torch.matmul


def test_a_primitive_declared_for_one_family_is_refused_on_another(tmp_path, capsys):
    """A plugin's attention declared for ViT blocks only: a PVTv2 study's default space leaves it out, a space that
    names it is refused where it does, and a config that puts it on a PVTv2 block is refused with the block."""
    from search_spaces import ArchConfig, ConfigError, ModelSpec, SearchSpace

    (tmp_path / f"{PLUGIN}.py").write_text(SOURCE.replace('description=', 'families=("vit",), description='))
    pvt = model_section(tiny_pvt())
    try:
        named = write_study(tmp_path / "named.yaml", {"name": "named", "model": pvt, "plugins": [PLUGIN],
                                                      "space": {"stages": {1: {"attention": ["msa", "pooled"]}}}})
        assert main(["validate", str(named)]) == 2
        said = capsys.readouterr().err
        assert "space.stages.1.attention[1]" in said and "'pooled' is declared for vit blocks only" in said
        assert "Traceback" not in said

        assert "pooled" in registry.names("attention")  # the plugin was imported before the space was read
        spec = ModelSpec(pvt["name"], pvt["kwargs"])
        assert all("pooled" not in b.attention for b in SearchSpace.from_dict({}, spec).blocks)
        vit = SearchSpace.from_dict({}, ModelSpec(TINY_MODEL["name"], TINY_MODEL["kwargs"]))
        assert all("pooled" in b.attention for b in vit.blocks)

        config = ArchConfig(spec, (BlockConfig(), BlockConfig("pooled")))
        with pytest.raises(ConfigError, match=r"blocks\[1\]\.attention: attention 'pooled' is declared for vit"):
            build_model(config)
    finally:
        registry.unregister("attention", "pooled")
        sys.modules.pop(PLUGIN, None)
        sys.path[:] = [p for p in sys.path if p != str(tmp_path.resolve())]
