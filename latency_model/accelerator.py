"""Energy the way ShiftAddNAS and ShiftAddViT priced it: each layer on an Eyeriss-like row-stationary accelerator,
with a search over its loop tilings (``energy: {model: accelerator}``; the default is the operation-count model of
:mod:`latency_model.energy`).

A reimplementation, from its description and code, of the released model (GATECH-EIC/ShiftAddViT ``pvt/hw_utils.py``
at 5f0edd5d, the same file as ShiftAddNAS ``CV/retraining_hybrid/hw_utils.py``), which ``pvt/cal_energy.py`` calls on
every layer its forward hooks record (:mod:`search_spaces.accelerator_layers`):

- **Hardware.** 16 x 12 processing elements, per PE register files for inputs (12 words), weights (192 x 5) and
  partial sums (16), a global buffer of 64K words holding an input tile and a partial-sum tile (weights bypass it),
  250 MHz. 8-bit layers (``int8``) get twice the words and four times the PEs.
- **Tiling.** A layer of ``N`` inputs, ``C -> M`` channels, an ``H x W`` input grid, an ``E x F`` output grid and an
  ``R x S`` kernel is split ``N = N0·N3``, ``M = M0·M1·M2·M3``, ``C = C0·C1·C2`` (``C3 = 1``), ``E = E1·E3`` (``E1 >
  1`` for a conv); every ordered factorization is a candidate (:func:`tilings`, in the released enumeration order),
  those that fit the PEs, the register files and the buffer are kept.
- **Cost of a tiling.** How often each word moves between DRAM, the buffer, the network on chip and the register
  files follows from the tiling (:func:`_search`); each access costs a multiple of a MAC's 3.7 pJ per 16 bits (DRAM
  200 pJ, buffer 6 x 3.7, NoC 2 x 3.7, partial sums on the NoC 3.7, register file 3.7, weight register file 2 x 3.7),
  plus each MAC's compute at 32 bits (mult 3.7, add 0.9, shift 0.13 pJ; at 8 bits 0.2, 0.03, 0.024). Latency is the
  MACs over the PEs used, 4 ns a cycle.
- **The chosen tiling** minimizes ``(E − Emin)/Emax + (L − Lmin)/Lmax`` over the valid ones (the first in
  enumeration order on a tie): the layer's energy and latency are that tiling's.
- **Per kind.** ``FC`` and ``Conv`` compute with multiplications; ``Shift`` layers with shifts, their words 10 bits
  wide and their cycles 1.25 ns (the released ``(16 + 5) // 2`` bits and ``32 / bits`` speed-up); ``Add`` layers with
  additions, their inputs and weights on chip (no DRAM, buffer or NoC traffic for them).

What differs from running the released script, on purpose (``docs/energy.md``):

- A conv no tiling fits (DeiT's 16 x 16, stride-16 patch embedding: a 16-wide kernel row overflows the 12-word input
  register file; a depthwise conv over a prime number of tokens) is priced as the FC layer of its patches
  (``N·E·F`` rows of ``C·R·S -> M``): for stride = kernel that is the same layer; the released search raises on
  ``max([])``. :attr:`LayerPrice.priced_as` says so.
- Every layer is priced at its own shape. The released Add hook numbers its records by the matmul list
  (``len(list_matmul_ops) + 1``), so when no matmul runs every Add layer is priced at the first one's shape: the same
  on DeiT (one token count), not on a pyramid.
- The released total latency leaves out its elementwise ``Mul`` layers (their energy is counted); no primitive here
  records one, so the total is the same.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from search_spaces.accelerator_layers import Layer

NAME = "accelerator"
SOURCE = ("ShiftAddNAS / ShiftAddViT's released accelerator model (hw_utils.get_OPs_HW_metric): 16 x 12 PEs, "
          "64K-word buffer, 250 MHz, a tiling search per layer; DRAM 200, buffer 6 x 3.7, NoC 2 x 3.7, RF 3.7 pJ per "
          "16 bits; mult 3.7, add 0.9, shift 0.13 pJ at 32 bits")
NOTE = ("an estimate for an Eyeriss-like accelerator with a tiling search per layer (ShiftAddViT's released model), "
        "not a measurement of this machine")

PES = 16 * 12
INPUT_RF = 12  # words
WEIGHT_RF = 192 * 5
PSUM_RF = 16
BUFFER = 65536  # words: an input tile and a partial-sum tile
CYCLE_S = 1 / 250e6
SHIFT_WORD_BITS = (16 + 5) // 2  # the released model's shift-layer word

_COMPUTE_PJ = {32: {"mult": 3.7, "add": 0.9, "shift": 0.13}, 8: {"mult": 0.2, "add": 0.03, "shift": 0.024}}
_OPERATION = {"FC": "mult", "Conv": "mult", "Add": "add", "Shift": "shift"}


def _units(kind: str, bits: int) -> dict[str, float]:
    """mJ per MAC (``comp``) and per access of each level (per word of the layer's width), and s per cycle."""
    word = SHIFT_WORD_BITS if kind == "Shift" else bits
    scale = word / 16
    off_chip = 0.0 if kind == "Add" else 1.0  # an Add layer's inputs and weights are on chip
    return {"comp": _COMPUTE_PJ[bits][_OPERATION[kind]] / 1e9,
            "dram": off_chip * 200 / 1e9 * scale,
            "gb": off_chip * 6.0 / 1e9 * 3.7 * scale,
            "noc": off_chip * 2.0 / 1e9 * 3.7 * scale,
            "noc_psum": 1.0 / 1e9 * 3.7 * scale,
            "rf": 1.0 / 1e9 * 3.7 * scale,
            "rf_weight": 2.0 / 1e9 * 3.7 * scale,
            "cycle": CYCLE_S / (32 / word) if kind == "Shift" else CYCLE_S}


# ---- the candidates, in the released enumeration order -----------------------------------------------------------
def _prime_factors(n: int) -> list[int]:
    out, d = [], 2
    while n % d == 0:
        out.append(d)
        n //= d
    d = 3
    while d * d <= n:
        while n % d == 0:
            out.append(d)
            n //= d
        d += 2
    return out + ([n] if n > 1 else [])


@functools.lru_cache(maxsize=4096)
def _divisors(n: int) -> tuple[int, ...]:
    """The divisors of ``n`` in the order the released search tries them: products of its prime factors (ascending,
    with multiplicity), each factor taken before it is left out, first occurrence kept."""
    def products(x: int, rest: tuple[int, ...]) -> list[int]:
        if not rest:
            return [x]
        return list(dict.fromkeys(products(x * rest[0], rest[1:]) + products(x, rest[1:])))
    return tuple(products(1, tuple(_prime_factors(n)) or (1,)))


@functools.lru_cache(maxsize=4096)
def tilings(n: int, parts: int) -> tuple[tuple[int, ...], ...]:
    """Every ordered factorization of ``n`` into ``parts`` factors, innermost loop first, in the released order."""
    if parts == 1:
        return ((n,),)
    return tuple((d, *rest) for d in _divisors(n) for rest in tilings(n // d, parts - 1))


def _released_m_prefilter(candidates: tuple[tuple[int, ...], ...]) -> list[tuple[int, ...]]:
    """The released search drops ``M0 > 16`` candidates by removing them from the list it iterates over, which skips
    the candidate after each one removed: at 32 bits the register-file check drops the rest anyway; at 8 bits
    (``M0 <= 32`` fits) the survivors are candidates, so the same skipping is reproduced here."""
    out, i = list(candidates), 0
    while i < len(out):
        if out[i][0] > PSUM_RF:
            del out[i]
        i += 1
    return out


# ---- one layer ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerPrice:
    """A layer's price under its chosen tiling: energy (mJ, as the released model reports it) split by level,
    latency (s), and what was searched."""

    energy_mj: float
    latency_s: float
    compute_mj: float
    dram_mj: float
    buffer_mj: float
    noc_mj: float
    rf_mj: float
    tiling: tuple[tuple[str, int], ...]
    valid_tilings: int
    priced_as: Layer  # the layer itself, or the FC layer of a conv's patches when no tiling fits the conv

    def to_dict(self) -> dict[str, Any]:
        return {"energy_uj": self.energy_mj * 1e3, "latency_us": self.latency_s * 1e6,
                "compute_uj": self.compute_mj * 1e3, "dram_uj": self.dram_mj * 1e3, "buffer_uj": self.buffer_mj * 1e3,
                "noc_uj": self.noc_mj * 1e3, "rf_uj": self.rf_mj * 1e3, "tiling": dict(self.tiling),
                "valid_tilings": self.valid_tilings}


_TILING_KEYS = ("N0", "N3", "M0", "M1", "M2", "M3", "C0", "C1", "C2", "E1", "E3")
_CHUNK = 1 << 16  # candidates evaluated at once (a large layer's are split along N: bounded memory)


def _costs(layer: Layer, n0, n3, m0, m1, m2, m3, c0, c1, c2, e1, e3) -> tuple[np.ndarray, ...]:
    """Whether each candidate tiling fits, its energy (mJ), latency (s) and energy per level, over arrays of the
    factors that broadcast together (the released ``valid_tiling``, ``get_energy`` and ``get_latency``)."""
    bits = layer.bits
    mem, pes = (1, 1) if bits == 32 else (2, 4)  # an 8-bit layer: twice the words, four times the PEs
    n, c, m = layer.batch, layer.in_channels, layer.out_channels
    (h, w), (e, f) = layer.in_size, layer.out_size
    r = s = float(layer.kernel)
    stride = layer.stride
    u = _units(layer.kind, bits)
    c3 = 1
    valid = ((m1 * c1 * e1 * r < PES * pes) & (c0 * s < INPUT_RF * mem) & (m0 * c0 * s < WEIGHT_RF * mem)
             & (n0 * c1 * c0 * ((e1 - 1) * stride + r) * ((f - 1) * stride + s) + n0 * m2 * m1 * m0 * e1 * f
                < BUFFER * mem))
    ifmap, weight, ofmap = n * h * w * c, r * s * c * m, n * e * f * m
    macs = n * e * f * m * r * s * c
    dram_i, dram_w, dram_o = m3 * ifmap, n3 * e3 * weight, max(2 * c3 - 1, 1) * ofmap
    gb_i, gb_o = m3 * m2 * ifmap, np.maximum(2 * c3 * (c2 - 1), 1) * ofmap
    noc_i = m3 * m2 * m1 * r * e / h * ifmap
    noc_w = n3 * e3 * e1 * weight
    noc_o = np.maximum(c3 * c2 * (c1 * r - 1), 1) * ofmap
    rf_i = m3 * m2 * m1 * r * e / h * m0 * s * f / w * ifmap
    rf_w = n3 * e3 * e1 * f * n0 * weight
    rf_o = np.maximum(c3 * c2 * c1 * r * (c0 * s - 1) * 2, 1) * ofmap
    # summed in the released order: ties between candidates are broken on these exact values
    energy = (macs * u["comp"] + (dram_i + dram_w + dram_o) * u["dram"] + (gb_i + gb_o) * u["gb"]
              + (noc_i + noc_w) * u["noc"] + noc_o * u["noc_psum"] + (rf_i + rf_o) * u["rf"] + rf_w * u["rf_weight"])
    latency = n3 * n0 * m3 * m2 * m0 * c3 * c2 * c0 * e3 * f * s * u["cycle"]
    levels = (macs * u["comp"], (dram_i + dram_w + dram_o) * u["dram"],  # the DRAM -> buffer hop costs 0
              (gb_i + gb_o) * u["gb"], (noc_i + noc_w) * u["noc"] + noc_o * u["noc_psum"],
              (rf_i + rf_o) * u["rf"] + rf_w * u["rf_weight"])
    return valid, energy, latency, levels


def _search(layer: Layer) -> LayerPrice | None:
    """The released search over every candidate tiling of ``layer``, vectorized (one array entry per candidate, in
    the released loop order N, M, C, E; a large layer's in chunks along N); None when no tiling fits."""
    if layer.bits not in _COMPUTE_PJ:
        raise ValueError(f"the accelerator model prices 32- and 8-bit layers, not {layer.bits}-bit "
                         f"({layer.describe()})")
    fc = layer.kind == "FC" or layer.in_size == layer.out_size == (1, 1)
    psum_words = PSUM_RF * (1 if layer.bits == 32 else 2)
    n_t = np.array(tilings(layer.batch, 2), dtype=np.float64).reshape(-1, 2)
    m_t = np.array([t for t in _released_m_prefilter(tilings(layer.out_channels, 4)) if t[0] <= psum_words],
                   dtype=np.float64).reshape(-1, 4)
    c_t = np.array([t[:3] for t in tilings(layer.in_channels, 4) if t[3] == 1], dtype=np.float64).reshape(-1, 3)
    e_t = np.array([t for t in tilings(layer.out_size[0], 2) if fc or t[0] != 1], dtype=np.float64).reshape(-1, 2)
    if not (len(n_t) and len(m_t) and len(c_t) and len(e_t)):
        return None

    def along(table: np.ndarray, axis: int) -> list[np.ndarray]:  # each factor's column on its own grid axis
        shape = [1, 1, 1, 1]
        shape[axis] = -1
        return [column.reshape(shape) for column in table.T]

    rest = (*along(m_t, 1), *along(c_t, 2), *along(e_t, 3))
    per_n = len(m_t) * len(c_t) * len(e_t)
    step = max(1, _CHUNK // per_n)
    energies, latencies, where = [], [], []
    for first in range(0, len(n_t), step):
        valid, energy, latency, _ = _costs(layer, *along(n_t[first:first + step], 0), *rest)
        valid = np.broadcast_to(valid, (min(step, len(n_t) - first), len(m_t), len(c_t), len(e_t)))
        energies.append(np.broadcast_to(energy, valid.shape)[valid])
        latencies.append(np.broadcast_to(latency, valid.shape)[valid])
        where.append(np.flatnonzero(valid.ravel()) + first * per_n)
    energy, latency, where = (np.concatenate(x) for x in (energies, latencies, where))
    if not len(energy):
        return None
    score = (energy - energy.min()) / energy.max() + (latency - latency.min()) / latency.max()
    best = int(np.argmin(score))  # the first minimum, as the released strict < keeps it
    i, j, k, q = np.unravel_index(where[best], (len(n_t), len(m_t), len(c_t), len(e_t)))
    tiling = (*n_t[i], *m_t[j], *c_t[k], *e_t[q])
    _, chosen_energy, chosen_latency, levels = _costs(layer, *tiling)
    assert chosen_energy == energy[best] and chosen_latency == latency[best]
    return LayerPrice(float(chosen_energy), float(chosen_latency), *map(float, levels),
                      tuple(zip(_TILING_KEYS, map(int, tiling))), len(energy), layer)


def patches_fc(layer: Layer) -> Layer:
    """A conv as the FC layer of its patches: ``N·E·F`` rows of ``C·R·S -> M``."""
    (e, f) = layer.out_size
    return Layer(layer.kind if layer.kind != "Conv" else "FC", layer.batch * e * f,
                 round(layer.in_channels * layer.kernel ** 2), layer.out_channels, bits=layer.bits)


@functools.lru_cache(maxsize=8192)
def price_layer(layer: Layer) -> LayerPrice:
    """One run of ``layer`` under its chosen tiling (cached per shape); a conv no tiling fits, as its patches' FC."""
    layer = layer.shape
    found = _search(layer)
    if found is None:
        fallback = patches_fc(layer)
        found = _search(fallback)
        if found is None:  # an FC layer always has a tiling (all factors 1 but M3 = M)
            raise ValueError(f"no tiling of {layer.describe()} fits the accelerator")
    return found


def total(layers: Iterable[Layer]) -> tuple[float, float, float]:
    """``(energy µJ, compute µJ, latency ms)`` of layers, each counted ``times`` times."""
    energy = compute = latency = 0.0
    for layer in layers:
        price = price_layer(layer.shape)
        energy += price.energy_mj * layer.times
        compute += price.compute_mj * layer.times
        latency += price.latency_s * layer.times
    return energy * 1e3, compute * 1e3, latency * 1e3


__all__ = ["LayerPrice", "NAME", "NOTE", "SOURCE", "patches_fc", "price_layer", "tilings", "total"]
