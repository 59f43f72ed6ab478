"""Timing the modules a model executes (torch parts, and shift/additive parts on the TVM kernels), op by op.

Each op of :mod:`latency_model.decomposition` is rebuilt as the module the model runs (inside the model cut down by its family
to one block of each size, converted with :func:`kernels.runtime.to_kernels`), fed an input of its shape and timed:
warm-up, then ``repeats`` repeats of as many calls as last ``min_repeat_ms``, the median being the figure used.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from kernels.measure import CpuContention, Timing
from kernels.runtime import KernelSet, to_kernels
from kernels.runtime import compiled as torch_compiled
from search_spaces import ArchConfig, BlockConfig, MoEConfig, build_model
from search_spaces.config import ModelSpec
from search_spaces.families import ModelDims, family_for
from search_spaces.ops.moe import GridExpert
from search_spaces.reparam import transformer_blocks

from .decomposition import Op
from .keys import IN_SITU_PARTS, OpName, part_name, split_attention_variant


class _PassThrough(nn.Module):
    """Stands in for a sub-module whose time is counted by another op."""

    def forward(self, x, *args, **kwargs):
        return x


class _Clock:
    """Seconds elapsed over a stretch of calls: the host's clock on the CPU; on a CUDA device, CUDA events recorded
    on the stream around the stretch and read after synchronising (the host returns from a launch before the GPU
    has run it)."""

    def __init__(self, device: torch.device | None) -> None:
        self.cuda = device is not None and device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, stretch: Callable[[], None]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            stretch()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        stretch()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3


def time_callable(fn: Callable[[], object], repeats: int = 15, min_repeat_ms: float = 20.0,
                  warmup_ms: float = 100.0, on_first_call: Callable[[float], None] | None = None,
                  device: torch.device | None = None) -> Timing:
    """Per-call latency of ``fn``: warm up for ``warmup_ms`` (first calls load kernels and fill caches and the
    allocator; without it the first model timed in a process read 70 % slow), calibrate calls per repeat to last
    ``min_repeat_ms``, then repeat. ``on_first_call(seconds)`` hears what the first call took (in the compiled
    runtime, mostly compiling). On a CUDA ``device`` each repeat is timed with CUDA events, synchronised."""
    clock = _Clock(device)
    start = time.perf_counter()
    fn()
    clock.sync()
    if on_first_call is not None:
        on_first_call(time.perf_counter() - start)
    deadline = time.perf_counter() + warmup_ms / 1e3
    while time.perf_counter() < deadline:
        fn()
    clock.sync()
    once = max(clock.measure(fn), 1e-7)
    number = max(1, int(min_repeat_ms / 1e3 / once))

    def stretch() -> None:
        for _ in range(number):
            fn()
    per_call = []
    with CpuContention() as contention:
        for _ in range(repeats):
            per_call.append(clock.measure(stretch) / number)
    return Timing.from_seconds(per_call).with_contention(contention.share)


def _one_block(spec: ModelSpec, index: int, block: BlockConfig, kernels: KernelSet) -> tuple[nn.Module, nn.Module]:
    """The model cut down for timing (its family's :meth:`~search_spaces.families.Family.timing_spec`), converted to
    the kernels, with ``block`` at the place of block ``index`` of the full model; returns the model and that block."""
    family, dims = family_for(spec), ModelDims.of(spec)
    small = family.timing_spec(spec)
    at = family.timing_index(dims, index)
    blocks = [BlockConfig()] * len(ModelDims.of(small).blocks)
    blocks[at] = block
    model = to_kernels(build_model(ArchConfig(small, tuple(blocks))), kernels)
    return model, family.blocks(model)[at]


def _block_of(op: Op, dims: ModelDims) -> int:
    """The first block of the model that runs at the op's sizes."""
    d = op.dims
    wanted = {"channels": d["C"]}
    if "T" in d:
        wanted["tokens"] = d["T"]
    if "H" in d:
        wanted["heads"] = d["H"]
    if "Hd" in d:
        wanted["hidden"] = d["Hd"]
    wanted.update({k: d[k] for k in ("R", "P") if k in d})
    return dims.find_block(**wanted)


def build_op(op: Op, spec: ModelSpec, kernels: KernelSet, device: torch.device | None = None
             ) -> tuple[nn.Module, tuple]:
    """The module an op times, with the arguments of one call at its shape, on ``device`` (default: the CPU)."""
    module, args = _build_op(op, spec, kernels)
    if device is None:
        return module, args
    return module.to(device), tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def _build_op(op: Op, spec: ModelSpec, kernels: KernelSet) -> tuple[nn.Module, tuple]:
    d = op.dims
    family, dims = family_for(spec), ModelDims.of(spec)
    if op.op == OpName.FRAME:
        model, _ = _one_block(spec, 0, BlockConfig(), kernels)
        return family.frame(model), (torch.randn(d["B"], 3, dims.img, dims.img),)
    index = _block_of(op, dims)
    extra = family.call_args(dims.blocks[index])
    if op.op == OpName.BLOCK_FRAME:
        _, block = _one_block(spec, index, BlockConfig(), kernels)
        block.attn, block.mlp = _PassThrough(), _PassThrough()
        return block, (torch.randn(d["B"], d["T"], d["C"]), *extra)
    if op.op == OpName.ATTENTION:
        attention, qkv, proj = split_attention_variant(op.variant)
        _, block = _one_block(spec, index, BlockConfig(attention, qkv, proj, "dense"), kernels)
        return block.attn, (torch.randn(d["B"], d["T"], d["C"]), *extra)
    if op.op == OpName.MLP:
        _, block = _one_block(spec, index, BlockConfig(mlp=op.variant), kernels)
        if "G" not in d:
            return block.mlp, (torch.randn(1, d["M"], d["C"]),)
        images = d["G"] // d["T"]
        if not d.get("X"):  # the whole MLP over the batch's grid
            return block.mlp, (torch.randn(images, d["T"], d["C"]), *extra)
        routed = min(d["M"], d["G"])  # an expert: its rows, padded to the bucket, at positions spread over the grid
        rows = torch.randperm(d["G"], generator=torch.Generator().manual_seed(0))[:routed].sort().values
        grid = (images, *dims.blocks[index].grid)
        return GridExpert(block.mlp), (torch.randn(d["M"], d["C"]), rows, grid)
    if op.op == OpName.MOE_ROUTER:
        experts = ("dense",) * d["E"]
        top_k = d.get("K", 1)  # tables profiled before the router was priced per top_k have no K: top-1
        _, block = _one_block(spec, index, BlockConfig(mlp="moe", moe=MoEConfig(top_k, experts)), kernels)
        block.mlp.experts = nn.ModuleList(_PassThrough() for _ in range(d["E"]))
        return block.mlp, (torch.randn(1, d["M"], d["C"]),)
    raise ValueError(f"no module for op {op.op!r}")


def _runtime(module: nn.Module, compiled: bool) -> nn.Module:
    module.eval()
    return torch_compiled(module) if compiled else module


@torch.no_grad()
def time_op(op: Op, spec: ModelSpec, kernels: KernelSet, repeats: int = 15, compiled: bool = False,
            on_first_call: Callable[[float], None] | None = None, device: torch.device | None = None) -> Timing:
    """An op's latency as the model runs it: eager, or ``compiled`` (:func:`kernels.runtime.compiled`), on
    ``device`` (default: the CPU)."""
    module, args = build_op(op, spec, kernels, device)
    module = _runtime(module, compiled)
    return time_callable(lambda: module(*args), repeats=repeats, on_first_call=on_first_call, device=device)


@torch.no_grad()
def time_model(model: nn.Module, batch: int, img: int, repeats: int = 15, compiled: bool = False,
               on_first_call: Callable[[float], None] | None = None, device: torch.device | None = None) -> Timing:
    """Forward latency of a whole (kernel-converted) model at a batch size, eager or ``compiled``, on ``device``
    (default: where the model is)."""
    device = device or next(model.parameters()).device
    model = _runtime(model.to(device), compiled)
    x = torch.randn(batch, 3, img, img, device=device)
    return time_callable(lambda: model(x), repeats=repeats, min_repeat_ms=50.0, on_first_call=on_first_call,
                         device=device)


@torch.no_grad()
def time_parts(model: nn.Module, batch: int, img: int, forwards: int = 45) -> dict[str, float]:
    """Each block's attention and MLP (an MoE's router, dispatch and experts together) timed inside the running
    model, eager: the median per call over ``forwards`` forward passes after a warm-up, keyed by :func:`part_name`.

    What a part costs as the model runs it, after the parts before it have had the caches and the thread pools,
    which the same part timed alone in a loop (:func:`time_op`) does not pay. The hooks that time them cost about a
    microsecond a part; the whole model is timed without them (:func:`time_model`)."""
    model.eval()
    started: dict[str, float] = {}
    spent: dict[str, list[float]] = defaultdict(list)
    handles = []

    def hooks(name: str) -> tuple[Callable, Callable]:
        def before(*_):
            started[name] = time.perf_counter()

        def after(*_):
            spent[name].append(time.perf_counter() - started[name])
        return before, after

    for i, block in enumerate(transformer_blocks(model)):
        for part, attribute in IN_SITU_PARTS.items():
            before, after = hooks(part_name(i, part))
            module = getattr(block, attribute)
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    x = torch.randn(batch, 3, img, img)
    try:
        for _ in range(3):
            model(x)
        spent.clear()
        for _ in range(forwards):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: statistics.median(times) * 1e3 for name, times in spent.items()}
