"""The multiplication-free primitives as torch modules (what each choice is named and how it is built and run:
:mod:`search_spaces.registry`)."""

from .attention import AdditiveAttention, LinearAttention, ProjectedAttention, binarize_ste
from .int8 import Int8Linear
from .moe import EXPERT_KINDS, MoEMlp, RouterStats, balance_loss, cv_squared, moe_aux_loss
from .shift import Shift16Linear, ShiftLinear, shift16_matmul, shift_matmul_int, shift_range, to_fixed_point

__all__ = [
    "AdditiveAttention",
    "EXPERT_KINDS",
    "Int8Linear",
    "LinearAttention",
    "MoEMlp",
    "ProjectedAttention",
    "RouterStats",
    "Shift16Linear",
    "ShiftLinear",
    "balance_loss",
    "binarize_ste",
    "cv_squared",
    "moe_aux_loss",
    "shift16_matmul",
    "shift_matmul_int",
    "shift_range",
    "to_fixed_point",
]
