"""Where each choice pays: every choice of a search space priced against the dense choice of its slot, per block.

A search can only recommend a multiplication-free choice where the device runs it faster than the dense one it
replaces. Which choices do depends on the device, the kernels' tuning and the block's sizes (at a few dozen tokens
the eager torch glue around a kernel costs more than the arithmetic it saves; at a few thousand the arithmetic
dominates), so it is read from the study's own predictor, before and after a search:

- a *slot* is one decision of a block: ``attention`` (msa, linear, additive), ``qkv`` and ``proj`` (the attention's
  projections, dense or shift) and ``mlp`` (dense, shift, or a mixture of experts priced as its router plus its
  experts at the split the latency-aware loss drives toward);
- each choice is priced *alone in an otherwise dense block*: the block's attention part (for the three attention
  slots) or MLP part, at its in-situ factor and scaled as the predictor composes whole models (``a`` times the
  parts, plus ``b`` when the choice puts the block on the TVM kernels, see :mod:`latency_model.predictor`), divided
  by the same part of the all-dense block. Below 1.0 the choice pays at that block.

Blocks with the same choices and sizes are one row (a ViT's blocks are all alike; a PVTv2's differ by stage).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from search_spaces import ArchConfig, BlockConfig, MoEConfig, SearchSpace
from search_spaces.families import ModelDims, family_for

from .decomposition import block_ops, latency_split
from .keys import OpName
from .predictor import Predictor, PredictorError

SLOTS = ("attention", "qkv", "proj", "mlp")
DENSE = BlockConfig()


@dataclass(frozen=True)
class Ratio:
    """One choice at one group of alike blocks, priced against the dense choice of its slot."""

    blocks: tuple[int, ...]
    tokens: int
    channels: int
    slot: str
    choice: str
    ms: float
    dense_ms: float

    @property
    def ratio(self) -> float:
        return self.ms / self.dense_ms

    @property
    def pays(self) -> bool:
        return self.ratio < 1.0

    @property
    def where(self) -> str:
        """``blocks 0-3 (65 tokens, 64 channels)``."""
        first, last = self.blocks[0], self.blocks[-1]
        span = f"block {first}" if first == last else f"blocks {first}-{last}"
        if len(self.blocks) != last - first + 1:
            span = "blocks " + ",".join(map(str, self.blocks))
        return f"{span} ({self.tokens} tokens, {self.channels} channels)"

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": list(self.blocks), "tokens": self.tokens, "channels": self.channels, "slot": self.slot,
                "choice": self.choice, "ms": self.ms, "dense_ms": self.dense_ms, "ratio": self.ratio}


@dataclass
class WhereItPays:
    """Every choice of a space against dense, at one batch size on one device."""

    device: str
    batch: int
    ratios: list[Ratio] = field(default_factory=list)
    unpriced: list[str] = field(default_factory=list)  # "<slot> <choice> at <where>: why"

    @property
    def pays_anywhere(self) -> bool:
        return any(r.pays for r in self.ratios)

    def cheapest(self) -> Ratio | None:
        return min(self.ratios, key=lambda r: r.ratio, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "batch": self.batch, "ratios": [r.to_dict() for r in self.ratios],
                "unpriced": self.unpriced}

    def nothing_pays(self, metrics: tuple[str, ...]) -> str | None:
        """The one line to say before a search when no choice is cheaper than dense at any block (None when some
        choice is, or nothing could be priced): what the latency front will be, and what would change it."""
        cheapest = self.cheapest()
        if cheapest is None or cheapest.pays:
            return None
        energy = ("the energy objective (searched here) can still prefer them" if "energy_uj" in metrics else
                  "the energy objective (objectives.metrics: [accuracy, latency_ms, energy_uj]) prices them apart")
        return (f"no choice of this space is cheaper than dense at any block on {self.device} (batch {self.batch}; "
                f"the nearest, {cheapest.slot} {cheapest.choice} at {cheapest.where}, costs {cheapest.ratio:.2f}x "
                f"dense): the latency front will be the all-dense model alone. A larger model or more tokens "
                f"(bench/results/break-even-cpu.md), a GPU target, or tuned kernels (latency.trials) move the "
                f"break-even; {energy}")


def slot_choices(space: SearchSpace, index: int) -> list[tuple[str, str, BlockConfig]]:
    """``(slot, label, block)``: each non-dense choice of block ``index``'s slots, alone in a dense block."""
    choices = space.blocks[index]
    out: list[tuple[str, str, BlockConfig]] = []
    for attention in choices.attention:
        if attention != DENSE.attention:
            binarize = space.binarize if attention == "additive" else None
            out.append(("attention", attention, BlockConfig(attention=attention, binarize=binarize)))
    for slot in ("qkv", "proj"):
        for name in choices.get(slot):
            if name != getattr(DENSE, slot):
                out.append((slot, name, BlockConfig(**{slot: name})))
    for mlp in choices.mlp:
        if mlp == DENSE.mlp:
            continue
        if mlp == "moe":
            for k in space.moe_top_k:
                label = f"moe (top-{k}, {'+'.join(space.moe_experts)})"
                out.append(("mlp", label, BlockConfig(mlp=mlp, moe=MoEConfig(k, space.moe_experts))))
        else:
            out.append(("mlp", mlp, BlockConfig(mlp=mlp)))
    return out


def _part_ms(predictor: Predictor, space: SearchSpace, index: int, block: BlockConfig, slot: str, batch: int
             ) -> float:
    """Block ``index``'s part that ``slot`` belongs to, with ``block``'s choices, as the predictor composes it (an
    MoE at the split the latency-aware loss drives toward, as :meth:`Predictor.predict` prices it)."""
    routing = None
    if block.moe is not None:
        config = ArchConfig(space.model, tuple(block if i == index else DENSE for i in range(space.depth)))
        routing = latency_split(predictor.expert_latencies(config, index, batch))
    parts = (OpName.ATTENTION,) if slot != "mlp" else (OpName.MLP, OpName.MOE_ROUTER)
    ms = sum(op.count * predictor.op_ms(op.op, op.variant, op.dims, op.dtype)
             for op in block_ops(ModelDims.of(space.model), batch, index, block, routing) if op.op in parts)
    family = family_for(space.model).key
    ms *= predictor.part_factor(family, batch, block, "mlp" if slot == "mlp" else "attention")
    a, b, _ = predictor.calibration.get((family, batch), (1.0, 0.0, 0.0))
    return a * ms + (b if block.on_kernels else 0.0)


def where_it_pays(space: SearchSpace, predictor: Predictor, batch: int = 1,
                  blocks: Collection[int] | None = None) -> WhereItPays:
    """Each choice of ``space`` at each group of alike blocks (of ``blocks`` only, if given), priced by
    ``predictor`` against dense."""
    dims = ModelDims.of(space.model)
    groups: dict[tuple, list[int]] = {}
    for i, (choices, own) in enumerate(zip(space.blocks, dims.blocks)):
        if blocks is None or i in blocks:
            groups.setdefault((choices, own), []).append(i)
    result = WhereItPays(predictor.device, batch)
    for (_, own), members in groups.items():
        index = members[0]
        where = Ratio(tuple(members), own.tokens, own.channels, "", "", 1.0, 1.0).where
        dense: dict[str, float] = {}
        for slot, label, block in slot_choices(space, index):
            try:
                part = "mlp" if slot == "mlp" else "attention"
                if part not in dense:
                    dense[part] = _part_ms(predictor, space, index, DENSE, slot, batch)
                ms = _part_ms(predictor, space, index, block, slot, batch)
            except PredictorError as e:
                result.unpriced.append(f"{slot} {label} at {where}: {e.detail}")
                continue
            result.ratios.append(Ratio(tuple(members), own.tokens, own.channels, slot, label, ms, dense[part]))
    return result
