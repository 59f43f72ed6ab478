import pytest
import torch

from search_spaces import ModelSpec

# A DeiT small enough that a forward and backward pass takes milliseconds.
TINY_KWARGS = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "num_classes": 10}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_spec() -> ModelSpec:
    return ModelSpec("deit_tiny_patch16_224", TINY_KWARGS)
