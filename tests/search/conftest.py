"""What the search tests share."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def images() -> tuple[Any, Any]:
    """120 real digits test images and labels (the first half of each class): the search images of the tests."""
    from edgeskip.data import load_digits

    pool = load_digits().test.halves()[0].take(120)
    return pool.images, pool.labels
