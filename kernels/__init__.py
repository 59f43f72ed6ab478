"""How the primitives run fast: TVM definitions of matmul, matshift and matadd, MetaSchedule tuning with a cache,
timing (local or over RPC), and a DLPack bridge that runs a reparameterized model's layers on the kernels.

This package is the only place that talks to TVM.
"""

from .spec import KernelError, KernelSpec, variants

__all__ = ["KernelError", "KernelSpec", "variants"]
