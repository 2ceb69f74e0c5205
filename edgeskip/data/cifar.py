"""CIFAR-10 from a user's copy: the python-pickle release, an image-folder tree, or a tarball.

Accepted sources (``source`` may be any of these):

* a directory holding ``cifar-10-batches-py/`` (or that directory itself);
* a directory holding ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (png too),
  directly or one folder down;
* a ``.tar`` / ``.tar.gz`` containing either layout (the official
  ``cifar-10-python.tar.gz`` or an archive of an image-folder tree).

Decoded uint8 arrays are cached under :func:`~edgeskip.data.cache.default_cache_dir`,
keyed by the source's content, so a changed source is decoded afresh.
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeskip.data.cache import (
    default_cache_dir,
    load_cached,
    source_fingerprint,
    store_cached,
)
from edgeskip.data.dataset import DatasetSplits, ImageDataset
from edgeskip.data.safe_pickle import safe_loads
from edgeskip.errors import DataError
from edgeskip.progress import progress_bar

__all__ = ["CIFAR10_CLASSES", "load_cifar10"]

log = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_PICKLE_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_IMAGE_MEMBER = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+\.(?:jpe?g|png))$", re.IGNORECASE)
SPLITS = ("train", "test")


def load_cifar10(
    source: str | Path,
    *,
    limit_per_class: int | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> DatasetSplits:
    """Load CIFAR-10's train and test splits from ``source`` (see the module docstring).

    ``limit_per_class`` keeps the first N images of each class in each split (the
    original order), which makes small real subsets for tests and smoke runs.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"CIFAR-10 not found at {path}: pass a directory with cifar-10-batches-py/ or "
            "train/<class>/ and test/<class>/ folders, or a .tar/.tar.gz of either"
        )
    if limit_per_class is not None and limit_per_class < 1:
        raise DataError(f"limit_per_class must be >= 1, got {limit_per_class}")
    reader = _reader_for(path)

    cache_file = None
    if use_cache:
        key = source_fingerprint(path)[:24]
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        full_file = root / f"cifar10-{key}"
        cached = load_cached(full_file)
        if cached is None and limit_per_class is not None:
            cache_file = root / f"cifar10-{key}-first{limit_per_class}"
            cached = load_cached(cache_file)
        else:
            cache_file = full_file
        if cached is not None and set(SPLITS) <= set(cached):
            log.info("using decoded CIFAR-10 from cache %s", cache_file)
            return _finish(cached, limit_per_class)

    splits = reader(limit_per_class, progress)
    if cache_file is not None:
        store_cached(cache_file, splits)
    return _finish(splits, limit_per_class)


def _finish(splits: dict[str, ImageDataset], limit: int | None) -> DatasetSplits:
    train, test = splits["train"], splits["test"]
    if limit is not None:
        train, test = train.per_class(limit), test.per_class(limit)
    return DatasetSplits("cifar10", train, test)


Reader = Callable[[int | None, bool], dict[str, ImageDataset]]


def _reader_for(path: Path) -> Reader:
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise DataError(f"{path} is a file but not a .tar/.tar.gz archive")
        return lambda limit, progress: _read_tar(path, limit, progress)
    for pickle_dir in (path / "cifar-10-batches-py", path):
        if (pickle_dir / "data_batch_1").is_file():
            return lambda limit, progress: _read_pickle_dir(pickle_dir)
    for root in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if (root / "train").is_dir() and (root / "test").is_dir():
            return lambda limit, progress: _read_image_folder(root, limit, progress)
    raise DataError(
        f"{path} holds no CIFAR-10 layout edgeskip knows: expected cifar-10-batches-py/data_batch_1 "
        "or train/<class>/*.jpg and test/<class>/*.jpg"
    )


# -- pickle release -------------------------------------------------------------------


def _batch_to_arrays(batch: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{source} is not a CIFAR-10 batch (no data/labels entries)")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{source}: expected uint8 rows of 3072 values, got {data.dtype} {data.shape}")
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{source}: {len(data)} images but {labels.size} labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _assemble_pickles(load: Callable[[str], bytes], where: str) -> dict[str, ImageDataset]:
    out = {}
    for split, names in _PICKLE_FILES.items():
        parts = [_batch_to_arrays(safe_loads(load(n), source=f"{where}/{n}"), f"{where}/{n}") for n in names]
        images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
        out[split] = ImageDataset(images, np.concatenate([p[1] for p in parts]), CIFAR10_CLASSES)
    return out


def _read_pickle_dir(path: Path) -> dict[str, ImageDataset]:
    def load(name: str) -> bytes:
        file = path / name
        if not file.is_file():
            raise DataError(f"{file} is missing from the CIFAR-10 python release")
        return file.read_bytes()

    return _assemble_pickles(load, str(path))


# -- image folders ----------------------------------------------------------------------


def _class_order(found: Iterable[str], where: str) -> dict[str, int]:
    found = set(found)
    if found != set(CIFAR10_CLASSES):
        missing = sorted(set(CIFAR10_CLASSES) - found)
        extra = sorted(found - set(CIFAR10_CLASSES))
        raise DataError(f"{where}: class folders differ from CIFAR-10's (missing {missing}, unexpected {extra})")
    return {name: i for i, name in enumerate(CIFAR10_CLASSES)}


def _select(
    entries: Iterable[tuple[str, str, str]], limit: int | None, where: str
) -> dict[str, list[tuple[str, int]]]:
    """(split, class, key) triples -> per split, the sorted (key, label) pairs to decode."""
    grouped: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    for split, cls, key in entries:
        grouped[split].setdefault(cls, []).append(key)
    chosen: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        order = _class_order(grouped[split], f"{where} ({split})")
        chosen[split] = [
            (key, order[cls]) for cls in CIFAR10_CLASSES for key in sorted(grouped[split][cls])[:limit]
        ]
    return chosen


def _decode(raw: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {name}: {exc}") from None
    if arr.shape != (32, 32, 3):
        raise DataError(f"{name} is {arr.shape[1]}x{arr.shape[0]}, CIFAR-10 images are 32x32")
    return arr


def _stack(chosen: dict[str, list[tuple[str, int]]], decoded: dict[str, np.ndarray]) -> dict[str, ImageDataset]:
    out = {}
    for split, items in chosen.items():
        images = np.stack([decoded[key] for key, _ in items]) if items else np.zeros((0, 32, 32, 3), np.uint8)
        labels = np.asarray([label for _, label in items], dtype=np.int64)
        out[split] = ImageDataset(images, labels, CIFAR10_CLASSES)
    return out


def _bar(total: int, enabled: bool) -> Any:
    return progress_bar(total=total, desc="decoding CIFAR-10", unit="img", enabled=enabled, leave=False)


def _read_image_folder(root: Path, limit: int | None, progress: bool) -> dict[str, ImageDataset]:
    entries = [
        (split, cls_dir.name, str(f))
        for split in SPLITS
        for cls_dir in sorted((root / split).iterdir())
        if cls_dir.is_dir()
        for f in cls_dir.iterdir()
        if _IMAGE_MEMBER.search(f.as_posix())
    ]
    chosen = _select(entries, limit, str(root))
    decoded: dict[str, np.ndarray] = {}
    with _bar(sum(len(v) for v in chosen.values()), progress) as bar:
        for items in chosen.values():
            for key, _ in items:
                decoded[key] = _decode(Path(key).read_bytes(), key)
                bar.update()
    return _stack(chosen, decoded)


# -- tarballs -----------------------------------------------------------------------------


def _read_tar(path: Path, limit: int | None, progress: bool) -> dict[str, ImageDataset]:
    try:
        with tarfile.open(path) as tf:
            names = [m.name for m in tf.getmembers() if m.isfile()]
            pickles = {Path(n).name: n for n in names if Path(n).parent.name == "cifar-10-batches-py"}
            if "data_batch_1" in pickles:
                return _assemble_pickles(lambda n: _member_bytes(tf, pickles, n, path), str(path))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read archive {path}: {exc}") from None

    entries = []
    for name in names:
        m = _IMAGE_MEMBER.search(name)
        if m:
            entries.append((m.group(1), m.group(2), name))
    if not entries:
        raise DataError(f"{path} contains neither cifar-10-batches-py/ nor train/<class>/ image folders")
    chosen = _select(entries, limit, str(path))
    wanted = {key for items in chosen.values() for key, _ in items}
    decoded: dict[str, np.ndarray] = {}
    with _bar(len(wanted), progress) as bar:
        for name, raw in _stream_members(path, wanted):
            decoded[name] = _decode(raw, f"{path}:{name}")
            bar.update()
    missing = wanted - decoded.keys()
    if missing:
        raise DataError(f"{path}: {len(missing)} member(s) could not be read, e.g. {sorted(missing)[0]}")
    return _stack(chosen, decoded)


def _member_bytes(tf: tarfile.TarFile, members: dict[str, str], name: str, path: Path) -> bytes:
    if name not in members:
        raise DataError(f"{path} lacks cifar-10-batches-py/{name}")
    f = tf.extractfile(members[name])
    if f is None:
        raise DataError(f"{path}: {members[name]} is not a regular file")
    return f.read()


def _stream_members(path: Path, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    """Read the wanted members in archive order (one sequential pass, no seeking)."""
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                if member.isfile() and member.name in wanted:
                    f = tf.extractfile(member)
                    if f is not None:
                        yield member.name, f.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read archive {path}: {exc}") from None
