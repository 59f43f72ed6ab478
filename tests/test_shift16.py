"""shift16: shift weights on int16 block-floating-point activations, one fused kernel of integer dot products.

What trains is what runs: the float forward computes with the same quantized activations as the integer path, the
integer path (torch) is the kernel's contract bit for bit, in eager and compiled runtimes, on every CPU feature
level the project meets."""

import numpy as np
import pytest
import torch
from torch import nn

from kernels import KernelSpec, shiftlinear
from kernels import target as targets
from kernels.check import check
from kernels.runtime import KernelSet, KernelShift16Linear, _aligned, compiled, to_kernels
from kernels.shiftlinear import pack, unpack
from kernels.tuning import _irmodule, compile_untuned, get_kernel
from search_spaces import ArchConfig, BlockConfig, ModelSpec, MoEConfig, build_model
from search_spaces.ops import Shift16Linear, ShiftLinear
from search_spaces.ops.shift import activation_bits, block_float, int16_weights, shift16_matmul

from tiny import TINY_MODEL


def test_int16_weights_are_the_shift_weights_exactly():
    layer = Shift16Linear.from_dense(nn.Linear(24, 8))
    weights, bits = layer.quantized16()
    assert weights.dtype == torch.int16
    assert torch.equal(weights.float() * 2.0**-14, layer.effective_weight())
    # no sum of 24 products can leave int32: (2^bits - 1) * the largest row of |w| fits, one more bit would not
    worst = int(weights.long().abs().sum(1).max())
    assert ((1 << bits) - 1) * worst <= 2**31 - 1
    assert bits == 15 or ((1 << (bits + 1)) - 1) * worst > 2**31 - 1


def test_activation_bits_shrink_as_the_weights_grow():
    small = torch.full((2, 768), 2**8, dtype=torch.int16)  # 2^-6 weights, a DeiT fc2's fan-in
    large = torch.full((2, 768), 2**14, dtype=torch.int16)  # every weight 1.0
    assert activation_bits(small) == 13 and activation_bits(large) == 7
    assert activation_bits(torch.zeros(2, 5, dtype=torch.int16)) == 15
    with pytest.raises(ValueError, match="shifts in"):
        int16_weights(torch.tensor([[-15]], dtype=torch.int8), torch.tensor([[1]], dtype=torch.int8))
    with pytest.raises(ValueError, match="weight_bits <= 5"):
        Shift16Linear(4, 4, weight_bits=6)


def test_block_float_scales_each_row_by_a_power_of_two_and_rounds_half_to_even():
    x = torch.tensor([[1.0, -0.75, 0.0], [3.0, 0.5, 0.25], [0.0, 0.0, 0.0]])
    xq, e = block_float(x, 3)
    # row 0: max 1.0 = 0.5 * 2^1 -> e = 1 - 3 = -2, so x * 4 = [4, -3, 0] (|xq| < 2^3)
    assert e.tolist()[:2] == [-2, -1] and xq[0].tolist() == [4.0, -3.0, 0.0]
    assert xq[1].tolist() == [6.0, 1.0, 0.0]  # 0.5 * 2 = 1, 0.25 * 2 = 0.5 -> 0 (half to even)
    assert xq[2].tolist() == [0.0, 0.0, 0.0]
    assert torch.equal(xq * torch.exp2(e.float())[:, None], torch.tensor([[1.0, -0.75, 0.0], [3.0, 0.5, 0.0],
                                                                            [0.0, 0.0, 0.0]]))


def test_float_path_computes_with_the_integer_paths_activations():
    torch.manual_seed(0)
    layer = Shift16Linear.from_dense(nn.Linear(48, 20))
    x = torch.randn(3, 9, 48) * 3
    y_float, y_int = layer(x).double(), layer.forward_int(x).double()
    # the same products of the same numbers, summed in float32 instead of exactly: agreement to float rounding
    assert (y_float - y_int).abs().max().item() <= 1e-5 * y_int.abs().max().item()
    # and close to the 32-bit fixed-point shift layer of the same weights: the activations' rounding differs
    paper = ShiftLinear.from_dense(nn.Linear(48, 20))
    paper.load_state_dict(layer.state_dict())
    relative = (layer(x) - paper(x)).norm() / paper(x).norm()
    assert 0 < relative.item() < 1e-3


def test_training_moves_the_latent_weight_through_the_quantized_activations():
    layer = Shift16Linear.from_dense(nn.Linear(16, 4))
    x = torch.randn(5, 16, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert torch.allclose(x.grad, layer.effective_weight().sum(0).expand(5, 16))  # straight through the rounding


@pytest.mark.parametrize("mcpu", ["znver4", "znver3", "x86-64"])
def test_the_kernel_is_bit_exact_on_every_cpu_feature_level(mcpu):
    # AVX-512 (VNNI on a Zen 4), AVX2 (Zen 3) and plain x86-64: each compiles here, and what this CPU can run, runs
    target = targets.cpu_target(mcpu=mcpu)
    spec = KernelSpec("shiftlinear", "i16", 37, 70, 29)
    source = compile_untuned(spec, target).mod.inspect_source("asm")
    if mcpu == "znver4":
        assert "vpdpwssd" in source  # the dot product fused with the accumulation
    if mcpu == "znver3":
        assert "vpmaddwd" in source and "zmm" not in source
    result = check(spec, target)
    assert result.status in ("exact", "compiled") and result.ok, result.detail


def test_packing_round_trips_at_awkward_shapes():
    weights = torch.randint(-(2**14), 2**14, (29, 37), dtype=torch.int16).numpy()
    packed = pack(weights)
    assert packed.shape == (2, 19, 16, 2)
    assert np.array_equal(unpack(packed, 29, 37), weights)
    assert not packed[1, :, 13:].any() and not packed[:, 18, :, 1].any()  # padding is zero


@torch.no_grad()
def test_layers_on_the_kernel_equal_the_torch_integer_path_bit_for_bit_eager_and_compiled(tmp_path):
    layer = Shift16Linear.from_dense(nn.Linear(40, 24))
    with torch.no_grad():
        layer.weight[0, :5] = 0.0
    kernels = KernelSet("cpu", trials=0, root=tmp_path)
    fast = to_kernels(nn.Sequential(layer), kernels)
    assert isinstance(fast[0], KernelShift16Linear)
    x = torch.randn(3, 11, 40) * 5
    assert torch.equal(fast(x), layer.forward_int(x))
    assert torch.equal(compiled(fast)(x), layer.forward_int(x))
    assert [s.key for s in kernels.specs] == ["shiftlinear-i16-float32-33x40x24"]
    weights, bits = layer.quantized16()
    assert torch.equal(layer.forward_int(x).reshape(-1, 24), shift16_matmul(x.reshape(-1, 40), weights, bits,
                                                                             layer.bias))


@torch.no_grad()
def test_a_model_with_shift16_everywhere_runs_on_the_fused_kernel(tmp_path):
    spec = ModelSpec(TINY_MODEL["name"], TINY_MODEL["kwargs"])
    config = ArchConfig(spec, (BlockConfig("msa", "shift16", "shift16", "shift16"),
                               BlockConfig("msa", "dense", "dense", "moe", MoEConfig(1, ("dense", "shift16")))))
    model = build_model(config).eval()
    assert sum(isinstance(m, Shift16Linear) for m in model.modules()) == 6
    kernels = KernelSet("cpu", trials=0, root=tmp_path)
    fast = to_kernels(model, kernels)
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fast(images), model(images), rtol=1e-4, atol=1e-4)
    assert {s.kernel for s in kernels.specs} == {"shiftlinear"}


def test_the_kernel_is_still_tunable_and_a_tuned_one_stays_bit_exact(tmp_path):
    spec = KernelSpec("shiftlinear", "i16", 37, 70, 29)
    result = check(spec, "cpu", trials=2, root=tmp_path)
    assert result.status == "exact", result.detail
    assert get_kernel(spec, "cpu", trials=2, root=tmp_path).tuned


def test_every_register_tile_tuning_can_draw_is_bit_exact():
    """The tune space's register tiles (rows × 16-output vectors), the 24-accumulator ones included, at a shape
    where 3 and 6 vectors divide the outputs (96: six vectors) and K is odd (a padded column)."""
    import tvm
    from tvm import s_tir

    m, k, n = 37, 71, 96
    target = targets.resolve("cpu")
    inputs = shiftlinear.random_inputs(m, k, n, "float32", np.random.default_rng(3))
    expected = shiftlinear.reference(m, k, n, *inputs)
    args = [_aligned(torch.from_numpy(a)) for a in inputs]
    for rows in (1, 2, 4):
        for vecs in (3, 6):
            sch = s_tir.Schedule(_irmodule(KernelSpec("shiftlinear", "i16", m, k, n)))
            shiftlinear._schedule(sch, k, rows, vecs, target)
            out = _aligned(torch.empty(m, n))
            tvm.compile(sch.mod, target=target)(*args, out)
            assert np.array_equal(out.numpy(), expected), (rows, vecs)
