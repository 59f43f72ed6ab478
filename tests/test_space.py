import numpy as np
import optuna
import pytest
import yaml

from search_spaces import ArchConfig, ConfigError, SearchSpace


def _space(tiny_spec, **space):
    return SearchSpace.from_dict(space, tiny_spec)


def test_default_space_size_counts_every_architecture(tiny_spec):
    # per block: 3 attention x 4 qkv x 4 proj x 5 mlp (moe with one top_k) = 240; two free blocks
    assert _space(tiny_spec).size() == 240**2
    assert _space(tiny_spec, tied=True).size() == 240
    assert _space(tiny_spec, moe={"top_k": [1, 2]}).size() == (3 * 4 * 4 * 6) ** 2
    restricted = _space(tiny_spec, choices={"attention": ["msa"], "mlp": ["dense", "moe"]}, blocks={1: {"qkv": ["dense"]}})
    assert restricted.size() == (1 * 4 * 4 * 2) * (1 * 1 * 4 * 2)


def test_sample_covers_the_space_and_respects_overrides(tiny_spec):
    space = _space(tiny_spec, choices={"qkv": ["shift"]}, blocks={0: {"attention": ["additive"]}})
    rng = np.random.default_rng(0)
    seen = {space.sample(rng) for _ in range(400)}
    assert all(c.blocks[0].attention == "additive" and c.blocks[0].qkv == "shift" for c in seen)
    assert {c.blocks[1].attention for c in seen} == {"msa", "linear", "additive"}
    assert len(seen) > 100  # draws are varied, not stuck


def test_tied_space_repeats_one_block(tiny_spec):
    space = _space(tiny_spec, tied=True)
    config = space.sample(np.random.default_rng(3))
    assert len(set(config.blocks)) == 1 and config.depth == 2


def test_suggest_through_optuna_and_enqueue_a_known_config(tiny_spec):
    space = _space(tiny_spec, choices={"proj": ["dense"]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    study.optimize(lambda t: configs.append(space.suggest(t)) or 0.0, n_trials=20)
    params = study.trials[0].params
    assert "b0.attention" in params and "b0.proj" not in params  # single-choice keys are fixed, not suggested
    assert all(isinstance(c, ArchConfig) and c.blocks[1].proj == "dense" for c in configs)
    # params_of inverts suggest: enqueueing them reproduces the config
    wanted = space.sample(np.random.default_rng(1))
    study.enqueue_trial(space.params_of(wanted))
    got = []
    study.optimize(lambda t: got.append(space.suggest(t)) or 0.0, n_trials=1)
    assert got[0] == wanted


def test_space_from_study_file_and_depth_from_timm(tmp_path):
    from nas.study import Study

    path = tmp_path / "study.yaml"
    # no depth in kwargs: the depth comes from the timm model definition (deit_tiny has 12 blocks)
    path.write_text(yaml.safe_dump({"name": "s", "model": {"name": "deit_tiny_patch16_224",
                                                           "kwargs": {"img_size": 32}}}))
    assert Study.load(path).space.depth == 12


@pytest.mark.parametrize(
    "space, where, what",
    [
        ({"choices": {"attention": ["msa", "softmax"]}}, "space.choices.attention[1]", "unknown attention option 'softmax'"),
        ({"choices": {"mlp": []}}, "space.choices.mlp", "non-empty list"),
        ({"choices": {"atention": ["msa"]}}, "space.choices", "unknown key(s) 'atention'"),
        ({"blocks": {5: {"mlp": ["dense"]}}}, "space.blocks", "block index 5 is not in 0..1"),
        ({"moe": {"top_k": [3]}}, "space.moe.top_k", "from 1 to the number of experts (2)"),
        ({"tied": "yes"}, "space.tied", "true or false"),
        ({"tied": True, "blocks": {0: {"mlp": ["dense"]}}}, "space.blocks", "tied"),
    ],
)
def test_bad_spaces_name_the_key(tiny_spec, space, where, what):
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_dict(space, tiny_spec)
    assert info.value.where == where and what in str(info.value)


def test_bad_study_file_names_file_and_model(tmp_path):
    from nas.study import Study

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "model": {"name": "not_a_model"}}))
    with pytest.raises(ConfigError, match=r"s.yaml: model.name: unknown timm model 'not_a_model'"):
        Study.load(path)
    path.write_text("name: s\nspace: {}\n")
    with pytest.raises(ConfigError, match=r"s.yaml: missing key\(s\) 'model'"):
        Study.load(path)


def test_params_round_trip_to_the_same_architecture(tiny_spec):
    import numpy as np

    space = SearchSpace.from_dict({"choices": {"proj": ["dense"]}, "moe": {"top_k": [1, 2]}}, tiny_spec)
    rng = np.random.default_rng(3)
    for _ in range(20):
        config = space.sample(rng)
        params = space.params_of(config)
        assert "b0.proj" not in params  # a single choice is fixed, not a parameter
        assert space.from_params(params) == config
    with pytest.raises(ConfigError, match="b1.mlp: missing"):
        space.from_params({k: v for k, v in params.items() if k != "b1.mlp"})
