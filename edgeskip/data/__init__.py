"""Datasets as uint8 arrays (torch-free): CIFAR-10 from a user's copy, the digits, and any image folder."""

from __future__ import annotations

from pathlib import Path

from edgeskip.data.cifar import CIFAR10_CLASSES, load_cifar10
from edgeskip.data.dataset import DatasetSplits, ImageDataset
from edgeskip.data.digits import load_digits
from edgeskip.data.folder import load_image_folder
from edgeskip.errors import DataError, UnknownNameError

__all__ = [
    "CIFAR10_CLASSES", "DATASETS", "DatasetSplits", "ImageDataset", "load_cifar10", "load_dataset", "load_digits",
    "load_image_folder",
]

DATASETS = ("cifar10", "digits")


def load_dataset(
    name: str, data: str | Path | None = None, *, limit_per_class: int | None = None, progress: bool = False
) -> DatasetSplits:
    """Load a dataset by name; ``data`` is the user's copy where one is needed."""
    if name == "digits":
        splits = load_digits()
        if limit_per_class is not None:
            splits = DatasetSplits(name, splits.train.per_class(limit_per_class), splits.test.per_class(limit_per_class))
        return splits
    if name == "cifar10":
        if data is None:
            raise DataError("cifar10 needs --data DIR (a CIFAR-10 copy; see the README)")
        return load_cifar10(data, limit_per_class=limit_per_class, progress=progress)
    raise UnknownNameError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
