import itertools

import pytest
import timm
import torch

from search_spaces import (
    ArchConfig,
    BlockConfig,
    ConfigError,
    ModelSpec,
    MoEConfig,
    UnsupportedModelError,
    build_model,
    create_model,
    reparam,
)
from search_spaces.ops import AdditiveAttention, LinearAttention, MoEMlp, ShiftLinear, moe_aux_loss
from search_spaces.space import block_options
from tiny import vit


def test_dense_config_leaves_outputs_bit_identical(tiny_spec):
    teacher = create_model(tiny_spec).eval()
    student = build_model(ArchConfig.dense(tiny_spec, 2), teacher).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(student(x), teacher(x))
    assert student is not teacher


def test_untouched_blocks_stay_bit_identical(tiny_spec):
    teacher = create_model(tiny_spec).eval()
    config = ArchConfig(tiny_spec, (BlockConfig(), BlockConfig("additive", "shift", "shift", "moe", MoEConfig())))
    student = build_model(config, teacher).eval()
    x = torch.randn(2, 17, 32)
    assert torch.equal(student.blocks[0](x), teacher.blocks[0](x))
    assert student.blocks[0].attn.qkv.weight is not teacher.blocks[0].attn.qkv.weight  # a copy, not shared
    # the teacher is never modified
    assert type(teacher.blocks[1].attn).__name__ == "Attention" and isinstance(teacher.blocks[1].attn.qkv, torch.nn.Linear)


def test_modules_are_swapped_as_configured(tiny_spec):
    config = ArchConfig(
        tiny_spec,
        (BlockConfig("linear", "shift", "dense", "shift"), BlockConfig("additive", "dense", "shift", "moe", MoEConfig(2))),
    )
    model = build_model(config)
    b0, b1 = model.blocks
    assert isinstance(b0.attn, LinearAttention) and isinstance(b0.attn.qkv, ShiftLinear)
    assert isinstance(b0.attn.proj, torch.nn.Linear) and isinstance(b0.mlp.fc1, ShiftLinear)
    assert isinstance(b1.attn, AdditiveAttention) and isinstance(b1.attn.proj, ShiftLinear)
    assert isinstance(b1.mlp, MoEMlp) and b1.mlp.top_k == 2


def test_shift_conversion_uses_the_dense_weights(tiny_spec):
    teacher = create_model(tiny_spec)
    config = ArchConfig(tiny_spec, (BlockConfig(qkv="shift"), BlockConfig()))
    student = build_model(config, teacher)
    expected = ShiftLinear.from_dense(teacher.blocks[0].attn.qkv).effective_weight()
    assert torch.equal(student.blocks[0].attn.qkv.effective_weight(), expected)


def test_every_op_combination_runs_forward_and_backward():
    combos = list(itertools.product(*block_options().values()))
    assert len(combos) == 3 * 4 * 4 * 5  # attention x qkv x proj x mlp
    # one block per combination, in one model
    spec = vit(patch_size=8, depth=len(combos), embed_dim=16, num_classes=3)
    blocks = tuple(
        BlockConfig(a, q, p, m, MoEConfig() if m == "moe" else None) for a, q, p, m in combos
    )
    model = build_model(ArchConfig(spec, blocks))
    y = model(torch.randn(2, 3, 16, 16))
    assert y.shape == (2, 3) and torch.isfinite(y).all()
    (y.sum() + moe_aux_loss(model)).backward()
    for name, p in model.named_parameters():
        if ".noise." in name:
            continue  # noise weights learn only from the balance loss's load term
        assert p.grad is not None, name
    # every converted shift layer got gradient on both codes
    shifts = [m for m in model.modules() if isinstance(m, ShiftLinear)]
    assert shifts and all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in shifts)


def test_output_shape_unchanged_for_a_sampled_architecture(tiny_spec):
    from search_spaces import SearchSpace
    import numpy as np

    space = SearchSpace.from_dict({}, tiny_spec)
    rng = np.random.default_rng(0)
    x = torch.randn(4, 3, 32, 32)
    for _ in range(5):
        assert build_model(space.sample(rng))(x).shape == (4, 10)


def test_wrong_block_count_and_reapplying_are_refused(tiny_spec):
    model = create_model(tiny_spec)
    other = ModelSpec(tiny_spec.name, {**tiny_spec.kwargs, "depth": 3})
    with pytest.raises(ConfigError, match="the config has 3 blocks but the model has 2"):
        reparam.apply(model, ArchConfig.dense(other, 3))
    config = ArchConfig(tiny_spec, (BlockConfig(), BlockConfig("linear", "dense", "dense", "dense")))
    reparam.apply(model, config)
    with pytest.raises(UnsupportedModelError, match=r"blocks\[1\].*already reparameterized"):
        reparam.apply(model, config)


def test_unsupported_family_gets_a_clear_error():
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=3)
    spec = ModelSpec("resnet18", {"num_classes": 3})
    with pytest.raises(UnsupportedModelError, match=r"ResNet is not supported yet \(supported: vit .*; pvt_v2 "):
        reparam.apply(resnet, ArchConfig.dense(spec, 8))


def test_unknown_model_and_bad_kwargs(tiny_spec):
    with pytest.raises(ConfigError, match="unknown timm model 'deit_tiniest'"):
        create_model(ModelSpec("deit_tiniest"))
    with pytest.raises(ConfigError, match="model.kwargs"):
        create_model(ModelSpec(tiny_spec.name, {"embed_dim": 30, "num_heads": 4, "img_size": 32}))
