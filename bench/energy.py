"""Energy per image of DeiT-Tiny and PVTv2-b0 at 224 x 224 (batch 1), from operation counts, under each built-in
unit-cost table: the all-dense model, the paper's allocation (additive attention and a dense + shift MoE in every
block, experts at equal shares), every linear layer as a shift layer, and additive attention everywhere.

Counts are exact and machine-independent (no timing): this bench runs anywhere in seconds.

    python bench/energy.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

from latency_model.energy import TABLES, estimate  # noqa: E402
from search_spaces import ArchConfig, BlockConfig, ModelSpec, MoEConfig  # noqa: E402
from search_spaces.families import ModelDims  # noqa: E402

MODELS = {
    "deit_tiny 224": ModelSpec("deit_tiny_patch16_224", {"num_classes": 1000}),
    "pvt_v2_b0 224": ModelSpec("pvt_v2_b0", {"num_classes": 1000}),
}
ALLOCATIONS = {
    "dense": BlockConfig(),
    "paper (additive + MoE dense/shift)": BlockConfig("additive", "dense", "dense", "moe", MoEConfig(1, ("dense", "shift"))),
    "all-shift linears": BlockConfig("msa", "shift", "shift", "shift"),
    "additive attention": BlockConfig("additive", "dense", "dense", "dense"),
}

NOTES = """\
Energy of one 224 x 224 image (batch 1), estimated from operation counts (`latency_model.energy`): every op a forward
pass executes, priced per op and type, plus weights read once from DRAM at their stored width (fp32 32 bits, a shift
weight 5 bits) and every op's activations read and written in an on-chip buffer. An MoE's experts are counted at
equal token shares, each expert's weights read once. `saving` is against the dense model under the same table;
`compute saving` leaves memory out. These are accelerator estimates, not measurements of any machine.

**The paper's figure and why ours differs.** ShiftAddViT reports "up to 42.9 % energy savings" (abstract,
arXiv 2306.06446). Its released `pvt/cal_energy.py` hooks the conv, linear, matmul, matadd and shift layers of a
PVT, and prices each with `hw_utils.get_OPs_HW_metric`: a brute-force tiling search over an Eyeriss-like
row-stationary accelerator (16 x 12 PEs, register files, a 64K-word global buffer), whose chosen tiling (it minimizes
normalized energy plus latency) sets how often each input, weight and output word moves between DRAM, the global
buffer, the network on chip and the register files; the unit costs are those of `hw_utils.get_unit_energy`
(the `shiftaddnas` table here), at 32 bits for every layer. Norms, GELU, softmax and the residual additions are
not counted. This product counts every op (norms, softmax, GELU, quantization, the router), and its memory model has
no tiling: each weight is read from DRAM once and activations never leave the chip, which is the lower bound of the
accelerator model's traffic. So the two agree on what a shift or an addition saves in arithmetic (the compute
columns) and differ in memory: in the paper's model re-fetched weights and spilled activations make memory a larger,
tiling-dependent share; here memory is the once-per-inference weight traffic, which is why shift layers (5-bit
weights) save most of it and an MoE that reads two experts' weights spends more than the dense MLP.
"""


def rows() -> list[dict]:
    out = []
    for model_name, spec in MODELS.items():
        depth = len(ModelDims.of(spec).blocks)
        dense_by_table = {}
        for allocation, block in ALLOCATIONS.items():
            config = ArchConfig(spec, (block,) * depth)
            for table_name, table in TABLES.items():
                e = estimate(config, table)
                dense = dense_by_table.setdefault(table_name, e)
                ops = e.counts.ops
                out.append({
                    "model": model_name, "allocation": allocation, "table": table_name,
                    "energy_uj": round(e.total_uj, 2), "compute_uj": round(e.compute_uj, 2),
                    "memory_uj": round(e.memory_uj, 2),
                    "saving": f"{1 - e.total_uj / dense.total_uj:.1%}",
                    "compute saving": f"{1 - e.compute_uj / dense.compute_uj:.1%}",
                    "mult.fp32 (M)": round(ops.get("mult.fp32", 0) / 1e6, 2),
                    "add.fp32 (M)": round(ops.get("add.fp32", 0) / 1e6, 2),
                    "shift.int32 (M)": round(ops.get("shift.int32", 0) / 1e6, 2),
                    "add.int32 (M)": round(ops.get("add.int32", 0) / 1e6, 2),
                    "weights MB": round(e.counts.weight_bytes / 1e6, 2),
                    "activations MB": round(e.counts.activation_bytes / 1e6, 2),
                })
    return out


if __name__ == "__main__":
    json_path, md_path = write("energy", rows(), NOTES)
    print(md_path.read_text())
