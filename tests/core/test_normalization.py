"""Normalisation constants and the numpy preprocessing the runtime will share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeskip.data import load_digits
from edgeskip.errors import DataError, UnknownNameError
from edgeskip.normalization import get_normalization, preprocess
from edgeskip.train.evaluate import Normalizer, to_tensor


@pytest.mark.cifar10
def test_cifar10_constants_come_from_its_training_images(cifar10_tarball: Path) -> None:
    """The mean is the training set's per-channel pixel mean; the std in common use for CIFAR-10 ViTs (the value
    the thesis family's training code uses) is the mean of each image's per-channel std, not the pixel std
    (about 0.245): derived here from the images, within what the 4-digit constants round to."""
    from edgeskip.data import load_cifar10

    images = load_cifar10(cifar10_tarball, progress=False).train.images  # (50000, 32, 32, 3) uint8
    mean = images.reshape(-1, 3).sum(axis=0, dtype=np.int64) / (images.size / 3) / 255.0
    per_image_std = np.concatenate([(chunk.reshape(len(chunk), -1, 3) / np.float32(255.0)).std(axis=1)
                                    for chunk in np.array_split(images, 20)]).mean(axis=0)
    norm = get_normalization("cifar10")
    assert norm.mean == pytest.approx(tuple(mean), abs=5e-4)
    assert norm.std == pytest.approx(tuple(per_image_std), abs=2.5e-3)


def test_every_registered_normalisation_is_usable() -> None:
    for name in ("cifar10", "cifar100", "tiny-imagenet", "digits"):
        norm = get_normalization(name)
        assert norm.channels in (1, 3) and all(0 < m < 1 for m in norm.mean) and all(0 < s < 1 for s in norm.std)
    with pytest.raises(UnknownNameError):
        get_normalization("mnist")


def test_digits_constants_match_the_data() -> None:
    data = load_digits()
    pixels = np.concatenate([data.train.images, data.test.images]).astype(np.float64) / 255.0
    norm = get_normalization("digits")
    assert norm.mean[0] == pytest.approx(pixels.mean(), abs=1e-4)
    assert norm.std[0] == pytest.approx(pixels.std(), abs=1e-4)


def test_numpy_preprocess_equals_training_pipeline() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    norm = get_normalization("cifar10")
    ours = preprocess(images, norm)
    theirs = Normalizer(norm)(to_tensor(images, torch.device("cpu"))).numpy()
    assert ours.shape == (5, 3, 32, 32) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(preprocess(images[0], norm), ours[:1], atol=0)


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 32, 32, 3), np.float32), "uint8"),
        (np.zeros((32, 32), np.uint8), "HWC or NHWC"),
        (np.zeros((1, 32, 32, 4), np.uint8), "3 channel"),
    ],
)
def test_preprocess_rejects_bad_input(images: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        preprocess(images, get_normalization("cifar10"))
