"""int8: the dense layer quantized to int8 (weights per channel, activations per token), the CPU baseline that shift
layers compete with. Training computes with the quantized values; the runtime runs the integer contract on the CPU's
int8 dot products, eager and compiled; a model with int8 choices trains, exports and loads."""

import torch
from torch import nn

from kernels.runtime import KernelSet, compiled, to_kernels
from latency_model.energy import estimate
from nas.training.checkpoints import load_model, save_weights
from search_spaces import ArchConfig, BlockConfig, ModelSpec, MoEConfig, build_model
from search_spaces.ops.int8 import Int8Inference, Int8Linear, int8_matmul, int8_weights, quantize_rows

from tiny import TINY_MODEL


def test_rows_quantize_symmetrically_to_127_steps_with_half_to_even_rounding():
    x = torch.tensor([[127.0, -63.5, 0.5, 1.5], [0.0, 0.0, 0.0, 0.0], [-2.54, 1.0, 0.0, 0.01]])
    codes, scale = quantize_rows(x)
    assert codes[0].tolist() == [127.0, -64.0, 0.0, 2.0]  # the row's max is 127 steps of 1.0; halves to even
    assert codes[1].tolist() == [0.0] * 4 and scale[1].item() > 0  # a zero row: codes 0, a finite scale
    assert codes[2, 0].item() == -127.0 and codes.abs().max() <= 127
    torch.testing.assert_close(codes * scale, x, atol=scale.max().item() / 2, rtol=0)


def test_the_integer_contract_is_the_exact_sum_of_the_codes_rescaled():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(9, 70) * 3, torch.randn(13, 70) * 0.1, torch.randn(13)
    codes, scale = int8_weights(weight)
    assert codes.dtype == torch.int8 and scale.shape == (13,)
    xq, x_scale = quantize_rows(x)
    exact = (xq.double() @ codes.double().T).float()  # integers below 2^24: exact in float32 too
    assert torch.equal(int8_matmul(x, codes, scale, bias), exact * scale * x_scale + bias)
    # a token's result does not depend on the rest of its batch
    assert torch.equal(int8_matmul(x[:1], codes, scale, bias), int8_matmul(x, codes, scale, bias)[:1])


def test_training_computes_what_the_integer_path_runs_and_moves_the_weight():
    torch.manual_seed(0)
    dense = nn.Linear(48, 20)
    layer = Int8Linear.from_dense(dense)
    x = torch.randn(4, 7, 48)
    torch.testing.assert_close(layer(x), layer.forward_int(x), rtol=1e-5, atol=1e-5)
    assert (layer.forward_int(x) - dense(x)).abs().max() > 1e-4  # it is quantized: not the dense layer
    torch.testing.assert_close(layer.forward_int(x), dense(x), rtol=0.05, atol=0.05)
    before = layer.weight.detach().clone()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).square().mean().backward()
    assert layer.weight.grad.abs().sum() > 0  # straight through the quantization
    optimizer.step()
    assert not torch.equal(layer.weight, before)


@torch.no_grad()
def test_the_runtime_runs_the_integer_contract_bit_for_bit_eager_and_compiled(tmp_path):
    layer = Int8Linear.from_dense(nn.Linear(40, 24))
    fast = to_kernels(nn.Sequential(layer), KernelSet("cpu", trials=0, root=tmp_path))
    assert isinstance(fast[0], Int8Inference)
    x = torch.randn(3, 11, 40) * 5
    assert torch.equal(fast(x), layer.forward_int(x))
    torch.testing.assert_close(compiled(fast)(x), layer.forward_int(x), rtol=1e-6, atol=1e-6)


def test_a_model_with_int8_choices_trains_exports_and_loads(tmp_path):
    spec = ModelSpec(TINY_MODEL["name"], TINY_MODEL["kwargs"])
    config = ArchConfig(spec, (BlockConfig("msa", "int8", "int8", "int8"),
                               BlockConfig("msa", "dense", "int8", "moe", MoEConfig(1, ("dense", "int8")))))
    torch.manual_seed(0)
    model = build_model(config)
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 7
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    config.save(tmp_path / "arch.yaml")
    save_weights(model, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path / "arch.yaml", tmp_path / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
        fast = to_kernels(loaded, KernelSet("cpu", trials=0, root=tmp_path / "kernels"))
        assert sum(isinstance(m, Int8Inference) for m in fast.modules()) == 7
        torch.testing.assert_close(fast(images), model(images), rtol=1e-4, atol=1e-4)


def test_int8_is_priced_in_energy_below_dense_and_above_nothing():
    spec = ModelSpec(TINY_MODEL["name"], TINY_MODEL["kwargs"])
    dense = estimate(ArchConfig(spec, (BlockConfig("msa", "dense", "dense", "dense"),) * 2))
    int8 = estimate(ArchConfig(spec, (BlockConfig("msa", "int8", "int8", "int8"),) * 2))
    assert 0 < int8.total_uj < dense.total_uj
