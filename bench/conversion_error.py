"""Relative output error of each primitive right after conversion from a dense model (no fine-tuning): the tiny DeiT of
the quick-start and the shrunk PVTv2-b0 of the PVT quick-start.

For each primitive, every block of the study's model is converted to it; on 256 real digits images we compare
(a) each converted module's output with the dense module's output on the same input, averaged over blocks, and
(b) the model's logits. Relative error = ||y_converted - y_dense|| / ||y_dense||.

The model is timm's random initialization (no weights are downloaded); after `nas pretrain` lands, pass
``--checkpoint`` to measure on a trained teacher.

    python bench/conversion_error.py [--study studies/quickstart.yaml --study studies/pvt_quickstart.yaml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

from nas.training.data import digits  # noqa: E402
from nas.study import Study  # noqa: E402
from search_spaces import ArchConfig, BlockConfig, MoEConfig, build_model, create_model  # noqa: E402
from search_spaces.families import ModelDims, family_of  # noqa: E402
from search_spaces.ops import Int8Linear, Shift16Linear, ShiftLinear  # noqa: E402

PRIMITIVES = {
    "shift qkv": (BlockConfig(qkv="shift"), "attn"),
    "shift proj": (BlockConfig(proj="shift"), "attn"),
    "shift mlp": (BlockConfig(mlp="shift"), "mlp"),
    "shift16 qkv": (BlockConfig(qkv="shift16"), "attn"),
    "shift16 proj": (BlockConfig(proj="shift16"), "attn"),
    "shift16 mlp": (BlockConfig(mlp="shift16"), "mlp"),
    "int8 qkv": (BlockConfig(qkv="int8"), "attn"),
    "int8 proj": (BlockConfig(proj="int8"), "attn"),
    "int8 mlp": (BlockConfig(mlp="int8"), "mlp"),
    "linear attention": (BlockConfig(attention="linear"), "attn"),
    "additive attention": (BlockConfig(attention="additive"), "attn"),
    "moe mlp (dense+shift, top-1)": (BlockConfig(mlp="moe", moe=MoEConfig()), "mlp"),
    "moe mlp (dense+shift16, top-1)": (BlockConfig(mlp="moe", moe=MoEConfig(1, ("dense", "shift16"))), "mlp"),
}
# The activation arithmetic alone: each linear layer's integer path against the float layer with the same
# power-of-two (int8: int8) weights, per width (the weights' own rounding, which dominates the rows above, left out).
WIDTHS = {"shift (int32 fixed point, 16 fraction bits)": ShiftLinear, "shift16 (int16 block floating point)":
          Shift16Linear, "int8 (per token, float scales)": Int8Linear}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def errors_of(study_file: str, images: int) -> list[dict]:
    torch.manual_seed(0)
    space = Study.load(study_file).space
    teacher = create_model(space.model).eval()
    family = family_of(teacher)
    x = digits(ModelDims.of(space.model).img, split="test").tensors[0][:images]

    inputs: dict[tuple[int, str], tuple] = {}
    blocks = family.blocks(teacher)
    hooks = [
        getattr(block, part).register_forward_pre_hook(lambda m, a, key=(i, part): inputs.__setitem__(key, a))
        for i, block in enumerate(blocks)
        for part in ("attn", "mlp")
    ]
    logits = teacher(x)
    for h in hooks:
        h.remove()

    rows = []
    layers = [(getattr(block, part), i, part) for i, block in enumerate(blocks) for part in ("attn", "mlp")]
    for width, kind in WIDTHS.items():
        errors = []
        for module, i, part in layers:
            for linear in (m for m in module.modules() if isinstance(m, torch.nn.Linear)):
                captured = []
                handle = linear.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
                module(*inputs[(i, part)])
                handle.remove()
                layer = kind.from_dense(linear)
                reference = torch.nn.functional.linear(captured[0], layer.effective_weight(), layer.bias)
                errors.append(rel_err(layer.forward_int(captured[0]), reference))
        rows.append({"model": f"{family.key}: {space.model.name}", "primitive": f"activations: {width}",
                     "module_rel_err": sum(errors) / len(errors), "module_rel_err_max": max(errors),
                     "logits_rel_err": None})
        print(f"{rows[-1]['model']:20s} {rows[-1]['primitive']:30s} layer {rows[-1]['module_rel_err']:.3g} "
              f"(max {rows[-1]['module_rel_err_max']:.3g})")
    for name, (block, part) in PRIMITIVES.items():
        student = build_model(ArchConfig(space.model, (block,) * space.depth), teacher).eval()
        module_errors = [
            rel_err(getattr(sb, part)(*inputs[(i, part)]), getattr(tb, part)(*inputs[(i, part)]))
            for i, (sb, tb) in enumerate(zip(family.blocks(student), blocks))
        ]
        rows.append(
            {
                "model": f"{family.key}: {space.model.name}",
                "primitive": name,
                "module_rel_err": sum(module_errors) / len(module_errors),
                "module_rel_err_max": max(module_errors),
                "logits_rel_err": rel_err(student(x), logits),
            }
        )
        print(f"{rows[-1]['model']:20s} {name:30s} module {rows[-1]['module_rel_err']:.4f} "
              f"(max {rows[-1]['module_rel_err_max']:.4f})  logits {rows[-1]['logits_rel_err']:.4f}")
    return rows


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", action="append", help="a study file (repeat; default: both quick-starts)")
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    studies = args.study or ["studies/quickstart.yaml", "studies/pvt_quickstart.yaml"]
    rows, models = [], []
    for study_file in studies:
        rows += errors_of(study_file, args.images)
        spec = Study.load(study_file).model
        models.append(f"{spec.name} {dict(spec.kwargs)}")
    write(
        "conversion-error",
        rows,
        notes=f"Models (timm random init): {'; '.join(models)}. {args.images} digits held-out (test) images. "
        "Every block converted to the primitive; module error averaged over blocks (a PVTv2's over its stages). "
        "'activations:' rows: every linear layer's integer inference path against the float layer with the same "
        "power-of-two (int8: int8) weights (the activation arithmetic alone), averaged (max) over layers.",
    )


if __name__ == "__main__":
    main()
