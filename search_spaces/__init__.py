"""What can be searched: the primitives, the architecture type, the search space and the reparameterization."""

from . import builtins, registry, reparam  # builtins: importing registers the built-in primitives
from .config import ArchConfig, BlockConfig, ConfigError, ModelSpec, MoEConfig
from .reparam import UnsupportedModelError, build_model, create_model
from .space import BlockChoices, SearchSpace

__all__ = [
    "ArchConfig",
    "BlockChoices",
    "BlockConfig",
    "ConfigError",
    "ModelSpec",
    "MoEConfig",
    "SearchSpace",
    "UnsupportedModelError",
    "build_model",
    "create_model",
    "registry",
    "reparam",
]
