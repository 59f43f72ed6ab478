"""Model families: one adapter per timm family says where its searchable blocks are, what sizes each block runs at,
how its layers map onto the primitives, and how to cut it down for timing. Everything that needs to know a model's
layout asks its family.

Supported:

- ``vit``: timm ``VisionTransformer`` and its subclasses (ViT, DeiT), every block at one size;
- ``pvt_v2``: timm ``PyramidVisionTransformerV2`` (``pvt_v2_b0`` ... ``b5``, ``linear=True`` too), blocks indexed in
  order over its stages, each stage at its own size.

A new family is one :class:`Family` subclass registered with :func:`register` (see ``vit.py``, ``pvt_v2.py``).
"""

from .base import (BlockDims, Family, ModelDims, UnsupportedModelError, create_model, family_for, family_named,
                   family_of, names, register)

# The built-in families register themselves, in this order (the order errors list them in).
from . import vit  # noqa: E402, I001
from . import pvt_v2  # noqa: E402

__all__ = ["BlockDims", "Family", "ModelDims", "UnsupportedModelError", "create_model", "family_for", "family_named",
           "family_of", "names", "pvt_v2", "register", "vit"]
