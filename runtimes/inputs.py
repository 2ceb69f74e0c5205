"""What an application passes to the runtime, turned into the model's input (numpy only).

Accepted, as an application has them:

* ``uint8`` images, channels last: one image ``(H, W, C)`` or a batch ``(B, H, W, C)``
  (``(H, W)`` / ``(B, H, W)`` for a one-channel model). When ``H, W`` differ from the model's
  size they are fitted to it (:func:`fit_image`: the shorter side resized to the model's size,
  bilinear with PIL's antialiasing when shrinking, then the centre cropped square), then scaled and
  normalised exactly as training did (:func:`edgeskip.normalization.preprocess`).
* floating-point tensors already normalised as the model expects, channels first: ``(C, H, W)``
  or ``(B, C, H, W)`` (what :func:`edgeskip.preprocess` returns); resized when needed.

Anything else (another rank, dtype or channel count, an empty batch, NaN or infinite values,
float values beyond ±10,000, which no normalised image has and which would overflow inside
the model) is an :class:`~edgeskip.errors.InputError` naming the problem.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.errors import InputError
from edgeskip.imaging import fit_image, resize_bilinear
from edgeskip.manifest import Preprocessing
from edgeskip.normalization import Normalization, preprocess

__all__ = ["InputSpec", "fit_image", "prepare", "resize_bilinear"]

_FLOATS = (np.float16, np.float32, np.float64)
MAX_ABS = 1e4  # a normalised uint8 image lies within about ±3; far beyond, float32 overflows in the model


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """The model input a bundle expects: image size, channels and normalisation."""

    image_size: int
    channels: int
    normalization: Normalization

    @classmethod
    def from_manifest(cls, preprocessing: Preprocessing | None, image_size: int, channels: int,
                      normalization: Normalization) -> InputSpec:
        if preprocessing is not None and preprocessing.layout != "NCHW":
            raise InputError(f"the bundle's model takes layout {preprocessing.layout!r}; this runtime "
                             "feeds NCHW models only")
        return cls(image_size, channels, normalization)


def prepare(images: Any, spec: InputSpec) -> npt.NDArray[np.float32]:
    """Application images -> contiguous float32 ``(B, C, S, S)``; one image becomes a batch of one."""
    if isinstance(images, np.ndarray) and images.dtype == np.float32 and images.ndim == 4 and images.shape[0] \
            and images.shape[1:] == (spec.channels, spec.image_size, spec.image_size) \
            and images.flags.c_contiguous and _in_range(images):
        return images  # already the model's input: nothing to copy (the common case of a tight loop)
    if not isinstance(images, np.ndarray):
        try:
            images = np.asarray(images)
        except (ValueError, TypeError) as exc:
            raise InputError(f"images must be a numpy array (or convertible to one): {exc}") from None
    if images.dtype == np.uint8:
        x = _uint8_batch(images, spec)
    elif images.dtype in _FLOATS:
        x = _float_batch(images, spec)
    else:
        raise InputError(f"images must be uint8 (channels last) or float16/32/64 (normalised, channels first), "
                         f"got dtype {images.dtype}")
    if x.shape[0] == 0:
        raise InputError("empty batch: pass at least one image")
    if x.dtype != np.uint8 and not _in_range(x):
        rows = x.reshape(x.shape[0], -1)
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            raise InputError(f"images contain NaN or infinite values ({_rows(bad)})")
        bad = (np.abs(rows) > MAX_ABS).any(axis=1)
        raise InputError(f"float images hold values up to {float(np.abs(rows).max()):.3g} ({_rows(bad)}): float input "
                         f"must be normalised (a normalised image lies within about ±3; the limit is ±{MAX_ABS:g}); "
                         "pass uint8 images, or normalise with edgeskip.preprocess")
    spatial = x.shape[1:3] if x.dtype == np.uint8 else x.shape[2:4]  # NHWC uint8, NCHW float
    if spatial != (spec.image_size, spec.image_size):  # (comparing the channel axis had resized every uint8 call)
        x = fit_image(x, spec.image_size)
    if x.dtype == np.uint8:  # (B, S, S, C) uint8 -> normalised NCHW
        return preprocess(x, spec.normalization)
    return np.ascontiguousarray(x, dtype=np.float32)


def _rows(bad: npt.ArrayLike) -> str:
    """'batch rows [...]' for a per-row mask, at most 8 listed."""
    index = np.flatnonzero(bad)
    return f"batch rows {index[:8].tolist()}{' ...' if index.size > 8 else ''}"


def _in_range(x: npt.NDArray[Any]) -> bool:
    """Finite and within ±MAX_ABS, in two reductions without a temporary array (NaN fails both comparisons)."""
    return bool(x.max() <= MAX_ABS) and bool(x.min() >= -MAX_ABS)


def _uint8_batch(images: npt.NDArray[np.uint8], spec: InputSpec) -> npt.NDArray[np.uint8]:
    c = spec.channels
    x = images
    if c == 1 and x.ndim == 3 and x.shape[-1] in (3, 4) and min(x.shape[:2]) > 4:
        # (H, W, 3) would otherwise pass as a batch of H images 3 pixels wide, resized without a word
        raise InputError(f"a uint8 array of shape {images.shape} looks like a colour image, and this model takes one "
                         "channel: convert it to grey first (PIL: image.convert('L'))")
    if c == 1 and x.ndim in (2, 3) and (x.ndim == 2 or x.shape[-1] != 1):
        x = x[..., None]  # (H, W) or (B, H, W): a one-channel image without its channel axis
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise InputError(f"uint8 images must be (H, W, {c}) or (B, H, W, {c}), got shape {images.shape}")
    if x.shape[-1] != c:
        hint = " (channels first? uint8 images are channels last)" if x.shape[1] == c else ""
        raise InputError(f"expected {c} channel(s) in the last axis of uint8 images, got shape {images.shape}{hint}")
    if min(x.shape[1:3]) < 1 and x.shape[0]:
        raise InputError(f"images have an empty spatial axis: shape {images.shape}")
    return x


def _float_batch(images: npt.NDArray[Any], spec: InputSpec) -> npt.NDArray[Any]:
    c = spec.channels
    x = images[None] if images.ndim == 3 else images
    if x.ndim != 4:
        raise InputError(f"float images must be ({c}, H, W) or (B, {c}, H, W) (normalised, channels first), "
                         f"got shape {images.shape}")
    if x.shape[1] != c:
        hint = " (channels last? float images are channels first)" if x.shape[-1] == c else ""
        raise InputError(f"expected {c} channel(s) in axis 1 of float images, got shape {images.shape}{hint}")
    if min(x.shape[2:]) < 1 and x.shape[0]:
        raise InputError(f"images have an empty spatial axis: shape {images.shape}")
    return x
