"""Shared fixtures: a private dataset cache, the CIFAR-10 tarball and small real subsets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def cifar10_source() -> Path | None:
    """``$EDGESKIP_CIFAR10`` or ../shared/data/cifar10-images.tar.gz beside the repository."""
    env = os.environ.get("EDGESKIP_CIFAR10")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data" / "cifar10-images.tar.gz")
    return next((p for p in candidates if p.exists()), None)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the tests' decoded-dataset cache out of the user's ~/.cache."""
    old = os.environ.get("EDGESKIP_CACHE_DIR")
    os.environ["EDGESKIP_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgeskip-cache"))
    yield
    if old is None:
        os.environ.pop("EDGESKIP_CACHE_DIR", None)
    else:
        os.environ["EDGESKIP_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def cifar10_tarball() -> Path:
    src = cifar10_source()
    if src is None:
        pytest.skip("CIFAR-10 not available: set EDGESKIP_CIFAR10 or place ../shared/data/cifar10-images.tar.gz")
    return src


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
