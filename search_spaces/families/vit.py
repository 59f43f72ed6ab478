"""The ``vit`` family: timm ``VisionTransformer`` and its subclasses (ViT, DeiT, DeiT-distilled). Its blocks are
``model.blocks[i]``, each with a timm ``Attention`` (fused ``qkv``) and a timm ``Mlp``, all at one size."""

from __future__ import annotations

from timm.layers import Attention, Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .. import accelerator_layers as al
from .. import counts as oc
from ..accelerator_layers import Layer
from ..config import ModelSpec
from .base import BlockDims, Family, ModelDims, UnsupportedModelError, register


def _first(value) -> int:
    return int(value[0] if isinstance(value, tuple | list) else value)


class ViT(Family):
    key = "vit"
    name = "vit (timm VisionTransformer: ViT, DeiT)"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    def check_block(self, block: nn.Module, where: str) -> None:
        for name, kind in (("attn", Attention), ("mlp", Mlp)):
            part = getattr(block, name, None)
            if not isinstance(part, kind):
                raise UnsupportedModelError(where, f"{'attention' if name == 'attn' else name} is "
                                                   f"{type(part).__name__}, expected a dense timm {kind.__name__} "
                                                   "(was the model already reparameterized?)")

    def dims(self, model: nn.Module) -> ModelDims:
        img, patch = _first(model.patch_embed.img_size), _first(model.patch_embed.patch_size)
        tokens = (img // patch) ** 2 + int(model.num_prefix_tokens)
        blocks = tuple(BlockDims(tokens=tokens, channels=int(model.embed_dim), heads=int(block.attn.num_heads),
                                 hidden=int(block.mlp.fc1.out_features)) for block in model.blocks)
        frame = (("img", img), ("patch", patch), ("C", int(model.embed_dim)), ("classes", int(model.num_classes)))
        return ModelDims(img=img, classes=int(model.num_classes), frame=frame, blocks=blocks)

    def timing_spec(self, spec: ModelSpec) -> ModelSpec:
        return ModelSpec(spec.name, {**spec.kwargs, "depth": 1})

    def frame_counts(self, dims: ModelDims, batch: int) -> oc.OpCounts:
        """The patch embedding (a ``patch x patch`` conv, stride ``patch``), the prefix tokens and position embedding
        added, the final norm over every token, and the head on one pooled token per image."""
        frame = dict(dims.frame)
        img, patch, c, classes = frame["img"], frame["patch"], frame["C"], frame["classes"]
        patches, tokens = (img // patch) ** 2, dims.tokens
        return (oc.conv(batch * patches, 3, c, patch * patch, inputs=batch * img * img)
                + oc.weights_read((tokens - patches + tokens) * c)  # prefix tokens and position embedding
                + oc.elementwise(batch * tokens * c, inputs=2, add=1) + oc.layer_norm(batch * tokens, c)
                + oc.linear(batch, c, classes))

    def frame_layers(self, dims: ModelDims, batch: int) -> list[Layer]:
        """The patch embedding (a conv) and the head on one pooled token per image."""
        frame = dict(dims.frame)
        img, patch, c, classes = frame["img"], frame["patch"], frame["C"], frame["classes"]
        side = img // patch
        return [al.conv(batch, 3, c, (patch, patch), patch, (img, img), (side, side)), al.fc(batch, c, classes)]

    def frame(self, model: nn.Module) -> nn.Module:
        model.blocks = nn.Sequential()
        return model


register(ViT())
