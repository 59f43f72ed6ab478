"""Datasets. ``digits`` ships offline with scikit-learn: 1,797 real 8x8 handwritten digits, upsampled here."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset


def digits(img_size: int = 32, split: str = "train", val_fraction: float = 0.2, seed: int = 0) -> TensorDataset:
    """The scikit-learn digits as ``[N, 3, img_size, img_size]`` float images (zero mean, unit range) and labels.

    The split is stratified-free but deterministic: a fixed permutation by ``seed``, the last ``val_fraction`` is val.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in [0, 1]
    images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(data.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    n_val = int(round(len(labels) * val_fraction))
    chosen = {"train": order[: len(order) - n_val], "val": order[len(order) - n_val :], "all": order}[split]
    return TensorDataset(images[chosen], labels[chosen])
