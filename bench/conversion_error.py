"""Relative output error of each primitive right after conversion from a dense tiny DeiT (no fine-tuning).

For each primitive, every block of the quick-start model is converted to it; on 256 real digits images we compare
(a) each converted module's output with the dense module's output on the same input, averaged over blocks, and
(b) the model's logits. Relative error = ||y_converted - y_dense|| / ||y_dense||.

The model is timm's random initialization (no weights are downloaded); after `nas pretrain` lands, pass
``--checkpoint`` to measure on a trained teacher.

    python bench/conversion_error.py [--study studies/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

from nas.data import digits  # noqa: E402
from nas.study import Study  # noqa: E402
from search_spaces import ArchConfig, BlockConfig, MoEConfig, build_model, create_model  # noqa: E402

PRIMITIVES = {
    "shift qkv": (BlockConfig(qkv="shift"), "attn"),
    "shift proj": (BlockConfig(proj="shift"), "attn"),
    "shift mlp": (BlockConfig(mlp="shift"), "mlp"),
    "linear attention": (BlockConfig(attention="linear"), "attn"),
    "additive attention": (BlockConfig(attention="additive"), "attn"),
    "moe mlp (dense+shift, top-1)": (BlockConfig(mlp="moe", moe=MoEConfig()), "mlp"),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="studies/quickstart.yaml")
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()

    torch.manual_seed(0)
    space = Study.load(args.study).space
    teacher = create_model(space.model).eval()
    x = digits(space.model.kwargs.get("img_size", 224), split="test").tensors[0][: args.images]

    inputs: dict[tuple[int, str], torch.Tensor] = {}
    hooks = [
        getattr(block, part).register_forward_pre_hook(lambda m, a, key=(i, part): inputs.__setitem__(key, a[0]))
        for i, block in enumerate(teacher.blocks)
        for part in ("attn", "mlp")
    ]
    logits = teacher(x)
    for h in hooks:
        h.remove()

    rows = []
    for name, (block, part) in PRIMITIVES.items():
        student = build_model(ArchConfig(space.model, (block,) * space.depth), teacher).eval()
        module_errors = [
            rel_err(getattr(sb, part)(inputs[(i, part)]), getattr(tb, part)(inputs[(i, part)]))
            for i, (sb, tb) in enumerate(zip(student.blocks, teacher.blocks))
        ]
        rows.append(
            {
                "primitive": name,
                "module_rel_err": sum(module_errors) / len(module_errors),
                "module_rel_err_max": max(module_errors),
                "logits_rel_err": rel_err(student(x), logits),
            }
        )
        print(f"{name:30s} module {rows[-1]['module_rel_err']:.4f} (max {rows[-1]['module_rel_err_max']:.4f})  "
              f"logits {rows[-1]['logits_rel_err']:.4f}")
    write(
        "conversion-error",
        rows,
        notes=f"Model: {space.model.name} {dict(space.model.kwargs)} (timm random init), {len(x)} digits held-out (test) images. "
        "Every block converted to the primitive; module error averaged over blocks.",
    )


if __name__ == "__main__":
    main()
