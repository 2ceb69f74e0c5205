"""CIFAR-10 in all three layouts (on a small real subset), the cache, the safe unpickler."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeskip.data import (
    CIFAR10_CLASSES,
    ImageDataset,
    load_cifar10,
    load_dataset,
    load_digits,
)
from edgeskip.data import cifar as cifar_module
from edgeskip.data.safe_pickle import safe_loads
from edgeskip.errors import DataError

PER_CLASS = 4


@pytest.fixture(scope="module")
def subset(cifar10_tarball: Path) -> tuple[ImageDataset, ImageDataset]:
    splits = load_cifar10(cifar10_tarball, limit_per_class=PER_CLASS, use_cache=False)
    return splits.train, splits.test


@pytest.fixture(scope="module")
def image_folder(cifar10_tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/<class>/ and test/<class>/ with the first PER_CLASS real JPEGs of each class."""
    root = tmp_path_factory.mktemp("folder") / "cifar10"
    wanted = {f"{s}/{c}/{i:04d}.jpg" for s in ("train", "test") for c in CIFAR10_CLASSES for i in range(PER_CLASS)}
    with tarfile.open(cifar10_tarball) as tf:
        for member in tf:
            if member.name in wanted:
                target = root / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tf.extractfile(member).read())  # type: ignore[union-attr]
    return root


def write_pickle_release(root: Path, train: ImageDataset, test: ImageDataset) -> Path:
    """The official cifar-10-batches-py layout (protocol 2, bytes keys) from real images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = lambda ds: np.ascontiguousarray(ds.images.transpose(0, 3, 1, 2).reshape(len(ds), -1))  # noqa: E731
    parts = np.array_split(np.arange(len(train)), 5)
    for i, idx in enumerate(parts, 1):
        batch = {b"data": rows(train.subset(idx)), b"labels": train.labels[idx].tolist(), b"batch_label": b"x"}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": rows(test), b"labels": test.labels.tolist()}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, protocol=2))
    return folder


def assert_same(a: ImageDataset, b: ImageDataset) -> None:
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.classes == b.classes


def test_tarball_subset(subset: tuple[ImageDataset, ImageDataset], cifar10_tarball: Path) -> None:
    train, test = subset
    assert train.images.shape == (10 * PER_CLASS, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (10 * PER_CLASS, 32, 32, 3)
    assert train.classes == CIFAR10_CLASSES
    np.testing.assert_array_equal(np.bincount(train.labels), [PER_CLASS] * 10)
    with tarfile.open(cifar10_tarball) as tf:
        raw = tf.extractfile("train/cat/0001.jpg").read()  # type: ignore[union-attr]
    direct = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    cat = CIFAR10_CLASSES.index("cat")
    np.testing.assert_array_equal(train.images[np.flatnonzero(train.labels == cat)[1]], direct)


def test_image_folder_equals_tarball(image_folder: Path, subset: tuple[ImageDataset, ImageDataset]) -> None:
    for source in (image_folder, image_folder.parent):  # the tree itself, or one level above it
        splits = load_cifar10(source, use_cache=False)
        assert_same(splits.train, subset[0])
        assert_same(splits.test, subset[1])


def test_pickle_release_and_its_tarball(tmp_path: Path, subset: tuple[ImageDataset, ImageDataset]) -> None:
    folder = write_pickle_release(tmp_path / "release", *subset)
    for source in (folder.parent, folder):
        splits = load_cifar10(source, use_cache=False)
        assert_same(splits.train, subset[0])
        assert_same(splits.test, subset[1])
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname="cifar-10-batches-py")
    assert_same(load_cifar10(archive, use_cache=False).test, subset[1])


def test_cache_is_reused_and_invalidated(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = load_cifar10(image_folder, cache_dir=cache)
    assert len(list(cache.glob("cifar10-*"))) == 1

    def no_decoding(raw: bytes, name: str) -> np.ndarray:
        raise AssertionError("decoded although the cache was valid")

    monkeypatch.setattr(cifar_module, "_decode", no_decoding)
    assert_same(load_cifar10(image_folder, cache_dir=cache).train, first.train)
    monkeypatch.undo()

    # Change one source image: the key changes and the new pixels are decoded.
    target = image_folder / "train" / "airplane" / "0000.jpg"
    original = target.read_bytes()
    try:
        Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(target, quality=100)
        os.utime(target, ns=(1, 1))
        changed = load_cifar10(image_folder, cache_dir=cache)
        assert changed.train.images[0].min() > 250
        assert len(list(cache.glob("cifar10-*"))) == 2
    finally:
        target.write_bytes(original)


def test_subset_served_from_full_cache(subset: tuple[ImageDataset, ImageDataset], image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_cifar10(image_folder, cache_dir=cache)
    small = load_cifar10(image_folder, cache_dir=cache, limit_per_class=2)
    assert len(small.train) == 20
    assert_same(small.train, subset[0].per_class(2))


def test_bad_sources_are_clear(tmp_path: Path, image_folder: Path) -> None:
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        load_cifar10(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CIFAR-10 layout"):
        load_cifar10(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a .tar"):
        load_cifar10(tmp_path / "notes.txt")
    bad = tmp_path / "bad"
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES[:9]:
            (bad / split / cls).mkdir(parents=True)
            (bad / split / cls / "0000.jpg").write_bytes((image_folder / split / cls / "0000.jpg").read_bytes())
    with pytest.raises(DataError, match=r"missing \['truck'\]"):
        load_cifar10(bad, use_cache=False)
    (bad / "train" / "truck").mkdir()
    (bad / "test" / "truck").mkdir()
    (bad / "train" / "truck" / "0000.jpg").write_bytes(b"not a jpeg")
    (bad / "test" / "truck" / "0000.jpg").write_bytes((image_folder / "test" / "truck" / "0000.jpg").read_bytes())
    with pytest.raises(DataError, match=r"cannot decode image .*truck/0000.jpg"):
        load_cifar10(bad, use_cache=False)


def test_truncated_tarball(tmp_path: Path, cifar10_tarball: Path) -> None:
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(cifar10_tarball.read_bytes()[:200_000])
    with pytest.raises(DataError):
        load_cifar10(broken, use_cache=False)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/edgeskip-pwned",))


def test_safe_unpickler_refuses_code(tmp_path: Path) -> None:
    payload = pickle.dumps({b"data": _Evil(), b"labels": []})
    with pytest.raises(DataError, match="refusing to unpickle"):
        safe_loads(payload)
    assert not Path("/tmp/edgeskip-pwned").exists()
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(safe_loads(pickle.dumps({b"a": arr}, protocol=2))[b"a"], arr)
    with pytest.raises(DataError, match="not a valid pickle"):
        safe_loads(b"garbage")


def test_malicious_pickle_release_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle posix.system|refusing to unpickle os.system"):
        load_cifar10(tmp_path, use_cache=False)


def test_digits_split() -> None:
    data = load_digits()
    assert data.train.images.shape[1:] == (8, 8, 1) and data.train.images.dtype == np.uint8
    assert len(data.train) + len(data.test) == 1797
    assert set(data.train.labels.tolist()) == set(range(10)) == set(data.test.labels.tolist())
    fractions = np.bincount(data.test.labels) / np.bincount(np.concatenate([data.train.labels, data.test.labels]))
    assert np.all(np.abs(fractions - 0.2) < 0.02)
    assert data.train.images.max() == 255
    with pytest.raises(DataError, match="cifar10 needs --data"):
        load_dataset("cifar10")
