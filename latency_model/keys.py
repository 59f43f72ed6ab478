"""The names and keys that measurement rows, predictor files and profiling share: one definition each.

A row of the measurement table is an *op* at a *shape*: ``(op, variant, shape, dtype)``.

- Module ops (:class:`OpName`) are the parts a model runs, timed as torch modules (see :mod:`latency_model.decomposition`);
  an attention op's variant is ``<attention>/<qkv>/<proj>`` (:func:`attention_variant`), an MLP's its kind.
- Kernel ops are the TVM kernels, named ``tvm.<kernel>`` (:func:`kernel_op`), variant and dtype as in
  :class:`kernels.spec.KernelSpec`, shape ``{M, K, N}`` (:func:`kernel_shape`; ``B`` added for a batched one).
- Whole models are rows of their own, keyed ``("model", config JSON, batch)`` (:func:`model_key`).

Stored tables and predictor files hold these strings: changing one orphans what is stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from enum import StrEnum

KERNEL_PREFIX = "tvm."
MODEL = "model"


class OpName(StrEnum):
    """The module ops a model is composed of, and what each times."""

    FRAME = "module.frame"  # outside the blocks: patch embedding, class token and positions, final norm, head
    BLOCK_FRAME = "module.block_frame"  # a block's two layer norms and residual adds
    ATTENTION = "module.attention"  # a block's attention, variant attention_variant(...)
    MLP = "module.mlp"  # a dense or shift MLP, or one MoE expert at its token bucket
    MOE_ROUTER = "module.moe_router"  # an MoE block's routing and dispatch


def kernel_op(kernel: str) -> str:
    """The op name of a TVM kernel's rows: ``tvm.matmul``."""
    return f"{KERNEL_PREFIX}{kernel}"


def kernel_shape(spec) -> dict[str, int]:
    """The shape of a kernel row (a :class:`kernels.spec.KernelSpec`): ``{M, K, N}``, and ``B`` for a batch of
    products in one call."""
    shape = {"M": spec.M, "K": spec.K, "N": spec.N}
    return {**shape, "B": spec.batch} if spec.batch > 1 else shape


def is_kernel_op(op: str) -> bool:
    return op.startswith(KERNEL_PREFIX)


def attention_variant(attention: str, qkv: str, proj: str) -> str:
    """The variant of a ``module.attention`` row: ``additive/shift/dense``."""
    return f"{attention}/{qkv}/{proj}"


def split_attention_variant(variant: str) -> tuple[str, str, str]:
    """``(attention, qkv, proj)`` of an :func:`attention_variant` string."""
    parts = variant.split("/")
    if len(parts) != 3:
        raise ValueError(f"not an attention variant (attention/qkv/proj): {variant!r}")
    return parts[0], parts[1], parts[2]


Shape = Mapping[str, int] | Iterable[tuple[str, int]]


def shape_key(shape: Shape) -> str:
    """Canonical JSON of a shape: the same dims always give the same text, in the table and the predictor file."""
    return json.dumps({k: int(v) for k, v in sorted(dict(shape).items())}, separators=(",", ":"))


def measurement_key(op: str, variant: str, shape: Shape, dtype: str) -> tuple[str, str, str, str]:
    """What identifies a measured op: the same op at the same shape is the same row, whoever measured it."""
    return (str(op), variant, shape_key(shape), dtype)


def lookup_key(op: str, variant: str, shape: Shape, dtype: str) -> str:
    """A measurement key as one string, the key of a predictor file's lookup table."""
    return "|".join(measurement_key(op, variant, shape, dtype))


def parse_lookup_key(key: str) -> tuple[str, str, dict[str, int], str]:
    """``(op, variant, dims, dtype)`` of a :func:`lookup_key`."""
    op, variant, shape_text, dtype = key.split("|")
    return op, variant, json.loads(shape_text), dtype


# Dims only some families' ops have (PVTv2: an attention's reduction ratio R and pooled keys P, the grid G of an
# MLP's depthwise conv, X=1 for an MoE expert of such an MLP, which scatters its rows onto that grid, the stage count
# S of its frame): an op with them is another module than the same op without, and is fitted apart (one table
# holds the measurements of every family profiled on the device).
LAYOUT_DIMS = ("G", "P", "R", "S", "X")


def fitted_model_key(op: str, variant: str, dtype: str, shape: Shape = ()) -> str:
    """The key of an op's fitted latency model in a predictor file: one model over all its shapes of one layout
    (the :data:`LAYOUT_DIMS` the shape has, if any, end the key: ``module.mlp|dense|float32|G``)."""
    layout = ",".join(d for d in LAYOUT_DIMS if d in dict(shape))
    return f"{op}|{variant}|{dtype}" + (f"|{layout}" if layout else "")


def is_fitted_model_key(key: str) -> bool:
    """True for :func:`fitted_model_key` keys of a fit's accuracy table (the others are whole-model rows)."""
    return "|" in key


def model_key(config_json: str, batch: int) -> tuple[str, str, int]:
    """The row key of a whole model timed at a batch size."""
    return (MODEL, config_json, batch)


IN_SITU_PARTS = {"attention": "attn", "mlp": "mlp"}  # a block's parts timed in situ -> the sub-module that runs it


def part_name(block: int, part: str) -> str:
    """A block's part timed inside a whole model, as a row's ``parts_ms`` names it: ``"0.attention"``, ``"0.mlp"``."""
    return f"{block}.{part}"
