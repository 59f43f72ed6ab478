import pytest
import torch
from timm.layers import Attention
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from search_spaces.ops import AdditiveAttention, LinearAttention, binarize_ste
from search_spaces.ops.attention import EPS


def _timm_attention(dim=32, heads=2):
    return Attention(dim, num_heads=heads, qkv_bias=True)


def test_token_binarization_gives_exact_codes_and_clipped_identity_gradient():
    x = torch.tensor([[0.0, 0.5, 3.0, -4.0]], requires_grad=True)  # mean -0.125
    codes = binarize_ste(x, "token")
    assert codes.tolist() == [[1.0, 1.0, 1.0, 0.0]]
    codes.sum().backward()
    # the centered values are 0.125, 0.625, 3.125, -3.875: the last two are outside the clip, so no gradient
    # passes there; the mean's gradient spreads what passes (-2/4 each)
    assert torch.allclose(x.grad, torch.tensor([[0.5, 0.5, -0.5, -0.5]]))


def test_tensor_binarization_is_the_papers_whole_tensor_mean_with_gradient_on_0_to_1():
    # two tokens: per-token means (0.05 and 0.8) would give other codes than the tensor's mean (0.425)
    x = torch.tensor([[0.0, 0.1], [0.6, 1.0]], requires_grad=True)
    codes = binarize_ste(x, "tensor")
    assert codes.tolist() == [[0.0, 0.0], [1.0, 1.0]]
    assert binarize_ste(x.detach(), "token").tolist() == [[0.0, 1.0], [0.0, 1.0]]
    y = torch.tensor([[-0.5, 0.3], [1.5, 0.9]], requires_grad=True)
    binarize_ste(y, "tensor").sum().backward()
    # straight through where 0 <= y <= 1 (clamp's gradient), nothing elsewhere
    assert y.grad.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="binarization"):
        binarize_ste(y, "median")


@pytest.mark.parametrize("binarize", ["tensor", "token"])
def test_additive_attention_uses_its_binarization(binarize):
    torch.manual_seed(0)
    attn = AdditiveAttention(_timm_attention(), binarize=binarize)
    x = torch.randn(2, 9, 32)
    attn(x)
    q = attn.qkv(x).reshape(2, 9, 3, 2, 16).permute(2, 0, 3, 1, 4)[0]
    q = q / (q.norm(dim=-1, keepdim=True) + EPS)
    assert torch.equal(attn.last_codes[0], binarize_ste(q, binarize))


@pytest.mark.parametrize("binarize", ["tensor", "token"])
def test_inference_computes_the_codes_alone_and_the_same_outputs_bit_for_bit(binarize):
    torch.manual_seed(0)
    attn = AdditiveAttention(_timm_attention(), binarize=binarize)
    nn.init.normal_(attn.dconv.weight)
    x = torch.randn(2, 9, 32)
    trained = attn(x)
    trained_codes = attn.last_codes
    with torch.no_grad():
        inferred = attn(x)
    assert torch.equal(inferred, trained)
    assert all(torch.equal(a, b) for a, b in zip(attn.last_codes, trained_codes))


def test_additive_codes_are_binary_outputs_finite_and_gradients_reach_qkv():
    attn = AdditiveAttention(_timm_attention())
    x = torch.randn(3, 17, 32, requires_grad=True)
    y = attn(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    q_b, k_b = attn.last_codes
    assert set(q_b.unique().tolist()) <= {0.0, 1.0} and set(k_b.unique().tolist()) <= {0.0, 1.0}
    assert 0 < q_b.mean() < 1  # both codes occur
    y.pow(2).sum().backward()
    assert attn.qkv.weight.grad.abs().sum() > 0
    # queries and keys (the first two thirds of qkv) get gradient through the straight-through codes
    d = attn.attn_dim
    assert attn.qkv.weight.grad[:d].abs().sum() > 0 and attn.qkv.weight.grad[d : 2 * d].abs().sum() > 0
    assert attn.dconv.weight.grad.abs().sum() > 0  # the zero-initialized residual still learns


def test_additive_attention_products_are_binary_times_real():
    """The core is 0.5 v + Q_b (K_b^T V) / pi: check against explicit masked row sums."""
    attn = AdditiveAttention(_timm_attention())
    q, k, v = torch.randn(3, 1, 2, 9, 16).unbind(0)
    q_b, k_b = attn.codes(q, k)
    out = attn.mix(q, k, v) - attn.dconv(v)
    heads, tokens, head_dim = 2, 9, 16
    # K_b^T V: row c sums the value rows of the tokens whose key has bit c set
    kv = [torch.stack([v[0, h][k_b[0, h, :, c] > 0].sum(0) for c in range(head_dim)]) for h in range(heads)]
    # Q_b (K_b^T V): row n sums the rows of kv selected by the query bits of token n
    qkv = torch.stack([torch.stack([kv[h][q_b[0, h, n] > 0].sum(0) for n in range(tokens)]) for h in range(heads)])
    inner = 0.5 * v[0] + qkv / torch.pi
    want = inner / inner.norm(dim=-1, keepdim=True)
    assert torch.allclose(out[0], want, atol=1e-5)


def test_linear_attention_matches_quadratic_form():
    attn = LinearAttention(_timm_attention())
    q, k, v = torch.randn(3, 2, 2, 11, 16).unbind(0)
    fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    weights = fq @ fk.transpose(-2, -1)
    want = (weights / weights.sum(-1, keepdim=True)) @ v
    assert torch.allclose(attn.mix(q, k, v), want, atol=1e-5)


def _flops(module, tokens):
    x = torch.randn(1, tokens, 32)
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


def test_linear_attention_cost_grows_linearly_in_tokens():
    timm_attn = _timm_attention()
    timm_attn.fused_attn = False  # the flop counter sees the explicit products, not the fused CPU kernel
    linear = LinearAttention(_timm_attention())
    n = 256
    assert _flops(linear, 4 * n) / _flops(linear, n) == pytest.approx(4.0, rel=0.01)
    # the softmax attention it replaces grows faster than linearly
    assert _flops(timm_attn, 4 * n) / _flops(timm_attn, n) > 6.0


def test_attention_masks_are_refused_clearly():
    with pytest.raises(ValueError, match="does not support attention masks"):
        LinearAttention(_timm_attention())(torch.randn(1, 4, 32), attn_mask=torch.ones(4, 4, dtype=torch.bool))


def test_the_token_conv_is_the_depthwise_conv_it_replaces_with_the_same_gradients():
    from search_spaces.ops.attention import token_conv

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, kernel_size=(9, 1), padding=(4, 0), groups=3, bias=False)
    v = torch.randn(2, 3, 11, 5, requires_grad=True)  # fewer tokens than twice the kernel: padding on both sides
    ours, theirs = token_conv(v, conv.weight), conv(v)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, (v, conv.weight), grad)
    theirs_grads = torch.autograd.grad(theirs, (v, conv.weight), grad)
    for a, b in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
