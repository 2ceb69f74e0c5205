"""Fitting images to a model's input size (numpy only): the one rule for the runtime's inputs
(:mod:`edgeskip.runtimes.inputs`) and for image-folder datasets (:mod:`edgeskip.data.folder`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["RESIZE", "fit_image", "resize_bilinear"]

# What the manifest's preprocessing records of fit_image (bundles before it record "bilinear": the same for square
# images grown or kept, which is all they were trained on)
RESIZE = "shorter side to the model's size, bilinear (PIL, antialiased when shrinking), centre crop"


def _axis_weights(n_in: int, n_out: int) -> npt.NDArray[np.float32]:
    """(n_out, n_in) bilinear resampling weights as PIL computes them: a triangle filter on half-pixel centres,
    widened by the scale when shrinking (antialiasing), each row normalised."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centre = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    src = np.arange(n_in, dtype=np.float64) + 0.5
    w = np.clip(1.0 - np.abs(src[None, :] - centre[:, None]) / support, 0.0, None)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_bilinear(x: npt.NDArray[Any], size: int | tuple[int, int]) -> npt.NDArray[Any]:
    """Resize the two spatial axes to ``size`` (square) or ``(height, width)``: NHWC for uint8 (rounded back to
    uint8), NCHW otherwise. Bilinear as PIL's ``Image.resize(..., BILINEAR)``, antialiased when shrinking (within
    one uint8 level of PIL, which rounds in fixed point)."""
    h_out, w_out = (size, size) if isinstance(size, int) else size
    channels_last = x.dtype == np.uint8
    h_axis, w_axis = (1, 2) if channels_last else (2, 3)
    f = x.astype(np.float32)
    if f.shape[h_axis] != h_out:
        f = np.moveaxis(np.tensordot(f, _axis_weights(f.shape[h_axis], h_out), axes=([h_axis], [1])), -1, h_axis)
    if f.shape[w_axis] != w_out:
        f = np.moveaxis(np.tensordot(f, _axis_weights(f.shape[w_axis], w_out), axes=([w_axis], [1])), -1, w_axis)
    if channels_last:
        return np.clip(np.rint(f), 0, 255).astype(np.uint8)
    return f.astype(x.dtype if x.dtype != np.float16 else np.float32)


def fit_image(x: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    """Fit images to ``size`` x ``size`` keeping their aspect: the shorter side resized to ``size``
    (:func:`resize_bilinear`), then the centre cropped (NHWC uint8 or NCHW float). A square image is only resized.
    The one rule for the runtime's inputs and for image-folder datasets (:mod:`edgeskip.data.folder`)."""
    h_axis, w_axis = (1, 2) if x.dtype == np.uint8 else (2, 3)
    h, w = x.shape[h_axis], x.shape[w_axis]
    short = min(h, w)
    h_out, w_out = max(size, round(h * size / short)), max(size, round(w * size / short))
    y = resize_bilinear(x, (h_out, w_out)) if (h_out, w_out) != (h, w) else x
    top, left = (h_out - size) // 2, (w_out - size) // 2
    index: list[Any] = [slice(None)] * 4
    index[h_axis], index[w_axis] = slice(top, top + size), slice(left, left + size)
    return y[tuple(index)]
