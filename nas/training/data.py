"""Datasets: ``shapes`` is generated here (:mod:`nas.training.shapes_dataset`: 10 classes of 32x32 glyph scenes,
seeded, the quick-start's task); ``digits`` ships offline with scikit-learn (1,797 real 8x8 handwritten digits, upsampled here);
``imagefolder`` reads the user's images from ``train/<class>/`` and ``val/<class>/`` folders.

Every study sees three disjoint splits (:class:`Splits`):

- ``train``: what every model is trained on (the teacher, each trial's fine-tune, ``nas finetune``);
- ``search``: carved from the training data (``data.search_fraction``, stratified by class, seeded): the accuracy
  trials are scored, pruned and chosen on;
- ``test``: data no selection has seen, only ever reported: the held-out ``test_fraction`` of shapes and digits
  (stratified for shapes), an imagefolder's
  ``val/`` (the usual practice: search on a held-out part of train, report on val).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision import datasets, transforms

from kernels.lazy import lazy_import
from search_spaces.config import ConfigError

from ..study import DEFAULT_IMAGES
from .shapes_dataset import IMG_SIZE, generate

sklearn_datasets = lazy_import("sklearn.datasets")

if TYPE_CHECKING:
    from ..study import DataSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class Splits(NamedTuple):
    train: Dataset
    search: Dataset
    test: Dataset


def stratified_split(labels: np.ndarray, fraction: float, seed: int, where: str = "data.search_fraction"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(kept, carved)``: ``fraction`` of the items carved out with every class in proportion (seeded);
    ``where`` is the study key named when the fraction leaves one part empty.

    The same indices as scikit-learn's ``train_test_split(..., stratify=labels, random_state=seed)`` (tested against
    it), computed with numpy alone: a GPU machine that carries no scikit-learn splits a study's data as this one."""
    counts = np.bincount(labels)
    classes = int((counts > 0).sum())
    carved_count = int(np.ceil(fraction * len(labels)))
    kept_count = len(labels) - carved_count
    if kept_count < 1 or carved_count < 1:
        raise ConfigError(where, f"{fraction} of {len(labels)} images leaves no image for one of the two parts")
    rng = np.random.RandomState(seed)
    # stratify when every class can give an image to both parts (a class of one image cannot)
    if counts[counts > 0].min() < 2 or classes > min(carved_count, kept_count):
        order = rng.permutation(len(labels))
        return np.sort(order[carved_count:]), np.sort(order[:carved_count])
    present, inverse, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(class_counts)[:-1])
    kept_per_class = _approximate_mode(class_counts, kept_count, rng)
    carved_per_class = _approximate_mode(class_counts - kept_per_class, carved_count, rng)
    kept: list[int] = []
    carved: list[int] = []
    for i in range(len(present)):
        shuffled = members[i].take(rng.permutation(class_counts[i]), mode="clip")
        kept.extend(shuffled[: kept_per_class[i]])
        carved.extend(shuffled[kept_per_class[i]: kept_per_class[i] + carved_per_class[i]])
    return np.sort(rng.permutation(kept)), np.sort(rng.permutation(carved))


def _approximate_mode(class_counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of ``draws`` each class gets: its floored share, then one more for the largest remainders, ties
    broken at random (scikit-learn's ``_approximate_mode``, draw for draw)."""
    continuous = class_counts / class_counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), need)
            floored[rng.choice(tied, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return floored.astype(int)


def digits(img_size: int = 32, split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> TensorDataset:
    """The scikit-learn digits as ``[N, 3, img_size, img_size]`` float images (in [-1, 1]) and labels.

    ``train`` / ``test`` are deterministic: a fixed permutation by ``seed``, the last ``test_fraction`` is test.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    data = sklearn_datasets.load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in [0, 1]
    images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(data.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    n_test = int(round(len(labels) * test_fraction))
    chosen = {"train": order[: len(order) - n_test], "test": order[len(order) - n_test :], "all": order}[split]
    return TensorDataset(images[chosen], labels[chosen])


def shapes(img_size: int = 32, images: int = DEFAULT_IMAGES, test_fraction: float = 0.2, seed: int = 0
           ) -> tuple[TensorDataset, TensorDataset]:
    """The generated shapes task (:func:`nas.training.shapes_dataset.generate`) as ``(pool, test)``:
    ``[N, 3, img_size, img_size]`` images in [-1, 1] (resized from 32x32 when ``img_size`` differs) and labels; the test set is a stratified
    ``test_fraction``, the pool is what train and search are carved from."""
    pixels, labels = generate(images, seed)
    tensor = torch.from_numpy(pixels)
    if img_size != IMG_SIZE:
        tensor = F.interpolate(tensor, size=(img_size, img_size), mode="nearest-exact")
    pool, test = stratified_split(labels, test_fraction, seed, "data.test_fraction")
    targets = torch.from_numpy(labels)
    return (TensorDataset(tensor[pool], targets[pool]), TensorDataset(tensor[test], targets[test]))


def _rgb(image):
    return image.convert("RGB")


def image_folder(root: str | Path, split: str, img_size: int) -> Dataset:
    """``root/<split>/<class>/<image>`` as a torchvision ImageFolder resized to ``img_size``, in [-1, 1].

    Raises:
        ConfigError: the folder is missing, has fewer than two classes, or a class has no images.
    """

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


def labels_of(dataset: Dataset) -> np.ndarray:
    """The class label of every item, read without loading images."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    return np.asarray(dataset.targets)


def class_count(dataset: Dataset) -> int:
    if isinstance(dataset, Subset):
        return class_count(dataset.dataset)
    if isinstance(dataset, TensorDataset):
        return int(dataset.tensors[1].max()) + 1
    return len(dataset.classes)


def load(spec: "DataSpec", img_size: int, num_classes: int) -> Splits:
    """The train, search and test splits of a study, checked against the model's class count."""
    if spec.source == "shapes":
        pool, test = shapes(img_size, spec.images or DEFAULT_IMAGES, spec.test_fraction, spec.seed)
    elif spec.source == "digits":
        pool, test = (digits(img_size, split, spec.test_fraction) for split in ("train", "test"))
    else:
        pool, test = (image_folder(spec.path, split, img_size) for split in ("train", "val"))
        if pool.classes != test.classes:
            raise ConfigError("data.path", f"train/ and val/ have different classes: {pool.classes} vs "
                                           f"{test.classes}")
    kept, carved = stratified_split(labels_of(pool), spec.search_fraction, spec.seed)
    classes = class_count(pool)
    if classes > num_classes:
        raise ConfigError("model.kwargs.num_classes", f"the data has {classes} classes but the model outputs "
                                                      f"{num_classes}; set num_classes: {classes}")
    return Splits(Subset(pool, kept.tolist()), Subset(pool, carved.tolist()), test)
