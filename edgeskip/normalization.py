"""Per-dataset normalisation constants and the torch-free preprocessing they drive.

The constants are stored with every checkpoint (and later every bundle) so that the
on-device runtime preprocesses exactly as training did.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.errors import ConfigError, DataError
from edgeskip.registry import Registry

__all__ = ["Normalization", "NORMALIZATIONS", "get_normalization", "preprocess"]


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Channel-wise ``(x / 255 - mean) / std`` applied to uint8 images."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ConfigError("normalisation mean and std must have the same, non-zero length")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"normalisation std must be positive, got {self.std}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        try:
            return cls(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid normalisation {data!r}: {exc}") from None


NORMALIZATIONS: Registry[Normalization] = Registry("normalisation")
# CIFAR-10/100 and Tiny-ImageNet: the constants in common use by CIFAR ViT training code
# (CIFAR-10 std 0.2023/0.1994/0.2010 as given in the edgeskip issue tracker).
NORMALIZATIONS.register("cifar10", Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)))
NORMALIZATIONS.register("cifar100", Normalization((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)))
NORMALIZATIONS.register("tiny-imagenet", Normalization((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)))
# scikit-learn digits rescaled from 0..16 to 0..255: mean/std over all 1,797 images,
# computed with edgeskip.data.digits.load_digits (see tests/test_normalization.py).
NORMALIZATIONS.register("digits", Normalization((0.3053,), (0.3759,)))
# A user's own image folder, trained from scratch: ImageNet's constants (timm's IMAGENET_DEFAULT_*), or the
# middle of the range for grey images. A pretrained model brings its own (edgeskip.models.adapters).
NORMALIZATIONS.register("imagenet", Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
NORMALIZATIONS.register("grey", Normalization((0.5,), (0.5,)))


def get_normalization(dataset: str, channels: int | None = None) -> Normalization:
    """The constants of ``dataset``; an image ``folder`` takes ImageNet's (``channels`` 1: 0.5 / 0.5)."""
    if dataset == "folder":
        return NORMALIZATIONS.get("grey" if channels == 1 else "imagenet")
    return NORMALIZATIONS.get(dataset)


def preprocess(images: npt.ArrayLike, norm: Normalization) -> npt.NDArray[np.float32]:
    """uint8 images (HWC or NHWC) -> normalised float32 NCHW, as training saw them."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise DataError(f"preprocess expects uint8 images, got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise DataError(f"preprocess expects HWC or NHWC images, got shape {arr.shape}")
    if arr.shape[-1] != norm.channels:
        raise DataError(f"expected {norm.channels} channel(s) in the last axis, got shape {arr.shape}")
    mean = np.asarray(norm.mean, dtype=np.float32)
    scale = np.float32(1.0 / 255.0) / np.asarray(norm.std, dtype=np.float32)
    out = arr.astype(np.float32) * scale - mean / np.asarray(norm.std, dtype=np.float32)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
