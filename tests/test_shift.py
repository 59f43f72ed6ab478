
import pytest
import torch
from torch import nn

from search_spaces.ops import ShiftLinear, shift_matmul_int, shift_range, to_fixed_point


def test_shift_range_follows_deepshift_convention():
    assert shift_range(5) == (-14, 0)
    assert shift_range(3) == (-2, 0)
    with pytest.raises(ValueError, match="weight_bits"):
        shift_range(1)


def test_equals_linear_when_weights_are_signed_powers_of_two():
    dense = nn.Linear(12, 7)
    exps = torch.randint(-10, 1, dense.weight.shape)
    signs = torch.where(torch.rand(dense.weight.shape) < 0.5, -1.0, 1.0)
    with torch.no_grad():
        dense.weight.copy_(signs * torch.exp2(exps.float()))
    layer = ShiftLinear.from_dense(dense)
    x = torch.randn(5, 12)
    assert torch.equal(layer(x), dense(x))
    assert torch.equal(layer.effective_weight(), dense.weight)


def test_from_dense_picks_nearest_power_of_two_in_log_space():
    dense = nn.Linear(6, 1, bias=False)
    with torch.no_grad():
        # log2: 0.7 -> -0.51 (nearest -1), 0.72 -> -0.47 (nearest 0), -3.0 -> 1.58 (clamped to 0), 1e-9 -> clamp -14
        dense.weight.copy_(torch.tensor([[0.7, 0.72, -3.0, 1e-9, -0.2, 0.09]]))
    layer = ShiftLinear.from_dense(dense)
    expected = torch.tensor([[0.5, 1.0, -1.0, 2.0**-14, -0.25, 0.125]])
    assert torch.equal(layer.effective_weight(), expected)
    # and in general: no other representable power of two is closer in log space
    w = torch.randn(64, 32) * 0.1
    dense = nn.Linear(32, 64)
    with torch.no_grad():
        dense.weight.copy_(w)
    q = ShiftLinear.from_dense(dense).effective_weight()
    err = (torch.log2(q.abs()) - torch.log2(w.abs())).abs()
    inside = (w.abs() > 2.0**-14) & (w.abs() < 1)
    assert torch.all(err[inside] <= 0.5 + 1e-6)
    assert torch.equal(torch.sign(q), torch.sign(w))


def test_float_path_equals_integer_path_within_fixed_point_step():
    layer = ShiftLinear.from_dense(nn.Linear(48, 20))
    x = torch.randn(3, 9, 48) * 3
    y_float = layer(x).double()
    y_int = layer.forward_int(x).double()
    step = 2.0**-layer.frac_bits
    # each of the K terms is off by at most half a step (activation rounding) plus one step (shift floors)
    bound = layer.in_features * 1.5 * step
    assert (y_float - y_int).abs().max().item() <= bound
    assert (y_float - y_int).abs().max().item() > 0  # the integer path really is a different computation


def test_integer_product_matches_definition_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    x_int = torch.randint(-(2**20), 2**20, (7, 13), generator=g, dtype=torch.int32)
    shift = torch.randint(-14, 1, (5, 13), generator=g).to(torch.int8)
    sign = torch.randint(-1, 2, (5, 13), generator=g).to(torch.int8)
    got = shift_matmul_int(x_int, shift, sign, chunk_bytes=64)  # tiny chunks exercise the column loop
    want = torch.zeros(7, 5, dtype=torch.int64)
    for i in range(7):
        for j in range(5):
            want[i, j] = sum(
                int(sign[j, k]) * (int(x_int[i, k]) >> -int(shift[j, k])) for k in range(13)
            )
    assert torch.equal(got.long(), want)


def test_integer_product_rejects_wrong_dtypes_and_shapes():
    with pytest.raises(TypeError, match="int32"):
        shift_matmul_int(torch.zeros(2, 3), torch.zeros(4, 3, dtype=torch.int8), torch.zeros(4, 3, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"x \(2, 3\)"):
        shift_matmul_int(
            torch.zeros(2, 3, dtype=torch.int32), torch.zeros(4, 5, dtype=torch.int8), torch.zeros(4, 5, dtype=torch.int8)
        )


def test_fixed_point_rounds_and_saturates():
    x = torch.tensor([1.5, -0.25, 1e9, -1e9])
    got = to_fixed_point(x, frac_bits=16)
    assert got.tolist() == [98304, -16384, 2**31 - 1, -(2**31)]


def test_gradient_reaches_the_latent_weight_straight_through():
    layer = ShiftLinear.from_dense(nn.Linear(8, 4))
    w = layer.effective_weight()
    (w * torch.arange(32.0).reshape(4, 8)).sum().backward()
    assert torch.equal(layer.weight.grad, torch.arange(32.0).reshape(4, 8))  # identity through the rounding
    x = torch.randn(16, 8)
    layer.zero_grad()
    layer(x).pow(2).sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0


def test_a_latent_step_across_a_rounding_boundary_changes_the_code_and_zero_has_sign_zero():
    layer = ShiftLinear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0**-3.51, -(2.0**-3.49), 0.0]]))
    assert layer.quantized()[0].tolist() == [[-4, -3, -14]] and layer.quantized()[1].tolist() == [[1, -1, 0]]
    assert layer.effective_weight().tolist() == [[0.0625, -0.125, 0.0]]  # sign(0) = 0: a zero weight
    with torch.no_grad():
        layer.weight += torch.tensor([[2e-3, 1e-3, -1e-3]])  # steps of about one lr: every code changes
    shift, sign = layer.quantized()
    assert shift.tolist() == [[-3, -4, -10]] and sign.tolist() == [[1, -1, -1]]


def test_checkpoints_of_the_earlier_shift_and_sign_parameters_still_load(tmp_path):
    from nas.training.checkpoints import load_weights, save_weights

    layer = ShiftLinear.from_dense(nn.Linear(6, 3))
    shift, sign = layer.quantized()
    legacy = {"shift": shift.float(), "sign": sign.float(), "bias": layer.bias.detach().clone()}
    fresh = ShiftLinear(6, 3)
    fresh.load_state_dict(dict(legacy))
    assert torch.equal(fresh.effective_weight(), layer.effective_weight())
    model = nn.Sequential(ShiftLinear(6, 3))
    from safetensors.torch import save_file

    save_file({f"0.{k}": v for k, v in legacy.items()}, str(tmp_path / "old.safetensors"))
    load_weights(model, tmp_path / "old.safetensors")
    assert torch.equal(model[0].quantized()[0], shift) and torch.equal(model[0].quantized()[1], sign)
    save_weights(model, tmp_path / "new.safetensors")  # and a new file holds the latent weight
    assert "0.weight" in __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(tmp_path / "new.safetensors"))


def test_training_moves_codes_toward_a_target():
    target = nn.Linear(8, 4)
    layer = ShiftLinear(8, 4)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3)  # the product's learning rate, not a large one
    x = torch.randn(256, 8)
    first = None
    codes = layer.quantized()[0].clone()
    for _ in range(150):
        loss = (layer(x) - target(x).detach()).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first
    assert (layer.quantized()[0] != codes).float().mean() > 0.1
