"""In-memory labelled image sets (uint8 NHWC), the currency of the data layer."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from edgeskip.errors import DataError

__all__ = ["DatasetSplits", "ImageDataset"]


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

    def fitted(self, size: int) -> ImageDataset:
        """Every image fitted to ``size`` x ``size`` (:func:`edgeskip.imaging.fit_image`, as the runtime does)."""
        from edgeskip.imaging import fit_image

        if self.image_shape[:2] == (size, size):
            return self
        chunks = [fit_image(self.images[i : i + 1024], size) for i in range(0, len(self), 1024)]
        empty = np.zeros((0, size, size, self.image_shape[2]), np.uint8)
        return ImageDataset(np.concatenate(chunks) if chunks else empty, self.labels, self.classes)

    def per_class(self, limit: int) -> ImageDataset:
        """The first ``limit`` images of every class, in their stored order."""
        keep = np.concatenate([np.flatnonzero(self.labels == k)[:limit] for k in range(len(self.classes))])
        return self.subset(np.sort(keep))

    def halves(self) -> tuple[ImageDataset, ImageDataset]:
        """The first and the second half of every class (the smallest class sets the half's size).

        ``edgeskip search`` calibrates on the first half of the test split; what it reports and
        what the quickstart runs stay on the second, images the search never saw.
        """
        half = max(1, min(int((self.labels == k).sum()) for k in range(len(self.classes))) // 2)
        first = np.concatenate([np.flatnonzero(self.labels == k)[:half] for k in range(len(self.classes))])
        mask = np.ones(len(self), bool)
        mask[first] = False
        return self.subset(np.sort(first)), self.subset(np.flatnonzero(mask))

    def take(self, count: int) -> ImageDataset:
        """About ``count`` images spread evenly over the classes (the first of each), at most ``count``."""
        chosen = self.per_class(max(1, -(-count // len(self.classes))))
        return chosen.subset(np.arange(min(count, len(chosen))))


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    name: str
    train: ImageDataset
    test: ImageDataset
