import json

import numpy as np
import pytest
import torch
from timm.layers import Mlp

from search_spaces.builtins import moe_from_dense
from search_spaces.ops import ShiftLinear, cv_squared, moe_aux_loss


def _moe(dim=16, top_k=1, kinds=("dense", "shift")):
    return moe_from_dense(Mlp(dim, 4 * dim), kinds, top_k)


def test_cv_squared():
    assert cv_squared(torch.tensor([2.0, 2.0, 2.0])).item() == 0.0
    x = torch.tensor([1.0, 3.0])
    assert cv_squared(x).item() == pytest.approx(x.var().item() / 4.0)


def test_unit_latency_gives_the_standard_balance_loss():
    moe = _moe()
    moe.eval()  # deterministic gates: load is the token count per expert
    x = torch.randn(4, 10, 16)
    moe(x)
    top = moe.router(x.reshape(-1, 16)).argmax(-1)
    # top-1 gates are 1 (top-k probabilities renormalized), so importance and load are both the token counts
    importance = load = torch.bincount(top, minlength=2).float()
    standard = importance.var() / importance.mean() ** 2 + load.var() / load.mean() ** 2
    assert moe.aux_loss.item() == pytest.approx(standard.item(), rel=1e-5)


def test_experts_start_as_copies_of_the_dense_mlp():
    mlp = Mlp(16, 64)
    moe = moe_from_dense(mlp)
    x = torch.randn(5, 16)
    assert torch.equal(moe.experts[0](x), mlp(x))
    assert isinstance(moe.experts[1].fc1, ShiftLinear) and isinstance(moe.experts[1].fc2, ShiftLinear)
    assert not isinstance(mlp.fc1, ShiftLinear)  # the source is left alone


def test_router_gets_gradient_from_the_task_loss_with_top1():
    moe = _moe()
    y = moe(torch.randn(2, 8, 16))
    y.pow(2).sum().backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_stats_after_forward():
    moe = _moe(kinds=("dense", "shift", "shift"), top_k=2)
    moe(torch.randn(3, 7, 16))
    assert moe.stats.fraction.shape == (3,)
    assert moe.stats.fraction.sum().item() == pytest.approx(1.0)
    assert moe.stats.importance.sum().item() == pytest.approx(21.0, rel=1e-5)  # top-2 gates sum to 1 per token


def test_a_token_routed_to_one_expert_gets_exactly_its_output():
    moe = _moe().eval()
    x = torch.randn(40, 16)
    y = moe(x)
    choice = moe.router(x).argmax(-1)
    for e, expert in enumerate(moe.experts):
        rows = choice == e
        assert torch.allclose(y[rows], expert(x[rows]), atol=1e-6)


@pytest.mark.parametrize("top_k", [1, 2])
def test_dispatch_equals_every_token_through_its_experts_with_and_without_gradients(top_k):
    torch.manual_seed(0)
    moe = _moe(kinds=("dense", "shift", "dense"), top_k=top_k).eval()
    x = torch.randn(3, 9, 16)
    tokens = x.reshape(-1, 16)
    probs, experts = moe.router(tokens).softmax(-1).topk(top_k, dim=-1)
    gates = probs / probs.sum(-1, keepdim=True)
    expected = torch.stack([sum(g * moe.experts[int(e)](t[None])[0] for g, e in zip(gates[i], experts[i]))
                            for i, t in enumerate(tokens)]).reshape(x.shape)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-6)
        moe.pad_to_buckets = True  # padded experts (the kernels' shapes): the same outputs
        torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-6)
    assert moe.stats.per_image.sum().item() == 27 * top_k


def test_moe_aux_loss_sums_every_layer():
    model = torch.nn.Sequential(_moe(), _moe())
    assert moe_aux_loss(model) is None  # nothing ran yet
    model(torch.randn(2, 5, 16))
    assert moe_aux_loss(model).item() == pytest.approx((model[0].aux_loss + model[1].aux_loss).item())


def test_expert_latency_is_validated():
    moe = _moe()
    with pytest.raises(ValueError, match="2 positive finite"):
        moe.set_expert_latency([1.0, 0.0])
    with pytest.raises(ValueError, match="2 positive finite"):
        moe.set_expert_latency([1.0, 2.0, 3.0])
    moe.set_expert_latency([6.0, 4.0])
    assert moe.expert_latency.tolist() == pytest.approx([1.2, 0.8])


def _shift_share_after_router_training(latency, steps=300):
    torch.manual_seed(0)
    moe = _moe()
    moe.set_expert_latency(latency)
    opt = torch.optim.Adam([*moe.router.parameters(), moe.noise.weight], lr=0.02)
    data = torch.randn(256, 16)
    for _ in range(steps):
        moe(data[torch.randint(0, 256, (64,))])
        opt.zero_grad()
        moe.aux_loss.backward()
        opt.step()
    moe.eval()
    with torch.no_grad():
        moe(torch.randn(2048, 16))
    return moe.stats.fraction[1].item()


def test_latency_aware_loss_sends_more_tokens_to_the_faster_expert():
    shift_faster = _shift_share_after_router_training([6.0, 4.0])
    shift_slower = _shift_share_after_router_training([4.0, 6.0])
    # the balanced optimum of cv²(importance * lat) is a 60 / 40 split toward the faster expert
    assert shift_faster > shift_slower + 0.05


def test_per_image_counts_are_the_tokens_each_image_sent_each_expert():
    moe = _moe(kinds=("dense", "shift", "shift"), top_k=2).eval()
    x = torch.randn(3, 7, 16)
    moe(x)
    per_image = moe.stats.per_image
    assert per_image.shape == (3, 3) and per_image.sum(1).tolist() == [14, 14, 14]  # 7 tokens x top-2 each
    top = moe.router(x).topk(2, dim=-1).indices  # [images, tokens, 2]
    for image in range(3):
        assert per_image[image].tolist() == torch.bincount(top[image].flatten(), minlength=3).tolist()
    assert moe.stats.fraction.tolist() == pytest.approx((per_image.sum(0) / 42).tolist())


def test_moe_load_histograms_shares_and_json():
    from search_spaces.ops.moe import MoELoad

    load = MoELoad.from_counts([[7, 0], [3, 4], [7, 0], [0, 7]])
    assert load.histograms[0] == (0.25, 0.0, 0.0, 0.25, 0.0, 0.0, 0.0, 0.5)
    assert load.shares == pytest.approx([17 / 28, 11 / 28])
    assert MoELoad.from_json(json.loads(json.dumps(load.to_json()))) == load
    assert MoELoad.parse([0.25, 0.75]) == [0.25, 0.75]  # a stored plain split (older tables) stays a split
    with pytest.raises(ValueError, match="an MoE load must look like"):
        MoELoad.from_json({"experts": []})


def test_a_batch_count_is_the_sum_of_independent_images():
    from search_spaces.ops.moe import MoELoad

    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, size=(50, 2))
    load = MoELoad.from_counts(counts)
    one = np.asarray(load.histograms[1])
    pairs = np.zeros(2 * len(one) - 1)
    for a, pa in enumerate(one):  # every pair of images, by brute force
        for b, pb in enumerate(one):
            pairs[a + b] += pa * pb
    assert load.batch_counts(1, 2) == pytest.approx(pairs, abs=1e-12)
    eight = load.batch_counts(0, 8)
    assert eight.sum() == pytest.approx(1.0)
    assert (eight * np.arange(len(eight))).sum() == pytest.approx(8 * counts[:, 0].mean())
