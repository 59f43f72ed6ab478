"""Datasets: ``digits`` ships offline with scikit-learn (1,797 real 8x8 handwritten digits, upsampled here);
``imagefolder`` reads the user's images from ``train/<class>/`` and ``val/<class>/`` folders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from search_spaces.config import ConfigError

if TYPE_CHECKING:
    from .study import DataSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def digits(img_size: int = 32, split: str = "train", val_fraction: float = 0.2, seed: int = 0) -> TensorDataset:
    """The scikit-learn digits as ``[N, 3, img_size, img_size]`` float images (in [-1, 1]) and labels.

    The split is deterministic: a fixed permutation by ``seed``, the last ``val_fraction`` is val.
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


def _rgb(image):
    return image.convert("RGB")


def image_folder(root: str | Path, split: str, img_size: int) -> Dataset:
    """``root/<split>/<class>/<image>`` as a torchvision ImageFolder resized to ``img_size``, in [-1, 1].

    Raises:
        ConfigError: the folder is missing, has fewer than two classes, or a class has no images.
    """
    from torchvision import datasets, transforms

    folder = Path(root) / split
    if not folder.is_dir():
        raise ConfigError("data.path", f"{folder} is not a folder (an imagefolder needs train/ and val/ in {root})")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ConfigError("data.path", f"{folder} has {len(classes)} class folder(s); a classification task "
                                       "needs at least two (one subfolder per class)")
    for name in classes:
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in (folder / name).iterdir()):
            raise ConfigError("data.path", f"class folder {folder / name} has no images "
                                           f"({', '.join(IMAGE_SUFFIXES)})")
    transform = transforms.Compose([
        transforms.Lambda(_rgb),
        transforms.Resize((img_size, img_size)),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    return datasets.ImageFolder(str(folder), transform=transform, allow_empty=False)


def class_count(dataset: Dataset) -> int:
    if isinstance(dataset, TensorDataset):
        return int(dataset.tensors[1].max()) + 1
    return len(dataset.classes)


def load(spec: "DataSpec", img_size: int, num_classes: int) -> tuple[Dataset, Dataset]:
    """(train, val) datasets of a study, checked against the model's class count."""
    if spec.source == "digits":
        train, val = (digits(img_size, split, spec.val_fraction) for split in ("train", "val"))
    else:
        train, val = (image_folder(spec.path, split, img_size) for split in ("train", "val"))
        if train.classes != val.classes:
            raise ConfigError("data.path", f"train/ and val/ have different classes: {train.classes} vs {val.classes}")
    classes = class_count(train)
    if classes > num_classes:
        raise ConfigError("model.kwargs.num_classes", f"the data has {classes} classes but the model outputs "
                                                      f"{num_classes}; set num_classes: {classes}")
    return train, val
