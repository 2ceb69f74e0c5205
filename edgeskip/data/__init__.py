"""Datasets as uint8 arrays (torch-free): CIFAR-10 from a user's copy, the digits, and any image folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgeskip.data.cifar import CIFAR10_CLASSES, load_cifar10
from edgeskip.data.dataset import DatasetSplits, ImageDataset
from edgeskip.data.digits import load_digits
from edgeskip.data.folder import load_image_folder
from edgeskip.errors import DataError, UnknownNameError

if TYPE_CHECKING:
    from edgeskip.config import ViTConfig

__all__ = [
    "CIFAR10_CLASSES", "DATASETS", "DatasetSplits", "ImageDataset", "load_cifar10", "load_dataset", "load_dataset_for",
    "load_digits", "load_image_folder",
]

DATASETS = ("cifar10", "digits", "folder")


def load_dataset(
    name: str, data: str | Path | None = None, *, image_size: int | None = None, channels: int | None = None,
    classes: Sequence[str] | None = None, limit_per_class: int | None = None, progress: bool = False,
) -> DatasetSplits:
    """Load a dataset by name; ``data`` is the user's copy where one is needed (``folder``: the image folder).

    ``image_size`` fits every image to that size (the runtime's own rule, :func:`edgeskip.imaging.fit_image`),
    as a model of another input size needs; ``channels`` and ``classes`` are what the model expects, checked
    here so that a dataset that does not fit it is one clear error."""
    if name == "folder":
        if data is None:
            raise DataError("--dataset folder needs --data DIR (one sub-folder of images per class)")
        if image_size is None:
            raise DataError("an image folder is loaded at the model's input size: give image_size")
        splits = load_image_folder(data, image_size, channels=channels or 3, limit_per_class=limit_per_class,
                                   progress=progress)
    elif name == "digits":
        splits = load_digits()
        if limit_per_class is not None:
            splits = DatasetSplits(name, splits.train.per_class(limit_per_class), splits.test.per_class(limit_per_class))
    elif name == "cifar10":
        if data is None:
            raise DataError("cifar10 needs --data DIR (a CIFAR-10 copy; see the README)")
        splits = load_cifar10(data, limit_per_class=limit_per_class, progress=progress)
    else:
        raise UnknownNameError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    have = splits.train.image_shape
    if channels is not None and have[2] != channels:
        raise DataError(f"{name} images have {have[2]} channel(s), the model takes {channels}")
    if classes is not None and tuple(classes) != splits.train.classes:
        theirs = splits.train.classes
        raise DataError(f"the classes of {data or name} differ from the model's: {len(theirs)} "
                        f"({', '.join(theirs[:5])}{', ...' if len(theirs) > 5 else ''}) against {len(classes)} "
                        f"({', '.join(tuple(classes)[:5])}{', ...' if len(classes) > 5 else ''})")
    if image_size is not None and have[:2] != (image_size, image_size):
        splits = DatasetSplits(splits.name, splits.train.fitted(image_size), splits.test.fitted(image_size))
    return splits


def load_dataset_for(dataset: str, data: str | Path | None, config: ViTConfig, classes: Sequence[str], *,
                     limit_per_class: int | None = None, progress: bool = False) -> DatasetSplits:
    """``dataset`` as the model of a checkpoint or bundle takes it: at its input size and channels, with its
    classes (a dataset whose classes differ is one clear error)."""
    return load_dataset(dataset, data, image_size=config.image_size, channels=config.in_channels, classes=classes,
                        limit_per_class=limit_per_class, progress=progress)
