"""The ``pvt_v2`` family: timm ``PyramidVisionTransformerV2`` (``pvt_v2_b0`` ... ``b5``, ``linear=True`` too).

Its blocks are ``model.stages[s].blocks[i]``, indexed in order over the stages; each stage has its own token grid,
width, heads, spatial-reduction ratio and MLP width. A block's attention (``Attention``: separate ``q`` and ``kv``,
keys and values projected from tokens reduced by ``sr`` + ``norm``, or pooled to 7x7 with ``linear=True``) and MLP
(``MlpWithDepthwiseConv``: ``fc1`` -> depthwise 3x3 conv over the grid -> act -> ``fc2``) are both called with the
grid size, ``(x, feat_size)``.

How the primitives map onto it:

- ``msa`` keeps the spatial-reduction attention; ``qkv: shift`` converts both ``q`` and ``kv``.
- ``linear`` and ``additive`` replace it outright, as the paper's ``LinAngularAttention`` on PVT does: one fused
  ``qkv`` built from ``q`` and ``kv`` over every token, no ``sr``/``norm`` (:class:`FusedProjections`).
- MLP ``shift`` converts ``fc1`` and ``fc2``, the depthwise conv stays; an MoE's experts keep the depthwise conv,
  run over the grid with the tokens routed elsewhere at zero (:class:`~search_spaces.ops.moe.GridExpert`).

timm's PVTv2 takes no ``img_size``; a study gives it as ``model.kwargs.img_size`` all the same, and it is passed to
timm as the model's input size (``pretrained_cfg_overlay``), which is what the data is loaded at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.models.pvt_v2 import Attention, MlpWithDepthwiseConv, PyramidVisionTransformerV2
from torch import nn

from .. import accelerator_layers as al
from .. import counts as oc
from ..accelerator_layers import Layer
from ..config import ModelSpec
from ..ops.moe import GridExpert, MoEMlp
from .base import BlockDims, Family, ModelDims, UnsupportedModelError, register

POOLED = 7  # linear=True: keys and values come from the grid average-pooled to 7x7 (timm's AdaptiveAvgPool2d(7))


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class ConcatenatedLinear(nn.Module):
    """Linear layers on the same input with their outputs concatenated: the fused ``qkv`` of a supernet, whose
    ``q`` and ``kv`` stay the layers (and weights) its spatial-reduction attention runs."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([layer(x) for layer in self.layers], dim=-1)


class FusedProjections(nn.Module):
    """A PVTv2 attention's projections as one fused ``qkv`` (the rows of ``q``, then of ``kv``: queries, keys,
    values, each head-major as timm's ViT lays them out), with its heads and output projection: what a token-mixing
    primitive is built from. The spatial reduction (``sr``, ``norm``, ``pool``) is dropped: keys and values are
    projected from every token."""

    def __init__(self, attn: Attention, shared: bool = False) -> None:
        """``shared``: ``qkv`` runs ``attn``'s own ``q`` and ``kv`` layers (a supernet's, whose weights the
        spatial-reduction attention shares) instead of a fused copy of their weights."""
        super().__init__()
        q, kv = attn.q, attn.kv
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        if shared:
            self.qkv = ConcatenatedLinear(q, kv)
        else:
            self.qkv = nn.Linear(q.in_features, q.out_features + kv.out_features, bias=q.bias is not None,
                                 device=q.weight.device, dtype=q.weight.dtype)
            with torch.no_grad():
                self.qkv.weight.copy_(torch.cat([q.weight, kv.weight]))
                if q.bias is not None:
                    self.qkv.bias.copy_(torch.cat([q.bias, kv.bias]))
        self.q_norm = self.k_norm = nn.Identity()
        self.proj, self.proj_drop = attn.proj, attn.proj_drop


class PvtV2(Family):
    key = "pvt_v2"
    name = "pvt_v2 (timm PyramidVisionTransformerV2: pvt_v2_b0..b5, linear=True too)"
    timm_modules = ("pvt_v2",)

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, PyramidVisionTransformerV2)

    def create_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        img = kwargs.pop("img_size", None)
        if img is not None:
            overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
            overlay["input_size"] = (kwargs.get("in_chans", 3), *((img, img) if isinstance(img, int) else img))
            kwargs["pretrained_cfg_overlay"] = overlay
        return kwargs

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [block for stage in model.stages for block in stage.blocks]

    def check_block(self, block: nn.Module, where: str) -> None:
        for name, kind in (("attn", Attention), ("mlp", MlpWithDepthwiseConv)):
            part = getattr(block, name, None)
            if type(part) is not kind:
                raise UnsupportedModelError(where, f"{'attention' if name == 'attn' else name} is "
                                                   f"{type(part).__name__}, expected a dense timm pvt_v2 "
                                                   f"{kind.__name__} (was the model already reparameterized?)")

    def dims(self, model: nn.Module) -> ModelDims:
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        img = int(size[-1])
        if int(size[-2]) != img:
            raise UnsupportedModelError("model.kwargs.img_size", f"square images only, got {tuple(size[-2:])}")
        side = _conv_out(img, 7, 4, 3)  # the patch embedding: 7x7, stride 4
        blocks = []
        for s, stage in enumerate(model.stages):
            if s > 0:
                side = _conv_out(side, 3, 2, 1)  # each later stage starts with a 3x3 stride-2 downsampling
            tokens = side * side
            for block in stage.blocks:
                attn = block.attn
                if attn.pool is not None:
                    reduction, kv_tokens, extra = 1, POOLED * POOLED, (("P", POOLED), ("R", 1))
                elif attn.sr is not None:
                    reduction = int(attn.sr.kernel_size[0])
                    kv_tokens = _conv_out(side, reduction, reduction, 0) ** 2
                    extra = (("R", reduction),)
                else:
                    reduction, kv_tokens, extra = 1, tokens, (("R", 1),)
                blocks.append(BlockDims(tokens=tokens, channels=int(attn.dim), heads=int(attn.num_heads),
                                        hidden=int(block.mlp.fc1.out_features), stage=s, grid=(side, side),
                                        kv_tokens=kv_tokens, attention_dims=extra))
        widths = [int(stage.blocks[0].attn.dim) if len(stage.blocks) else 0 for stage in model.stages]
        frame = (("C0", widths[0]), ("C", int(model.num_features)), ("S", len(widths)), ("img", img),
                 ("classes", int(model.num_classes)))
        return ModelDims(img=img, classes=int(model.num_classes), frame=frame, blocks=tuple(blocks))

    def timing_spec(self, spec: ModelSpec) -> ModelSpec:
        depths = spec.kwargs.get("depths")
        stages = len(depths) if depths is not None else ModelDims.of(spec).stages
        return ModelSpec(spec.name, {**spec.kwargs, "depths": (1,) * stages})

    def timing_index(self, dims: ModelDims, block: int) -> int:
        return dims.blocks[block].stage

    def frame_counts(self, dims: ModelDims, batch: int) -> oc.OpCounts:
        """The 7x7 stride-4 patch embedding and each later stage's 3x3 stride-2 downsampling (a conv and a norm
        each), each stage's final norm, the average pool and the head."""
        stages = {b.stage: b for b in dims.blocks}  # a stage's tokens and width (every block of it has the same)
        out, inputs, width = oc.NONE, dims.img * dims.img, 3
        for s in sorted(stages):
            own = stages[s]
            window = 49 if s == 0 else 9
            out = (out + oc.conv(batch * own.tokens, width, own.channels, window, inputs=batch * inputs)
                   + oc.layer_norm(batch * own.tokens, own.channels) * 2)  # the embedding's norm, the stage's norm
            inputs, width = own.tokens, own.channels
        return out + oc.elementwise(batch * inputs * width, add=1) + oc.linear(batch, width, dims.classes)

    def attention_layout_counts(self, dims: BlockDims, batch: int) -> oc.OpCounts:
        """The spatial reduction keys and values are projected from: an ``R x R`` stride-``R`` conv and a norm, or
        with ``linear=True`` a 7x7 average pool, a 1x1 conv, a norm and a GELU."""
        extra = dict(dims.attention_dims)
        c, reduced = dims.channels, batch * (dims.kv_tokens or dims.tokens)
        if "P" in extra:
            return (oc.elementwise(batch * dims.tokens * c, add=1) + oc.conv(reduced, c, c, 1, inputs=reduced)
                    + oc.layer_norm(reduced, c) + oc.gelu(reduced * c))
        ratio = extra.get("R", 1)
        if ratio == 1:
            return oc.NONE
        return oc.conv(reduced, c, c, ratio * ratio, inputs=batch * dims.tokens) + oc.layer_norm(reduced, c)

    def mlp_layout_counts(self, dims: BlockDims, batch: int) -> oc.OpCounts:
        """The 3x3 depthwise conv over the grid between the MLP's layers (after a ReLU with ``linear=True``)."""
        cells, hidden = batch * dims.tokens, dims.hidden
        relu = oc.elementwise(cells * hidden, cmp=1) if "P" in dict(dims.attention_dims) else oc.NONE
        return relu + oc.conv(cells, hidden, hidden, 9, inputs=cells, groups=hidden)

    def frame_layers(self, dims: ModelDims, batch: int) -> list[Layer]:
        """The 7x7 stride-4 patch embedding, each later stage's 3x3 stride-2 downsampling, the head."""
        stages = {b.stage: b for b in dims.blocks}
        out, grid, width = [], (dims.img, dims.img), 3
        for s in sorted(stages):
            own = stages[s]
            kernel, stride = ((7, 7), 4) if s == 0 else ((3, 3), 2)
            out.append(al.conv(batch, width, own.channels, kernel, stride, grid, own.grid))
            grid, width = own.grid, own.channels
        return [*out, al.fc(batch, width, dims.classes)]

    def attention_layout_layers(self, dims: BlockDims, batch: int) -> list[Layer]:
        """The spatial reduction's ``R x R`` stride-``R`` conv, or with ``linear=True`` the 1x1 conv on the pooled
        7x7 grid (the pool, norm and GELU are not priced)."""
        extra, c = dict(dims.attention_dims), dims.channels
        if "P" in extra:
            return [al.conv(batch, c, c, (1, 1), 1, (POOLED, POOLED), (POOLED, POOLED))]
        ratio = extra.get("R", 1)
        if ratio == 1:
            return []
        reduced = tuple(side // ratio for side in dims.grid)
        return [al.conv(batch, c, c, (ratio, ratio), ratio, dims.grid, reduced)]

    def mlp_layout_layers(self, dims: BlockDims, batch: int) -> list[Layer]:
        """The 3x3 depthwise conv over the grid."""
        return [al.conv(batch, dims.hidden, dims.hidden, (3, 3), 1, dims.grid, dims.grid, groups=dims.hidden)]

    def frame(self, model: nn.Module) -> nn.Module:
        for stage in model.stages:
            stage.blocks = nn.ModuleList()
        return model

    def call_args(self, dims: BlockDims) -> tuple:
        return (dims.grid,)

    def attention_source(self, attn: nn.Module, shared: bool = False) -> nn.Module:
        return FusedProjections(attn, shared)

    def projections(self, attn: nn.Module, key: str) -> tuple[str, ...]:
        if key == "qkv" and not hasattr(attn, "qkv"):
            return ("q", "kv")
        return (key,)

    def adapt_mlp(self, mlp: nn.Module) -> nn.Module:
        if isinstance(mlp, MoEMlp):
            mlp.experts = nn.ModuleList(GridExpert(expert) for expert in mlp.experts)
        return mlp

    def mismatch_hint(self, model: nn.Module, state: Mapping[str, Any]) -> str | None:
        # linear=True gives every stage a 1x1 sr conv (after 7x7 pooling); linear=False an sr x sr one where sr > 1
        convs = [v for k, v in state.items() if k.endswith(".attn.sr.weight")]
        if not convs:
            return None
        file_linear = all(tuple(v.shape[-2:]) == (1, 1) for v in convs) and len(convs) == len(self.blocks(model))
        model_linear = self.blocks(model)[0].attn.pool is not None
        if file_linear == model_linear:
            return None
        return (f"the checkpoint is of a linear={file_linear} PVTv2 and the model linear={model_linear}: set "
                f"model.kwargs.linear: {str(file_linear).lower()}")


register(PvtV2())
