"""scikit-learn's 8x8 handwritten digits: a small real dataset every install can have."""

from __future__ import annotations

import numpy as np

from edgeskip.data.dataset import DatasetSplits, ImageDataset
from edgeskip.errors import BackendUnavailableError

__all__ = ["load_digits"]


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> DatasetSplits:
    """The 1,797 digits as uint8 ``(N, 8, 8, 1)`` images, split per class (stratified)."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise BackendUnavailableError(
            "the digits dataset needs scikit-learn: pip install 'edgeskip[train]'"
        ) from None
    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = []
    for k in range(10):
        idx = rng.permutation(np.flatnonzero(labels == k))
        test_idx.append(idx[: int(round(len(idx) * test_fraction))])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(labels)), test)
    classes = tuple(str(k) for k in range(10))
    full = ImageDataset(images, labels, classes)
    return DatasetSplits("digits", full.subset(train), full.subset(test))
