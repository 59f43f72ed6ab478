"""Where each choice pays: each choice's priced part against dense's, the warning when none pays, and the CLI."""

import pytest

from latency_model.keys import OpName, lookup_key, split_attention_variant
from latency_model.decomposition import space_ops
from latency_model.pays import where_it_pays
from latency_model.predictor import Predictor
from nas.cli import main
from search_spaces import ModelSpec, SearchSpace
from tiny import TINY_MODEL, TINY_SPACE

SPEC = ModelSpec(TINY_MODEL["name"], TINY_MODEL["kwargs"])
A, B = 1.5, 0.1  # the composition: a x parts + b per block on the kernels


def hand_priced(space: SearchSpace, cost: dict[str, float]) -> Predictor:
    """A predictor whose every op of ``space`` is priced by hand: dense parts 1 ms, every other choice ``cost``
    of its name (an attention variant multiplies its three names' costs; an MLP's ``mlp:<name>`` if given; the MoE
    router 0.2 ms)."""
    lookup = {}
    for op in space_ops(space, [1]):
        if op.op == OpName.ATTENTION:
            ms = 1.0
            for name in split_attention_variant(op.variant):
                ms *= cost.get(name, 1.0)
        elif op.op == OpName.MLP:
            ms = cost.get(f"mlp:{op.variant}", cost.get(op.variant, 1.0)) * op.dims["M"] / 17  # pro rata tokens
        else:
            ms = 0.2 if op.op == OpName.MOE_ROUTER else 0.5
        lookup[lookup_key(op.op, op.variant, op.dims, op.dtype)] = ms
    return Predictor("hand", lookup, {}, calibration={("vit", 1): [A, B, 0.0]})


def tiny_space(**choices) -> SearchSpace:
    return SearchSpace.from_dict({"choices": {**TINY_SPACE["choices"], **choices}}, SPEC)


def test_a_choice_below_dense_pays_and_its_ratio_includes_the_kernel_block_cost():
    space = tiny_space()
    pays = where_it_pays(space, hand_priced(space, {"shift": 0.5, "linear": 3.0, "additive": 4.0}))
    by = {(r.slot, r.choice): r for r in pays.ratios}
    assert {r.blocks for r in pays.ratios} == {(0, 1)}  # both tiny blocks alike: one row each
    assert by["mlp", "shift"].ratio == pytest.approx((A * 0.5 + B) / A)  # shift runs on the kernels: + b
    assert by["attention", "linear"].ratio == pytest.approx(3.0)  # linear attention runs in torch
    assert by["qkv", "shift"].ratio == pytest.approx((A * 0.5 + B) / A)
    moe = by["mlp", "moe (top-1, dense+shift)"]
    assert 1.0 < moe.ratio < by["attention", "additive"].ratio  # router + experts at their split, + b
    assert pays.pays_anywhere and pays.nothing_pays(("accuracy", "latency_ms")) is None


def test_a_space_whose_choices_all_lose_gets_the_warning():
    space = tiny_space()
    pays = where_it_pays(space, hand_priced(space, {"shift": 2.0, "mlp:shift": 2.5, "linear": 3.0,
                                                   "additive": 4.0}))
    assert not pays.pays_anywhere
    line = pays.nothing_pays(("accuracy", "latency_ms"))
    assert "the latency front will be the all-dense model alone" in line
    # the nearest: the MoE, whose latency-aware split sends most tokens to its dense expert (qkv shift: 2x + b)
    assert "the nearest, mlp moe (top-1, dense+shift) at blocks 0-1 (17 tokens, 32 channels)" in line
    assert "energy_uj" in line  # what would change it includes the objective this study does not search
    assert "(searched here)" in pays.nothing_pays(("accuracy", "latency_ms", "energy_uj"))


def test_the_warning_prints_its_bracketed_metrics_as_text(capsys):
    from types import SimpleNamespace

    from nas.cli.latency_commands import show_nothing_pays

    space = tiny_space()
    pays = where_it_pays(space, hand_priced(space, {"shift": 2.0, "mlp:shift": 2.5, "linear": 3.0,
                                                   "additive": 4.0}))
    objectives = SimpleNamespace(metrics=("accuracy", "latency_ms"), latency_budget_ms=None)
    show_nothing_pays(pays, SimpleNamespace(objectives=objectives))
    printed = " ".join(capsys.readouterr().out.split())
    assert "(objectives.metrics: [accuracy, latency_ms, energy_uj])" in printed  # not swallowed as rich markup


def test_a_space_without_the_dense_choice_is_priced_where_it_can_be():
    space = tiny_space(attention=["linear", "additive"])  # no msa: nothing to compare the attentions against
    pays = where_it_pays(space, hand_priced(space, {"shift": 2.0}))
    assert {r.slot for r in pays.ratios} == {"mlp"}
    assert pays.unpriced and all("no measurements of module.attention" in u for u in pays.unpriced)


def test_profile_and_search_say_where_choices_pay(searchable, tmp_path, capsys):
    from nas import pipeline
    from nas.study import Study

    study_file = searchable(tmp_path, budget={"n_trials": 1})
    pays = pipeline.where_it_pays(Study.load(study_file))
    assert pays is not None and len(pays.ratios) == 5  # linear, additive, qkv shift, mlp shift, moe: one group
    assert main(["profile", str(study_file)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    # the table wraps its first column at 80 characters: "blocks 0-1 (17" starts the cell of the tiny model's blocks
    assert "where each choice pays on cpu-" in out and "blocks 0-1 (17" in out
    warned = "the latency front will be the all-dense model alone" in out
    assert warned == (not pays.pays_anywhere)  # said exactly when no choice is priced below dense
    assert main(["search", str(study_file)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("the latency front will be the all-dense model alone" in out) == warned
