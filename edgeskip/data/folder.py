"""Any image-folder dataset: one folder per class, any number of classes, images of any size.

Accepted layouts of ``root``:

* ``train/<class>/*`` with ``test/<class>/*`` or ``val/<class>/*`` (``test`` first when both exist);
* ``train/<class>/*`` alone, or ``<class>/*`` directly: each class split into train and test by a seeded
  share (``test_fraction``, at least one test image for a class of two or more).

Images are JPEG, PNG or WebP (other files are skipped and counted in the log), decoded with PIL to RGB (or
grey for a one-channel model), and fitted to ``image_size`` with the runtime's own rule
(:func:`edgeskip.imaging.fit_image`: the shorter side resized as PIL does, then the centre cropped),
so an application that hands the runtime its original images gets what training saw. Classes are the
training folders' names in sorted order. Decoded arrays are cached like CIFAR-10's, keyed by the folder's
contents, the size and the split.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgeskip.data.cache import default_cache_dir, load_cached, source_fingerprint, store_cached
from edgeskip.data.dataset import DatasetSplits, ImageDataset
from edgeskip.errors import DataError
from edgeskip.progress import progress_bar
from edgeskip.imaging import fit_image

__all__ = ["IMAGE_SUFFIXES", "load_image_folder"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
TEST_FOLDERS = ("test", "val")


def load_image_folder(root: str | Path, image_size: int, *, channels: int = 3, test_fraction: float = 0.2,
                      seed: int = 0, limit_per_class: int | None = None, cache_dir: str | Path | None = None,
                      use_cache: bool = True, progress: bool = False) -> DatasetSplits:
    """The train and test splits of the image folder ``root`` (see the module docstring), every image fitted to
    ``image_size`` x ``image_size`` with ``channels`` (3 or 1) channels, as uint8 arrays."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"image folder {path} not found: pass a folder with one sub-folder per class "
                        "(train/<class>/ and test/<class>/, or <class>/ directly)")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 3 (RGB) or 1 (grey), got {channels!r}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    if limit_per_class is not None and limit_per_class < 1:
        raise DataError(f"limit_per_class must be >= 1, got {limit_per_class}")
    files = _split_files(path, test_fraction, seed)
    classes = tuple(sorted(files["train"]))
    if limit_per_class is not None:
        files = {s: {c: fs[:limit_per_class] for c, fs in by_class.items()} for s, by_class in files.items()}
    cache_file = None
    if use_cache:
        key = source_fingerprint(path)[:24]
        limit = "" if limit_per_class is None else f"-first{limit_per_class}"
        name = f"folder-{key}-{image_size}px-{channels}c-{test_fraction:g}-{seed}{limit}.npz"
        cache_file = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / name
        cached = load_cached(cache_file)
        if cached is not None and {"train", "test"} <= set(cached) and cached["train"].classes == classes:
            log.info("using decoded images of %s from cache %s", path, cache_file)
            return DatasetSplits(path.name, cached["train"], cached["test"])
    total = sum(len(fs) for by_class in files.values() for fs in by_class.values())
    with progress_bar(total=total, desc=f"decoding {path.name}", unit="img", enabled=progress, leave=False) as bar:
        splits = {s: _decode_split(files[s], classes, image_size, channels, bar) for s in ("train", "test")}
    if cache_file is not None:
        store_cached(cache_file, splits)
    return DatasetSplits(path.name, splits["train"], splits["test"])


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its image files (sorted) for the class folders directly in ``folder``."""
    out: dict[str, list[Path]] = {}
    skipped = 0
    for cls in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = []
        for f in sorted(cls.rglob("*")):
            if not f.is_file() or f.name.startswith("."):
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES:
                images.append(f)
            else:
                skipped += 1
        if not images:
            raise DataError(f"{cls}: class {cls.name!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
        out[cls.name] = images
    if skipped:
        log.info("%s: skipped %d file(s) that are not %s images", folder, skipped, "/".join(IMAGE_SUFFIXES))
    return out


def _split_files(root: Path, test_fraction: float, seed: int) -> dict[str, dict[str, list[Path]]]:
    """Per split, class name -> files: the layout's own split, or a seeded share of each class for test."""
    train_dir = root / "train"
    test_dir = next((root / t for t in TEST_FOLDERS if (root / t).is_dir()), None) if train_dir.is_dir() else None
    train = _class_files(train_dir if train_dir.is_dir() else root)
    if len(train) < 2:
        where = train_dir if train_dir.is_dir() else root
        raise DataError(f"{where}: found {len(train)} class folder(s) ({', '.join(train) or 'none'}); a classifier "
                        "needs at least two, one sub-folder of images per class")
    if test_dir is not None:
        test = _class_files(test_dir)
        if set(test) != set(train):
            missing, extra = sorted(set(train) - set(test)), sorted(set(test) - set(train))
            raise DataError(f"{test_dir}: its classes differ from {train_dir}'s (missing {missing}, unexpected {extra})")
        return {"train": train, "test": test}
    rng = np.random.default_rng(seed)
    split: dict[str, dict[str, list[Path]]] = {"train": {}, "test": {}}
    for cls, fs in train.items():
        order = rng.permutation(len(fs))
        n_test = 0 if len(fs) < 2 else min(len(fs) - 1, max(1, round(test_fraction * len(fs))))
        split["test"][cls] = sorted(fs[i] for i in order[:n_test])
        split["train"][cls] = sorted(fs[i] for i in order[n_test:])
    return split


def _decode(file: Path, image_size: int, channels: int) -> npt.NDArray[np.uint8]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(file.read_bytes())) as img:
            arr = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {file}: {exc}") from None
    if channels == 1:
        arr = arr[..., None]
    return fit_image(arr[None], image_size)[0]  # type: ignore[no-any-return]


def _decode_split(files: dict[str, list[Path]], classes: tuple[str, ...], image_size: int, channels: int,
                  bar: object) -> ImageDataset:
    images, labels = [], []
    for label, cls in enumerate(classes):
        for f in files.get(cls, []):
            images.append(_decode(f, image_size, channels))
            labels.append(label)
            bar.update()  # type: ignore[attr-defined]
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, channels), np.uint8)
    return ImageDataset(stacked, np.asarray(labels, np.int64), classes)
