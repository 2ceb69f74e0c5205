"""Normalisation constants and the numpy preprocessing the runtime will share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeskip.data import load_digits
from edgeskip.errors import DataError, UnknownNameError
from edgeskip.normalization import get_normalization, preprocess
from edgeskip.train.evaluate import Normalizer, to_tensor


def test_cifar10_constants() -> None:
    norm = get_normalization("cifar10")
    assert norm.mean == (0.4914, 0.4822, 0.4465)
    assert norm.std == (0.2023, 0.1994, 0.2010)
    for name in ("cifar100", "tiny-imagenet", "digits"):
        assert get_normalization(name).channels in (1, 3)
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
