"""What a model executes, as a list of ops with shapes: the one decomposition that profiling and prediction share.

A forward pass on this system is composed of

- ``module.frame``: everything outside the blocks (ViT: patch embedding, class token and positions, final norm,
  head, ``{B, img, patch, C, classes}``; PVTv2: the patch embedding, each stage's downsampling and norm, the head,
  ``{B, img, C0, C, S, classes}``);
- per block, at that block's own sizes (a PVTv2's stages differ), ``module.block_frame`` (the two layer norms and
  residual adds, ``{B, T, C}``), the attention module ``module.attention`` (variant ``<attention>/<qkv>/<proj>``,
  ``{B, T, C, H}``, plus the reduction ratio ``R`` (and ``P`` with ``linear=True``) of a PVTv2 attention that keeps
  its spatial reduction) and the MLP module ``module.mlp`` (variant ``dense`` or ``shift``, ``{M, C, Hd}`` with
  ``M = B·T`` tokens, plus ``G``/``T``, the grid its depthwise conv runs over, for a PVTv2);
- for an MoE MLP, ``module.moe_router`` (routing and dispatch at the block's ``top_k``, ``{M, C, E, K}``) plus each
  expert as a ``module.mlp`` at the token count the kernels run it on (its tokens padded up to the next bucket of
  :func:`search_spaces.ops.moe.token_buckets`). Experts run one after the other, so a block costs the router plus
  the sum of its experts. How many tokens an expert gets varies from image to image (:class:`MoELoad`), and so does
  its bucket: an expert is one op per bucket, its ``count`` the share of forward passes that run it there. A PVTv2
  expert carries ``X=1``: it scatters its rows onto the grid for its conv and gathers them back
  (:class:`~search_spaces.ops.moe.GridExpert`), which the whole MLP does not, even when it gets every token.

These are timed as the modules run here (dense parts in torch, shift layers and additive attention on the TVM
kernels, see :mod:`kernels.runtime`). Separately, :func:`kernel_tasks` lists the TVM kernel shapes a config produces,
which ``nas profile`` tunes and times for the kernel-level table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from kernels.dispatch import CANDIDATES
from kernels.matshift import DEFAULT_VARIANT
from kernels.spec import KernelSpec
from search_spaces import ArchConfig, BlockConfig, SearchSpace, registry
from search_spaces.families import BlockDims, ModelDims
from search_spaces.ops.moe import MoELoad, token_buckets

from .keys import OpName, attention_variant, measurement_key


@dataclass(frozen=True)
class Op:
    """One op at one shape; ``count`` is how many times the model runs it."""

    op: str
    variant: str
    shape: tuple[tuple[str, int], ...]
    block: int | None = None  # None for the fixed parts
    count: float = 1.0  # runs per forward pass (a share of the passes for an MoE expert's bucket)
    dtype: str = "float32"
    expert: int | None = None  # an MoE expert's index in its block

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.shape)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Its measurement key: the row that times it."""
        return measurement_key(self.op, self.variant, self.shape, self.dtype)


def _shape(**dims: int) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((k, int(v)) for k, v in dims.items()))


def block_attention_variant(block: BlockConfig) -> str:
    return attention_variant(block.attention, block.qkv, block.proj)


def latency_split(expert_latency: list[float]) -> list[float]:
    """The share of token assignments each expert gets once the latency-aware balance loss has done its work: it
    balances ``importance ⊙ lat``, so expert ``e`` gets a share proportional to ``1 / lat_e``."""
    inverse = [1.0 / max(lat, 1e-12) for lat in expert_latency]
    return [w / sum(inverse) for w in inverse]


def attention_shape(dims: BlockDims, batch: int, attention: str) -> tuple[tuple[str, int], ...]:
    """The shape of a block's attention op: ``{B, T, C, H}``, plus the family's dims of the dense attention's layout
    when the choice keeps it (PVTv2's reduction ratio)."""
    extra = dict(dims.attention_dims) if registry.get("attention", attention).keeps_dense else {}
    return _shape(B=batch, T=dims.tokens, C=dims.channels, H=dims.heads, **extra)


def mlp_shape(dims: BlockDims, batch: int, tokens: int | None = None, expert: bool = False
              ) -> tuple[tuple[str, int], ...]:
    """The shape of an MLP op at ``tokens`` rows (default: the whole batch's): ``{M, C, Hd}``, plus, for an MLP
    that mixes neighbouring tokens (PVTv2's depthwise conv), ``G`` grid cells of the batch and ``T`` per image. An
    MoE ``expert`` of such an MLP runs at its bucket's rows with the conv over the whole grid, scattered there and
    gathered back (``X=1``)."""
    rows = batch * dims.tokens if tokens is None else tokens
    grid = {"G": batch * dims.tokens, "T": dims.tokens, **({"X": 1} if expert else {})} if dims.spatial_mlp else {}
    return _shape(M=rows, C=dims.channels, Hd=dims.hidden, **grid)


def block_shapes(dims: BlockDims, batch: int, attention: str) -> registry.Shapes:
    """The sizes a block's primitives take their kernel shapes from, for one attention choice (a choice that keeps
    the dense attention keeps its spatial reduction)."""
    reduced = dims.kv_tokens if registry.get("attention", attention).keeps_dense else None
    return registry.Shapes(batch, dims.tokens, dims.channels, dims.heads, dims.hidden, reduced)


def expert_ops(load: MoELoad, index: int, kinds: Sequence[str], assignments_per_image: int, batch: int,
               dims: BlockDims) -> list[Op]:
    """Each expert of an MoE block as one ``module.mlp`` op per bucket it runs at, ``count`` = share of passes."""
    if len(load.histograms) != len(kinds):
        raise ValueError(f"block {index}: an MoE load of {len(load.histograms)} experts for experts {list(kinds)}")
    most = max(len(h) - 1 for h in load.histograms)
    if most > assignments_per_image * load.images:
        raise ValueError(f"block {index}: an MoE load with {most} assignments per {load.images} image(s), more than "
                         f"the block's {assignments_per_image} per image (tokens x top_k): it was measured on "
                         f"another model")
    assignments = assignments_per_image * batch
    buckets = np.asarray(token_buckets(assignments))
    ops = []
    for e, kind in enumerate(kinds):
        dist = load.batch_counts(e, batch)
        counts = np.nonzero(dist[1:])[0] + 1  # a pass that sends an expert no token does not run it
        shares = np.bincount(np.searchsorted(buckets, counts), weights=dist[counts], minlength=len(buckets))
        ops += [Op(OpName.MLP, kind, mlp_shape(dims, batch, int(buckets[b]), expert=True), index, float(shares[b]),
                   expert=e)
                for b in np.nonzero(shares)[0]]
    return ops


def frame_op(dims: ModelDims, batch: int) -> Op:
    return Op(OpName.FRAME, "", _shape(B=batch, **dict(dims.frame)))


def block_ops(dims: ModelDims, batch: int, index: int, block: BlockConfig,
              routing: MoELoad | Sequence[float] | None = None) -> list[Op]:
    """The ops of block ``index``, at its own sizes. For an MoE MLP, ``routing`` is how its router spreads tokens: a
    measured :class:`MoELoad`, or the share of token assignments each expert gets from every image (default:
    equal); each expert is priced at the buckets the kernels run it at (:func:`expert_ops`)."""
    own = dims.blocks[index]
    t, c = own.tokens, own.channels
    m = batch * t
    ops = [
        Op(OpName.BLOCK_FRAME, "", _shape(B=batch, T=t, C=c), index),
        Op(OpName.ATTENTION, block_attention_variant(block), attention_shape(own, batch, block.attention), index),
    ]
    if not registry.get("mlp", block.mlp).routed:
        ops.append(Op(OpName.MLP, block.mlp, mlp_shape(own, batch), index))
        return ops
    assert block.moe is not None
    experts = block.moe.experts
    ops.append(Op(OpName.MOE_ROUTER, "", _shape(M=m, C=c, E=len(experts), K=block.moe.top_k), index))
    per_image = block.moe.top_k * t
    if routing is None:
        routing = [1.0 / len(experts)] * len(experts)
    if not isinstance(routing, MoELoad):
        routing = MoELoad.at_shares(routing, per_image)
    return ops + expert_ops(routing, index, experts, per_image, batch, own)


def _distinct_blocks(space: SearchSpace) -> list[tuple[int, BlockDims]]:
    """One block index per distinct (choices, sizes) of the space: the blocks whose ops cover every block's."""
    dims = ModelDims.of(space.model)
    seen: dict[tuple, tuple[int, BlockDims]] = {}
    for i, (choices, own) in enumerate(zip(space.blocks, dims.blocks)):
        seen.setdefault((choices, own), (i, own))
    return list(seen.values())


def space_ops(space: SearchSpace, batches: Iterable[int]) -> list[Op]:
    """Every module op (and shape) that any architecture of the space can execute, at each batch size."""
    dims = ModelDims.of(space.model)
    seen: dict[tuple, Op] = {}
    for batch in batches:
        op = frame_op(dims, batch)
        seen.setdefault(op.key, op)
        for index, own in _distinct_blocks(space):
            choices = space.blocks[index]
            m = batch * own.tokens
            for attention in choices.attention:
                for qkv in choices.qkv:
                    for proj in choices.proj:
                        block = BlockConfig(attention, qkv, proj, "dense")
                        for op in block_ops(dims, batch, index, block)[:2]:
                            seen.setdefault(op.key, op)
            for mlp in choices.mlp:
                if not registry.get("mlp", mlp).routed:
                    op = Op(OpName.MLP, mlp, mlp_shape(own, batch))
                    seen.setdefault(op.key, op)
                    continue
                for k in space.moe_top_k:
                    router = Op(OpName.MOE_ROUTER, "", _shape(M=m, C=own.channels, E=len(space.moe_experts), K=k))
                    seen.setdefault(router.key, router)
                for kind in set(space.moe_experts):
                    for tokens in sorted({t for k in space.moe_top_k for t in token_buckets(k * m)}):
                        op = Op(OpName.MLP, kind, mlp_shape(own, batch, tokens, expert=True))
                        seen.setdefault(op.key, op)
    return list(seen.values())


def kernel_tasks(space: SearchSpace, batches: Iterable[int], matshift_variant: str = DEFAULT_VARIANT,
                 every_candidate: bool = False) -> list[KernelSpec]:
    """Every TVM kernel shape the space can produce, per batch size: what each primitive it offers declares
    (``kernel_tasks`` in :mod:`search_spaces.registry`) at each block's sizes; an MoE's experts at every token count
    they run at. A task that names no variant takes the default one (``matshift_variant`` for matshift), or with
    ``every_candidate`` each variant dispatch chooses between (:data:`kernels.dispatch.CANDIDATES`), as
    ``nas profile`` times them."""
    specs: dict[str, KernelSpec] = {}
    defaults = {"matshift": matshift_variant}

    def add(tasks: Iterable[registry.KernelTask]) -> None:
        for kernel, variant, m, k, n, *batch in tasks:
            if variant is not None:
                chosen = (variant,)
            elif every_candidate and kernel in CANDIDATES:
                chosen = CANDIDATES[kernel]
            else:
                chosen = (defaults[kernel],)
            for name in chosen:
                spec = KernelSpec(kernel, name, m, k, n, batch=batch[0] if batch else 1)
                specs.setdefault(spec.key, spec)

    for batch in batches:
        for index, own in _distinct_blocks(space):
            choices = space.blocks[index]
            for name in choices.attention:
                shapes = block_shapes(own, batch, name)
                add(registry.get("attention", name).tasks(shapes))
                for qkv in choices.qkv:
                    add(registry.get("linear", qkv).tasks(shapes, shapes.linear_layers("qkv")))
            shapes = registry.Shapes(batch, own.tokens, own.channels, own.heads, own.hidden)
            for name in choices.proj:
                add(registry.get("linear", name).tasks(shapes, shapes.linear_layers("proj")))
            for name in choices.mlp:
                mlp = registry.get("mlp", name)
                add(mlp.tasks(shapes, shapes.linear_layers("mlp")))
                if not mlp.routed:
                    continue
                for tokens in sorted({t for k in space.moe_top_k for t in token_buckets(k * shapes.rows)}):
                    bucket = replace(shapes, batch=1, tokens=tokens)
                    for kind in dict.fromkeys(space.moe_experts):
                        add(registry.get("expert", kind).tasks(bucket, bucket.linear_layers("mlp")))
    return list(specs.values())


def config_ops(config: ArchConfig, batch: int,
               routing: Callable[[int, BlockConfig], MoELoad | Sequence[float]] | None = None) -> Iterator[Op]:
    """The ops one architecture executes; ``routing(block_index, block)`` gives each MoE block's routing."""
    dims = ModelDims.of(config.model)
    yield frame_op(dims, batch)
    for i, block in enumerate(config.blocks):
        spread = routing(i, block) if block.moe is not None and routing is not None else None
        yield from block_ops(dims, batch, i, block, spread)


__all__ = ["BlockDims", "ModelDims", "MoELoad", "Op", "attention_shape", "block_ops", "block_shapes", "config_ops",
           "expert_ops", "frame_op", "kernel_tasks", "latency_split", "mlp_shape", "space_ops"]
