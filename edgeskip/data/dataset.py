"""In-memory labelled image sets (uint8 NHWC), the currency of the data layer."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from edgeskip.errors import DataError

__all__ = ["ImageDataset", "DatasetSplits"]


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Decoded images ``(N, H, W, C)`` uint8 with int64 labels in ``[0, len(classes))``."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 NHWC, got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise DataError(f"{len(self.images)} images but labels of shape {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError(f"labels outside [0, {len(self.classes)})")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self.images.shape[1:]
        return int(h), int(w), int(c)

    def subset(self, indices: npt.ArrayLike) -> ImageDataset:
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(self.images[idx], self.labels[idx], self.classes)

    def per_class(self, limit: int) -> ImageDataset:
        """The first ``limit`` images of every class, in their stored order."""
        keep = np.concatenate([np.flatnonzero(self.labels == k)[:limit] for k in range(len(self.classes))])
        return self.subset(np.sort(keep))


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    name: str
    train: ImageDataset
    test: ImageDataset
