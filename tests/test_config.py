import json

import pytest

from search_spaces import ArchConfig, BlockConfig, ConfigError, MoEConfig


def _config(spec):
    return ArchConfig(
        spec,
        (
            BlockConfig("additive", "shift", "dense", "moe", MoEConfig(1, ("dense", "shift"))),
            BlockConfig("linear", "dense", "shift", "shift"),
        ),
    )


def test_json_and_yaml_round_trips_are_exact(tiny_spec, tmp_path):
    config = _config(tiny_spec)
    assert ArchConfig.from_json(config.to_json()) == config
    assert ArchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for name in ("a.yaml", "a.json"):
        loaded = ArchConfig.load(config.save(tmp_path / name))
        assert loaded == config and loaded.id == config.id and hash(loaded) == hash(config)


def test_id_is_stable_and_distinguishes_architectures(tiny_spec):
    a, b = _config(tiny_spec), ArchConfig.dense(tiny_spec, 2)
    assert a.id == _config(tiny_spec).id and a.id != b.id and len(a.id) == 12
    # key order in the input does not matter
    shuffled = {"blocks": a.to_dict()["blocks"], "model": {"kwargs": dict(reversed(tiny_spec.kwargs.items())), "name": tiny_spec.name}}
    assert ArchConfig.from_dict(shuffled).id == a.id


def test_config_is_frozen(tiny_spec):
    config = _config(tiny_spec)
    with pytest.raises(AttributeError):
        config.blocks = ()
    with pytest.raises(TypeError):
        config.model.kwargs["depth"] = 3


def _bad(tiny_spec, **block_changes):
    data = _config(tiny_spec).to_dict()
    data["blocks"][1].update(block_changes)
    return data


@pytest.mark.parametrize(
    "mutate, where, what",
    [
        (lambda d: d["blocks"][1].update(attention="softmax"), "blocks[1].attention", "unknown attention 'softmax'"),
        (lambda d: d["blocks"][0].update(qkv="shfit"), "blocks[0].qkv", "unknown projection 'shfit'"),
        (lambda d: d["blocks"][1].update(moe={"top_k": 1}), "blocks[1].moe", "mlp is 'shift'"),
        (lambda d: d["blocks"][0]["moe"].update(top_k=3), "blocks[0].moe.top_k", "from 1 to the number of experts (2)"),
        (lambda d: d["blocks"][0]["moe"].update(experts=["dense", "mul"]), "blocks[0].moe.experts[1]", "'mul'"),
        (lambda d: d["blocks"][1].pop("proj"), "blocks[1]", "missing key(s) 'proj'"),
        (lambda d: d["blocks"][1].update(mpl="dense"), "blocks[1]", "unknown key(s) 'mpl'"),
        (lambda d: d["blocks"].append(d["blocks"][1]), "blocks", "3 blocks given but model.kwargs.depth is 2"),
        (lambda d: d.pop("model"), "", "missing key(s) 'model'"),
        (lambda d: d["model"].pop("name"), "model", "missing key(s) 'name'"),
        (lambda d: d.update(blocks=[]), "blocks", "at least one block"),
    ],
)
def test_bad_configs_raise_one_error_naming_the_key(tiny_spec, mutate, where, what):
    data = _config(tiny_spec).to_dict()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        ArchConfig.from_dict(data)
    assert info.value.where == where
    assert what in str(info.value)


def test_load_names_the_file(tmp_path, tiny_spec):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: {name: x}\nblocks: [{attention: msa, qkv: dense, proj: dense, mlp: moe, moe: {top_k: 0}}]\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: blocks\[0\].moe.top_k"):
        ArchConfig.load(path)
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="cfg.yaml: not valid YAML"):
        ArchConfig.load(path)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        ArchConfig.load(tmp_path / "missing.yaml")


def test_moe_block_without_options_gets_defaults(tiny_spec):
    data = ArchConfig.dense(tiny_spec, 2).to_dict()
    data["blocks"][0]["mlp"] = "moe"
    assert ArchConfig.from_dict(data).blocks[0].moe == MoEConfig(1, ("dense", "shift"))
