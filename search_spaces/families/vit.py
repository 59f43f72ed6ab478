"""The ``vit`` family: timm ``VisionTransformer`` and its subclasses (ViT, DeiT, DeiT-distilled). Its blocks are
``model.blocks[i]``, each with a timm ``Attention`` (fused ``qkv``) and a timm ``Mlp``, all at one size."""

from __future__ import annotations

from timm.layers import Attention, Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..config import ModelSpec
from . import Family, ModelDims, UnsupportedModelError, register


def _first(value) -> int:
    return int(value[0] if isinstance(value, tuple | list) else value)


class ViT(Family):
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
        block = model.blocks[0]
        return ModelDims(img=_first(model.patch_embed.img_size), patch=_first(model.patch_embed.patch_size),
                         embed_dim=int(model.embed_dim), heads=int(block.attn.num_heads),
                         mlp_hidden=int(block.mlp.fc1.out_features), classes=int(model.num_classes),
                         prefix_tokens=int(model.num_prefix_tokens))

    def with_depth(self, spec: ModelSpec, depth: int) -> ModelSpec:
        return ModelSpec(spec.name, {**spec.kwargs, "depth": depth})

    def frame(self, model: nn.Module) -> nn.Module:
        model.blocks = nn.Sequential()
        return model


register(ViT())
