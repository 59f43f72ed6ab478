"""Timing the modules a model executes (torch parts, and shift/additive parts on the TVM kernels), op by op.

Each op of :mod:`latency_model.ops` is rebuilt as the module the model runs (a one-block model of the same
dimensions, converted with :func:`kernels.runtime.to_kernels`), fed an input of its shape and timed: warm-up, then
``repeats`` repeats of as many calls as last ``min_repeat_ms``, the median being the figure used.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from kernels.measure import CpuContention, Timing
from kernels.runtime import KernelSet, to_kernels
from search_spaces import ArchConfig, BlockConfig, MoEConfig, build_model
from search_spaces.config import ModelSpec
from search_spaces.families import family_for

from .keys import OpName, split_attention_variant
from .ops import Op


class _PassThrough(nn.Module):
    """Stands in for a sub-module whose time is counted by another op."""

    def forward(self, x, *args, **kwargs):
        return x


def time_callable(fn: Callable[[], object], repeats: int = 15, min_repeat_ms: float = 20.0,
                  warmup_ms: float = 100.0) -> Timing:
    """Per-call latency of ``fn``: warm up for ``warmup_ms`` (first calls load kernels and fill caches and the
    allocator; without it the first model timed in a process read 70 % slow), calibrate calls per repeat to last
    ``min_repeat_ms``, then repeat."""
    fn()
    deadline = time.perf_counter() + warmup_ms / 1e3
    while time.perf_counter() < deadline:
        fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    number = max(1, int(min_repeat_ms / 1e3 / once))
    per_call = []
    with CpuContention() as contention:
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            per_call.append((time.perf_counter() - start) / number)
    return Timing.from_seconds(per_call).with_contention(contention.share)


def _one_block(spec: ModelSpec, block: BlockConfig, kernels: KernelSet) -> nn.Module:
    one = family_for(spec).with_depth(spec, 1)
    return to_kernels(build_model(ArchConfig(one, (block,))), kernels)


def build_op(op: Op, spec: ModelSpec, kernels: KernelSet) -> tuple[nn.Module, torch.Tensor]:
    """The module an op times, with an input of its shape."""
    d = op.dims
    if op.op == OpName.FRAME:
        frame = family_for(spec).frame(_one_block(spec, BlockConfig(), kernels))
        return frame, torch.randn(d["B"], 3, d["img"], d["img"])
    if op.op == OpName.BLOCK_FRAME:
        block = _one_block(spec, BlockConfig(), kernels).blocks[0]
        block.attn, block.mlp = _PassThrough(), _PassThrough()
        return block, torch.randn(d["B"], d["T"], d["C"])
    if op.op == OpName.ATTENTION:
        attention, qkv, proj = split_attention_variant(op.variant)
        block = _one_block(spec, BlockConfig(attention, qkv, proj, "dense"), kernels).blocks[0]
        return block.attn, torch.randn(d["B"], d["T"], d["C"])
    if op.op == OpName.MLP:
        block = _one_block(spec, BlockConfig(mlp=op.variant), kernels).blocks[0]
        return block.mlp, torch.randn(1, d["M"], d["C"])
    if op.op == OpName.MOE_ROUTER:
        experts = ("dense",) * d["E"]
        top_k = d.get("K", 1)  # tables profiled before the router was priced per top_k have no K: top-1
        block = _one_block(spec, BlockConfig(mlp="moe", moe=MoEConfig(top_k, experts)), kernels).blocks[0]
        block.mlp.experts = nn.ModuleList(_PassThrough() for _ in range(d["E"]))
        return block.mlp, torch.randn(1, d["M"], d["C"])
    raise ValueError(f"no module for op {op.op!r}")


@torch.no_grad()
def time_op(op: Op, spec: ModelSpec, kernels: KernelSet, repeats: int = 15) -> Timing:
    module, x = build_op(op, spec, kernels)
    module.eval()
    return time_callable(lambda: module(x), repeats=repeats)


@torch.no_grad()
def time_model(model: nn.Module, batch: int, img: int, repeats: int = 15) -> Timing:
    """Forward latency of a whole (kernel-converted) model at a batch size."""
    model.eval()
    x = torch.randn(batch, 3, img, img)
    return time_callable(lambda: model(x), repeats=repeats, min_repeat_ms=50.0)
