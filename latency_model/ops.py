"""What a model executes, as a list of ops with shapes: the one decomposition that profiling and prediction share.

A ViT forward on this system is composed of

- ``module.frame``: everything outside the blocks (patch embedding, class token and positions, final norm, head),
  shape ``{B, img, patch, C, classes}``;
- per block, ``module.block_frame`` (the two layer norms and residual adds, ``{B, T, C}``), the attention module
  ``module.attention`` (variant ``<attention>/<qkv>/<proj>``, ``{B, T, C, H}``) and the MLP module ``module.mlp``
  (variant ``dense`` or ``shift``, ``{M, C, Hd}`` with ``M = B·T`` tokens);
- for an MoE MLP, ``module.moe_router`` (routing and dispatch at the block's ``top_k``, ``{M, C, E, K}``) plus each
  expert as a ``module.mlp`` at the token count the kernels run it on (its tokens padded up to the next bucket of
  :func:`search_spaces.ops.moe.token_buckets`). Experts run one after the other, so a block costs the router plus
  the sum of its experts. How many tokens an expert gets varies from image to image (:class:`MoELoad`), and so does
  its bucket: an expert is one op per bucket, its ``count`` the share of forward passes that run it there.

These are timed as the modules run here (dense parts in torch, shift layers and additive attention on the TVM
kernels, see :mod:`kernels.runtime`). Separately, :func:`kernel_tasks` lists the TVM kernel shapes a config produces,
which ``nas profile`` tunes and times for the kernel-level table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from search_spaces import ArchConfig, BlockConfig, SearchSpace, registry
from search_spaces.families import ModelDims
from search_spaces.ops.moe import MoELoad, token_buckets

from kernels.matshift import DEFAULT_VARIANT
from kernels.spec import KernelSpec

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


def expert_ops(load: MoELoad, index: int, kinds: Sequence[str], assignments_per_image: int, batch: int,
               c: int, hidden: int) -> list[Op]:
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
        ops += [Op(OpName.MLP, kind, _shape(M=int(buckets[b]), C=c, Hd=hidden), index, float(shares[b]),
                   expert=e) for b in np.nonzero(shares)[0]]
    return ops


def frame_op(dims: ModelDims, batch: int) -> Op:
    return Op(OpName.FRAME, "", _shape(B=batch, img=dims.img, patch=dims.patch, C=dims.embed_dim,
                                         classes=dims.classes))


def block_ops(dims: ModelDims, batch: int, index: int, block: BlockConfig,
              routing: MoELoad | Sequence[float] | None = None) -> list[Op]:
    """The ops of one block. For an MoE MLP, ``routing`` is how its router spreads tokens: a measured
    :class:`MoELoad`, or the share of token assignments each expert gets from every image (default: equal); each
    expert is priced at the buckets the kernels run it at (:func:`expert_ops`)."""
    t, c = dims.tokens, dims.embed_dim
    m = batch * t
    ops = [
        Op(OpName.BLOCK_FRAME, "", _shape(B=batch, T=t, C=c), index),
        Op(OpName.ATTENTION, block_attention_variant(block), _shape(B=batch, T=t, C=c, H=dims.heads), index),
    ]
    if not registry.get("mlp", block.mlp).routed:
        ops.append(Op(OpName.MLP, block.mlp, _shape(M=m, C=c, Hd=dims.mlp_hidden), index))
        return ops
    assert block.moe is not None
    experts = block.moe.experts
    ops.append(Op(OpName.MOE_ROUTER, "", _shape(M=m, C=c, E=len(experts), K=block.moe.top_k), index))
    per_image = block.moe.top_k * t
    if routing is None:
        routing = [1.0 / len(experts)] * len(experts)
    if not isinstance(routing, MoELoad):
        routing = MoELoad.at_shares(routing, per_image)
    return ops + expert_ops(routing, index, experts, per_image, batch, c, dims.mlp_hidden)


def space_ops(space: SearchSpace, batches: Iterable[int]) -> list[Op]:
    """Every module op (and shape) that any architecture of the space can execute, at each batch size."""
    dims = ModelDims.of(space.model)
    seen: dict[tuple, Op] = {}
    for batch in batches:
        op = frame_op(dims, batch)
        seen.setdefault(op.key, op)
        m = batch * dims.tokens
        for choices in set(space.blocks):
            for attention in choices.attention:
                for qkv in choices.qkv:
                    for proj in choices.proj:
                        block = BlockConfig(attention, qkv, proj, "dense")
                        for op in block_ops(dims, batch, 0, block)[:2]:
                            seen.setdefault(op.key, op)
            for mlp in choices.mlp:
                if not registry.get("mlp", mlp).routed:
                    op = Op(OpName.MLP, mlp, _shape(M=m, C=dims.embed_dim, Hd=dims.mlp_hidden))
                    seen.setdefault(op.key, op)
                    continue
                for k in space.moe_top_k:
                    router = Op(OpName.MOE_ROUTER, "", _shape(M=m, C=dims.embed_dim, E=len(space.moe_experts), K=k))
                    seen.setdefault(router.key, router)
                for kind in set(space.moe_experts):
                    for tokens in sorted({t for k in space.moe_top_k for t in token_buckets(k * m)}):
                        op = Op(OpName.MLP, kind, _shape(M=tokens, C=dims.embed_dim, Hd=dims.mlp_hidden))
                        seen.setdefault(op.key, op)
    return list(seen.values())


def kernel_tasks(space: SearchSpace, batches: Iterable[int], matshift_variant: str = DEFAULT_VARIANT
                 ) -> list[KernelSpec]:
    """Every TVM kernel shape the space can produce, per batch size: what each primitive it offers declares
    (``kernel_tasks`` in :mod:`search_spaces.registry`) at the block's sizes; an MoE's experts at every token count
    they run at. A task that names no variant takes the default one (``matshift_variant`` for matshift)."""
    dims = ModelDims.of(space.model)
    specs: dict[str, KernelSpec] = {}
    defaults = {"matshift": matshift_variant}

    def add(tasks: Iterable[registry.KernelTask]) -> None:
        for kernel, variant, m, k, n in tasks:
            spec = KernelSpec(kernel, variant or defaults[kernel], m, k, n)
            specs.setdefault(spec.key, spec)

    for batch in batches:
        shapes = registry.Shapes(batch, dims.tokens, dims.embed_dim, dims.heads, dims.mlp_hidden)
        for choices in dict.fromkeys(space.blocks):
            for name in choices.attention:
                add(registry.get("attention", name).tasks(shapes))
            for key in ("qkv", "proj"):
                for name in choices.get(key):
                    add(registry.get("linear", name).tasks(shapes, shapes.linear_layers(key)))
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


__all__ = ["ModelDims", "MoELoad", "Op", "block_ops", "config_ops", "expert_ops", "frame_op", "kernel_tasks",
           "latency_split", "space_ops"]
