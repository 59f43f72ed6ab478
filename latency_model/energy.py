"""Energy per forward pass, by one of two models (the study's ``energy.model``):

- ``op_counts`` (the default, this module): operation counts priced per op, weights read once from DRAM,
  activations on chip: the lower bound of an accelerator's traffic;
- ``accelerator``: ShiftAddNAS / ShiftAddViT's released accelerator model, each layer priced under the loop tiling a
  search picks (:mod:`latency_model.accelerator`): the model the paper's energy figures come from.

Both are estimates for an accelerator datapath, not measurements. The rest of this docstring is the ``op_counts``
model.

A model's counts (:func:`model_counts`) are its frame's (``Family.frame_counts``), and per block the two norms and
residual additions, the attention's token mixing (plus the family's layout a dense attention keeps: PVTv2's spatial
reduction), the ``qkv`` and ``proj`` layers and the MLP, each counted by its primitive
(``Primitive.counts``, :mod:`search_spaces.counts`). An MoE block counts its router, and each expert at the tokens
it is routed (the expected count of the same per-image load the latency model prices), its weights read in the
passes it runs in.

A :class:`UnitCosts` table prices them: picojoules per operation and type, and per byte moved. The memory model is
deliberately simple: **weights are read from DRAM once per inference** (at their stored width: fp32 32 bits, a shift
weight its code bits), **activations stay on chip**: every op reads its inputs from and writes its output to an
on-chip SRAM buffer. Energy = Σ count × cost per op + weight bytes × DRAM cost + activation bytes × SRAM cost. It is
deterministic: the same architecture (and routing) gives the same figure on any machine.

Built-in tables (:data:`TABLES`), each with its source:

- ``horowitz45nm`` (the default): M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC
  2014, 45 nm at 0.9 V: fp32 mult 3.7 / add 0.9, fp16 mult 1.1 / add 0.4, int32 mult 3.1 / add 0.1, int8 mult 0.2
  / add 0.03 pJ; a 64-bit access to a 32 KB SRAM 20 pJ, to DRAM 1.3–2.6 nJ (taken at 1.3 nJ, the low end, as Han
  et al.'s 640 pJ per 32-bit word). A shift is priced as ShiftAddNet's 45 nm figures (32-bit 0.13, 8-bit 0.024).
- ``shiftaddnas``: the unit energies of ShiftAddNAS / ShiftAddViT's released code (``hw_utils.get_unit_energy``):
  32-bit mult 3.7, add 0.9, shift 0.13; 8-bit mult 0.2, add 0.03, shift 0.024 pJ, whatever the number format (their
  32-bit add is Horowitz's fp32 add); their DRAM word (200 × a MAC's unit at 16 bits: 400 pJ per 32-bit word,
  100 pJ per byte) and global buffer (6 × 3.7 pJ per 16 bits: 11.1 pJ per byte).

Neither source prices comparisons, logic ops or transcendentals: a comparison or a bitwise op is priced as an
addition of the same width (a comparator is a subtractor), an exp, erf or reciprocal square root as 4
multiplications and 4 additions (a short polynomial), in both tables; a study can override any entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from search_spaces import ArchConfig, BlockConfig, registry
from search_spaces import accelerator_layers as al
from search_spaces import counts as oc
from search_spaces.accelerator_layers import Layer
from search_spaces.config import ConfigError
from search_spaces.families import ModelDims, family_for
from search_spaces.ops.moe import MoELoad
from search_spaces.schema import check_keys, check_number

from . import accelerator
from .decomposition import block_shapes

DEFAULT_TABLE = "horowitz45nm"
MODELS = ("op_counts", "accelerator")
DEFAULT_MODEL = "op_counts"
NOTE = "an estimate for an accelerator datapath from operation counts, not a measurement of this machine"
NOTES = {"op_counts": NOTE, "accelerator": accelerator.NOTE}  # what an energy figure is, by its model


def _derived(ops: dict[str, float]) -> dict[str, float]:
    """The entries neither source gives, from the ones it does: comparisons and logic as an addition of the width,
    a transcendental as 4 multiplications and 4 additions, a 16-bit shift between the 8- and 32-bit ones in
    proportion to its width (a barrel shifter's cost grows about linearly in its width)."""
    out = dict(ops)
    if "shift.int8" in ops and "shift.int32" in ops:
        per_bit = (ops["shift.int32"] - ops["shift.int8"]) / (32 - 8)
        out.setdefault("shift.int16", ops["shift.int8"] + per_bit * (16 - 8))
    for dtype in oc.TYPES:
        add = ops.get(f"add.{dtype}")
        if add is not None:
            out.setdefault(f"cmp.{dtype}", add)
            out.setdefault(f"logic.{dtype}", add)
            if f"mult.{dtype}" in ops and not dtype.startswith("int"):
                out.setdefault(f"exp.{dtype}", 4 * (ops[f"mult.{dtype}"] + add))
    return out


@dataclass(frozen=True)
class UnitCosts:
    """A unit-cost table: pJ per operation (keys ``"<operation>.<type>"``, :mod:`search_spaces.counts`) and per byte
    read from DRAM (weights) or from and to the on-chip buffer (activations)."""

    name: str
    ops: Mapping[str, float]
    dram_pj_per_byte: float
    sram_pj_per_byte: float
    source: str = ""

    def price(self, counts: oc.OpCounts) -> tuple[float, float]:
        """``(compute_pj, memory_pj)`` of ``counts``; an op the table has no cost for is a ConfigError."""
        missing = sorted(k for k, v in counts.ops.items() if v and k not in self.ops)
        if missing:
            raise ConfigError("energy.ops", f"the unit-cost table {self.name!r} has no cost for "
                                            f"{', '.join(missing)}: add them under energy.ops (pJ per operation)")
        compute = sum(count * self.ops[k] for k, count in counts.ops.items())
        memory = counts.weight_bytes * self.dram_pj_per_byte + counts.activation_bytes * self.sram_pj_per_byte
        return compute, memory

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ops": dict(sorted(self.ops.items())), "dram_pj_per_byte": self.dram_pj_per_byte,
                "sram_pj_per_byte": self.sram_pj_per_byte, "source": self.source}


TABLES: dict[str, UnitCosts] = {
    "horowitz45nm": UnitCosts(
        "horowitz45nm", _derived({
            "mult.fp32": 3.7, "add.fp32": 0.9, "mult.fp16": 1.1, "add.fp16": 0.4, "mult.int32": 3.1,
            "add.int32": 0.1, "mult.int8": 0.2, "add.int8": 0.03, "shift.int32": 0.13, "shift.int8": 0.024}),
        dram_pj_per_byte=1300 / 8, sram_pj_per_byte=20 / 8,
        source="M. Horowitz, Computing's energy problem, ISSCC 2014 (45 nm, 0.9 V): ops; 32 KB SRAM 20 pJ and "
               "DRAM 1.3 nJ per 64-bit access; shifts from ShiftAddNet (45 nm)"),
    "shiftaddnas": UnitCosts(
        "shiftaddnas", _derived({
            "mult.fp32": 3.7, "add.fp32": 0.9, "mult.int32": 3.7, "add.int32": 0.9, "shift.int32": 0.13,
            "mult.int8": 0.2, "add.int8": 0.03, "shift.int8": 0.024}),
        dram_pj_per_byte=200 / 2, sram_pj_per_byte=6 * 3.7 / 2,
        source="ShiftAddNAS / ShiftAddViT released code, hw_utils.get_unit_energy: 32- and 8-bit mult, add, shift; "
               "DRAM 200 and global buffer 6 x 3.7 pJ per 16 bits"),
}


def _cost(value: Any, where: str) -> float:
    """A unit cost in pJ."""
    return check_number(value, where, minimum=0)


@dataclass(frozen=True)
class EnergySettings:
    """The study's ``energy:`` section: the model, and for ``op_counts`` a built-in table by name with any entries of
    it overridden::

        energy:
          model: op_counts           # op_counts | accelerator (ShiftAddViT's released model, its own unit costs)
          table: horowitz45nm        # horowitz45nm | shiftaddnas
          ops: {shift.int32: 0.05}   # pJ per operation, "<operation>.<type>" (overrides or adds)
          dram_pj_per_byte: 100      # weights, read once per inference
          sram_pj_per_byte: 2        # activations, read and written on chip by every op
    """

    table: UnitCosts = field(default_factory=lambda: TABLES[DEFAULT_TABLE])
    model: str = DEFAULT_MODEL

    @classmethod
    def from_dict(cls, data: Any) -> "EnergySettings":
        data = check_keys(data if data is not None else {}, "energy", (),
                           ("model", "table", "ops", "dram_pj_per_byte", "sram_pj_per_byte"))
        model = data.get("model", DEFAULT_MODEL)
        if model not in MODELS:
            raise ConfigError("energy.model", f"unknown energy model {model!r} (choose from {', '.join(MODELS)})")
        if model == accelerator.NAME:
            given = [k for k in ("table", "ops", "dram_pj_per_byte", "sram_pj_per_byte") if k in data]
            if given:
                raise ConfigError(f"energy.{given[0]}", "the accelerator model has its own unit costs (the released "
                                                         "model's); table, ops and the per-byte costs are the "
                                                         "op_counts model's: remove them or set model: op_counts")
            return cls(model=model)
        name = data.get("table", DEFAULT_TABLE)
        if name not in TABLES:
            raise ConfigError("energy.table", f"unknown unit-cost table {name!r} (built in: {', '.join(TABLES)}; or "
                                              "give energy.ops and the per-byte costs inline)")
        table = TABLES[name]
        ops = data.get("ops") or {}
        if not isinstance(ops, Mapping):
            raise ConfigError("energy.ops", f"expected a mapping like {{shift.int32: 0.13}}, got {ops!r}")
        overrides = {}
        for k, v in ops.items():
            operation, _, dtype = str(k).partition(".")
            try:
                overrides[oc.key(operation, dtype)] = _cost(v, f"energy.ops.{k}")
            except ValueError as e:
                raise ConfigError(f"energy.ops.{k}", f"not an operation key ('<operation>.<type>'): {e}") from None
        memory = {m: _cost(data[m], f"energy.{m}") for m in ("dram_pj_per_byte", "sram_pj_per_byte") if m in data}
        if overrides or memory:
            table = replace(table, name=f"{name}+study", ops={**table.ops, **overrides}, **memory,
                            source=f"{table.source}; entries overridden by the study")
        return cls(table)

    @property
    def name(self) -> str:
        """What priced an estimate: the unit-cost table's name, or ``accelerator``."""
        return accelerator.NAME if self.model == accelerator.NAME else self.table.name

    @property
    def source(self) -> str:
        return accelerator.SOURCE if self.model == accelerator.NAME else self.table.source

    @property
    def note(self) -> str:
        return NOTES[self.model]

    def to_dict(self) -> dict[str, Any]:
        if self.model == accelerator.NAME:
            return {"model": self.model, "name": self.name, "source": self.source}
        return {"model": self.model, **self.table.to_dict()}


@dataclass(frozen=True)
class ModelCounts:
    """A model's counts for one forward pass: its frame, and per block each part's."""

    frame: oc.OpCounts
    blocks: tuple[Mapping[str, oc.OpCounts], ...]

    @property
    def total(self) -> oc.OpCounts:
        return oc.total([self.frame, *(c for block in self.blocks for c in block.values())])


def _block_frame(rows: int, channels: int) -> oc.OpCounts:
    """A block's two layer norms and two residual additions."""
    return oc.layer_norm(rows, channels) * 2 + oc.elementwise(rows * channels, inputs=2, add=1) * 2


def _expected_expert(count, load: MoELoad, expert: int, batch: int) -> oc.OpCounts:
    """An expert's counts at the token count its batch sends it, in expectation over ``load``: ``count(rows)`` is
    affine in the rows for a pass that runs it, and nothing for one that sends it no token."""
    dist = load.batch_counts(expert, batch)
    runs = float(1.0 - dist[0])
    rows = float(sum(c * p for c, p in enumerate(dist)))
    one = count(1)
    per_row = count(2) - one
    return per_row * rows + (one - per_row) * runs


def model_counts(config: ArchConfig, batch: int = 1,
                 routing: Mapping[int, MoELoad | Sequence[float]] | None = None) -> ModelCounts:
    """What one forward pass of ``batch`` images of ``config`` executes. An MoE block's experts are counted at
    ``routing[block]`` (a measured :class:`MoELoad`, or each expert's share of every image's token assignments;
    default: equal shares)."""
    dims = ModelDims.of(config.model)
    family = family_for(config.model)
    routing = routing or {}
    blocks = []
    for i, (block, own) in enumerate(zip(config.blocks, dims.blocks)):
        attention = registry.get("attention", block.attention)
        shapes = block_shapes(own, batch, block.attention)
        full = replace(shapes, kv_tokens=None)
        parts = {"norms": _block_frame(shapes.rows, own.channels),
                 "attention": attention.op_counts(shapes) + (family.attention_layout_counts(own, batch)
                                                             if attention.keeps_dense else oc.NONE),
                 "qkv": registry.get("linear", block.qkv).op_counts(shapes, shapes.linear_layers("qkv")),
                 "proj": registry.get("linear", block.proj).op_counts(full, full.linear_layers("proj"))}
        mlp = registry.get("mlp", block.mlp)
        layout = family.mlp_layout_counts(own, batch)
        if not mlp.routed:
            parts["mlp"] = mlp.op_counts(full, full.linear_layers("mlp")) + layout
        else:
            parts.update(_moe_counts(block, i, full, layout, routing.get(i)))
        blocks.append(parts)
    return ModelCounts(family.frame_counts(dims, batch), tuple(blocks))


def _moe_load(block: BlockConfig, index: int, shapes: registry.Shapes,
              routing: MoELoad | Sequence[float] | None) -> MoELoad:
    """The load an MoE block's experts are priced at: measured, given as shares, or equal shares."""
    assert block.moe is not None
    kinds = block.moe.experts
    if routing is None:
        routing = [1.0 / len(kinds)] * len(kinds)
    load = (routing if isinstance(routing, MoELoad)
            else MoELoad.at_shares(routing, block.moe.top_k * shapes.tokens))
    if len(load.histograms) != len(kinds):
        raise ValueError(f"block {index}: an MoE load of {len(load.histograms)} experts for experts {list(kinds)}")
    return load


def _moe_counts(block: BlockConfig, index: int, shapes: registry.Shapes, layout: oc.OpCounts,
                routing: MoELoad | Sequence[float] | None) -> dict[str, oc.OpCounts]:
    load = _moe_load(block, index, shapes, routing)
    kinds, top_k = block.moe.experts, block.moe.top_k
    router = registry.get("mlp", block.mlp).op_counts(shapes, ((shapes.rows, len(kinds), top_k),))
    parts = {"router": router}
    for e, kind in enumerate(kinds):
        expert = registry.get("expert", kind)

        def count(rows: int, expert=expert) -> oc.OpCounts:
            at = replace(shapes, batch=1, tokens=rows)
            return expert.op_counts(at, at.linear_layers("mlp")) + layout

        parts[f"expert{e}:{kind}"] = _expected_expert(count, load, e, shapes.batch)
    return parts


@dataclass(frozen=True)
class EnergyEstimate:
    """Energy of one forward pass (µJ), split into compute and memory, per block, with the counts it comes from;
    under the accelerator model also its latency (ms) and every layer it priced."""

    table: str  # the unit-cost table, or "accelerator"
    compute_uj: float
    memory_uj: float
    frame_uj: tuple[float, float]  # (compute, memory)
    blocks_uj: tuple[tuple[float, float], ...]  # per block (compute, memory)
    counts: oc.OpCounts
    batch: int = 1
    model: str = DEFAULT_MODEL
    latency_ms: float | None = None  # the accelerator model's latency
    layers: tuple[tuple[str, str, Layer], ...] = ()  # the accelerator model's: (block index or "frame", part, layer)

    @property
    def total_uj(self) -> float:
        return self.compute_uj + self.memory_uj

    @property
    def note(self) -> str:
        return NOTES[self.model]

    def to_dict(self) -> dict[str, Any]:
        """What a trial stores (``energy_breakdown``): the model and table, the totals and per block."""
        out = {"model": self.model, "table": self.table, "batch": self.batch, "energy_uj": round(self.total_uj, 6),
               "compute_uj": round(self.compute_uj, 6), "memory_uj": round(self.memory_uj, 6),
               "frame": {"compute_uj": round(self.frame_uj[0], 6), "memory_uj": round(self.frame_uj[1], 6)},
               "blocks": [{"compute_uj": round(c, 6), "memory_uj": round(m, 6)} for c, m in self.blocks_uj],
               "note": self.note}
        if self.latency_ms is not None:
            out["accelerator_latency_ms"] = round(self.latency_ms, 6)
        return out

    def layer_rows(self) -> list[dict[str, Any]]:
        """The accelerator model's layers, one dict each: where, the layer, how often it runs and its price."""
        rows = []
        for where, part, layer in self.layers:
            price = accelerator.price_layer(layer.shape)
            rows.append({"block": where, "part": part, "layer": layer.describe(), "times": round(layer.times, 6),
                         **({"priced_as": price.priced_as.describe()} if price.priced_as != layer.shape else {}),
                         **{k: round(v, 6) if isinstance(v, float) else v for k, v in price.to_dict().items()}})
        return rows


def estimate(config: ArchConfig, table: UnitCosts | EnergySettings | None = None, batch: int = 1,
             routing: Mapping[int, MoELoad | Sequence[float]] | None = None) -> EnergyEstimate:
    """The energy of one forward pass of ``batch`` images of ``config`` under the study's energy settings (or a
    unit-cost table; default: the op-count model with :data:`DEFAULT_TABLE`), MoE experts at ``routing`` (see
    :func:`model_counts`)."""
    if isinstance(table, EnergySettings):
        if table.model == accelerator.NAME:
            return accelerator_estimate(config, batch, routing)
        table = table.table
    table = table or TABLES[DEFAULT_TABLE]
    counts = model_counts(config, batch, routing)
    frame = table.price(counts.frame)
    blocks = tuple(tuple(map(sum, zip(*(table.price(c) for c in parts.values())))) for parts in counts.blocks)
    compute = frame[0] + sum(b[0] for b in blocks)
    memory = frame[1] + sum(b[1] for b in blocks)
    return EnergyEstimate(table.name, compute / 1e6, memory / 1e6, (frame[0] / 1e6, frame[1] / 1e6),
                          tuple((c / 1e6, m / 1e6) for c, m in blocks), counts.total, batch)


def model_layers(config: ArchConfig, batch: int = 1,
                 routing: Mapping[int, MoELoad | Sequence[float]] | None = None
                 ) -> tuple[list[Layer], list[dict[str, list[Layer]]]]:
    """The layers the accelerator model prices in one forward pass of ``batch`` images: the frame's, and per block
    each part's. An MoE expert's layers run at the token count its batch sends it when it runs (the expectation over
    ``routing``, rounded), ``times`` the share of passes it runs in."""
    dims = ModelDims.of(config.model)
    family = family_for(config.model)
    routing = routing or {}
    blocks = []
    for i, (block, own) in enumerate(zip(config.blocks, dims.blocks)):
        attention = registry.get("attention", block.attention)
        shapes = block_shapes(own, batch, block.attention)
        full = replace(shapes, kv_tokens=None)
        parts = {"attention": attention.accelerator_layers(shapes) + (
                     family.attention_layout_layers(own, batch) if attention.keeps_dense else []),
                 "qkv": registry.get("linear", block.qkv).accelerator_layers(shapes, shapes.linear_layers("qkv")),
                 "proj": registry.get("linear", block.proj).accelerator_layers(full, full.linear_layers("proj"))}
        mlp = registry.get("mlp", block.mlp)
        layout = family.mlp_layout_layers(own, batch)
        if not mlp.routed:
            parts["mlp"] = mlp.accelerator_layers(full, full.linear_layers("mlp")) + layout
        else:
            parts.update(_moe_layers(block, i, full, layout, routing.get(i)))
        blocks.append(parts)
    return family.frame_layers(dims, batch), blocks


def _moe_layers(block: BlockConfig, index: int, shapes: registry.Shapes, layout: list[Layer],
                routing: MoELoad | Sequence[float] | None) -> dict[str, list[Layer]]:
    load = _moe_load(block, index, shapes, routing)
    kinds, top_k = block.moe.experts, block.moe.top_k
    parts = {"router": registry.get("mlp", block.mlp).accelerator_layers(shapes, ((shapes.rows, len(kinds), top_k),))}
    for e, kind in enumerate(kinds):
        dist = load.batch_counts(e, shapes.batch)
        runs = float(1.0 - dist[0])
        if runs <= 0:
            parts[f"expert{e}:{kind}"] = []
            continue
        rows = max(1, int(float(sum(c * p for c, p in enumerate(dist))) / runs + 0.5))
        at = replace(shapes, batch=1, tokens=rows)
        expert = registry.get("expert", kind).accelerator_layers(at, at.linear_layers("mlp"))
        parts[f"expert{e}:{kind}"] = al.times(expert + layout, runs)
    return parts


def accelerator_estimate(config: ArchConfig, batch: int = 1,
                         routing: Mapping[int, MoELoad | Sequence[float]] | None = None) -> EnergyEstimate:
    """The energy of one forward pass under the accelerator model (:mod:`latency_model.accelerator`): compute is the
    layers' arithmetic, memory every access of their tilings (DRAM, buffer, network on chip, register files)."""
    frame, blocks = model_layers(config, batch, routing)

    def priced(layers: list[Layer]) -> tuple[float, float, float]:
        energy, compute, latency = accelerator.total(layers)
        return compute, energy - compute, latency

    frame_cost = priced(frame)
    block_costs = [priced([layer for part in parts.values() for layer in part]) for parts in blocks]
    compute = frame_cost[0] + sum(b[0] for b in block_costs)
    memory = frame_cost[1] + sum(b[1] for b in block_costs)
    latency = frame_cost[2] + sum(b[2] for b in block_costs)
    layers = tuple(("frame", "frame", layer) for layer in frame) + tuple(
        (str(i), part, layer) for i, parts in enumerate(blocks) for part, part_layers in parts.items()
        for layer in part_layers)
    return EnergyEstimate(accelerator.NAME, compute, memory, frame_cost[:2], tuple(b[:2] for b in block_costs),
                          model_counts(config, batch, routing).total, batch, accelerator.NAME, latency, layers)


def check_priceable(space, where: str = "space", model: str = DEFAULT_MODEL) -> None:
    """Refuse (one ConfigError) a space that offers a primitive the energy ``model`` cannot price (it declares no
    operation counts, or no accelerator layers), or a model family that does not count (list) its frame: energy_uj
    could not price every architecture of it."""
    layers = model == accelerator.NAME
    what, field_name = (("accelerator layers", "Primitive.accelerator") if layers
                        else ("operation counts", "Primitive.counts"))

    def priceable(primitive) -> bool:
        return (primitive.accelerator if layers else primitive.counts) is not None

    for choices in space.blocks:
        for key, slot in registry.BLOCK_KEYS.items():
            for name in getattr(choices, key):
                if not priceable(registry.get(slot, name)):
                    raise ConfigError(f"{where}.{key}", f"{slot} {name!r} declares no {what} ({field_name}), so "
                                                        f"energy model {model!r} cannot price it: remove energy_uj "
                                                        "from objectives.metrics or the choice from the space")
    for name in set(space.moe_experts):
        if not priceable(registry.get("expert", name)):
            raise ConfigError(f"{where}.moe.experts", f"expert {name!r} declares no {what} ({field_name}), so "
                                                      f"energy model {model!r} cannot price it")
    family = family_for(space.model)
    try:
        (family.frame_layers if layers else family.frame_counts)(ModelDims.of(space.model), 1)
    except NotImplementedError as e:
        raise ConfigError("model.name", f"{e}, so energy_uj cannot price it") from None


__all__ = ["DEFAULT_MODEL", "DEFAULT_TABLE", "EnergyEstimate", "EnergySettings", "MODELS", "ModelCounts", "NOTE", "NOTES",
           "TABLES", "UnitCosts", "accelerator_estimate", "check_priceable", "estimate", "model_counts", "model_layers"]
