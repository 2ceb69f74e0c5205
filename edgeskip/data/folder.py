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
contents, the size and the split: decoded straight into the cache's memory-mapped files (by several threads
for a large folder) and read back from them, so a folder larger than memory loads and trains.
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.data.cache import default_cache_dir, load_cached, source_fingerprint, writing_cache
from edgeskip.data.dataset import DatasetSplits, ImageDataset
from edgeskip.errors import DataError
from edgeskip.host import usable_cpus
from edgeskip.imaging import fit_image
from edgeskip.progress import progress_bar

__all__ = ["IMAGE_SUFFIXES", "load_image_folder"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CHUNK = 64  # images one decoding job fits and returns
PARALLEL_FROM = 2048  # images from which decoding threads are used (measured: see docs/measurements.md)
TEST_FOLDERS = ("test", "val")
SPLITS = ("train", "test")


def load_image_folder(root: str | Path, image_size: int, *, channels: int = 3, test_fraction: float = 0.2,
                      seed: int = 0, limit_per_class: int | None = None, cache_dir: str | Path | None = None,
                      use_cache: bool = True, workers: int | None = None, progress: bool = False) -> DatasetSplits:
    """The train and test splits of the image folder ``root`` (see the module docstring), every image fitted to
    ``image_size`` x ``image_size`` with ``channels`` (3 or 1) channels, as uint8 arrays. With the cache (the
    default) the images are decoded straight into its memory-mapped files and read back from them, so a folder
    larger than memory loads; ``workers`` threads decode (default: one per usable CPU)."""
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
    workers = max(1, workers or usable_cpus())
    if use_cache:
        key = source_fingerprint(path)[:24]
        limit = "" if limit_per_class is None else f"-first{limit_per_class}"
        name = f"folder-{key}-{image_size}px-{channels}c-{test_fraction:g}-{seed}{limit}"
        entry = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / name
        cached = load_cached(entry)
        if cached is not None and {"train", "test"} <= set(cached) and cached["train"].classes == classes:
            log.info("using decoded images of %s from cache %s", path, entry)
            return DatasetSplits(path.name, cached["train"], cached["test"])
        try:
            with writing_cache(entry, classes) as w:
                for s, (_, labels) in _decode_splits(files, classes, image_size, channels, workers, progress,
                                                     path.name, w.images).items():
                    w.labels(s, labels)
            cached = load_cached(entry)
        except OSError as exc:
            log.warning("could not write the decoded images to the cache %s (%s): decoding into memory", entry, exc)
            cached = None
        if cached is not None:
            return DatasetSplits(path.name, cached["train"], cached["test"])
    decoded = _decode_splits(files, classes, image_size, channels, workers, progress, path.name, _in_memory)
    train, test = (ImageDataset(*decoded[s], classes) for s in SPLITS)
    return DatasetSplits(path.name, train, test)


def _in_memory(split: str, shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
    del split  # every split alike
    return np.empty(shape, np.uint8)


def _decode_splits(files: dict[str, dict[str, list[Path]]], classes: tuple[str, ...], image_size: int, channels: int,
                   workers: int, progress: bool, name: str,
                   allocate: Callable[[str, tuple[int, ...]], npt.NDArray[np.uint8]],
                   ) -> dict[str, tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]]:
    """Both splits decoded into the arrays ``allocate(split, shape)`` returns (in memory, or cache files), under
    one progress bar: split -> (images, labels)."""
    total = sum(len(fs) for by_class in files.values() for fs in by_class.values())
    with progress_bar(total=total, desc=f"decoding {name}", unit="img", enabled=progress, leave=False) as bar:
        return {s: _decode_split(files[s], classes, image_size, channels, bar, workers,
                                 functools.partial(allocate, s)) for s in SPLITS}


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


def _decode_chunk(job: tuple[list[Path], int, int]) -> npt.NDArray[np.uint8]:
    files, image_size, channels = job
    return np.stack([_decode(f, image_size, channels) for f in files])


def _decode_split(files: dict[str, list[Path]], classes: tuple[str, ...], image_size: int, channels: int,
                  bar: Any, workers: int, allocate: Callable[[tuple[int, ...]], npt.NDArray[np.uint8]],
                  ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Decode one split into the array ``allocate(shape)`` returns (in memory, or a cache file), in chunks, by
    ``workers`` threads where there are enough images to pay for them: (images, labels)."""
    order = [(f, label) for label, cls in enumerate(classes) for f in files.get(cls, [])]
    images = allocate((len(order), image_size, image_size, channels))
    jobs = [([f for f, _ in order[i : i + CHUNK]], image_size, channels) for i in range(0, len(order), CHUNK)]
    one_blas_thread = _one_blas_thread() if workers > 1 and len(order) >= PARALLEL_FROM else None
    if one_blas_thread is not None:
        # threads, not processes: PIL's decoders and the resize's matrix products release the GIL, and a
        # process pool would re-import the caller's main module (a script without a main guard runs again).
        # BLAS on one thread meanwhile: its own threads and ours on the same cores ran slower than one of ours.
        with one_blas_thread, concurrent.futures.ThreadPoolExecutor(min(workers, len(jobs))) as pool:
            decoded: Iterator[npt.NDArray[np.uint8]] = pool.map(_decode_chunk, jobs)
            _fill(images, decoded, bar)
    else:
        _fill(images, map(_decode_chunk, jobs), bar)
    return images, np.asarray([label for _, label in order], np.int64)


def _one_blas_thread() -> Any:
    """A context limiting BLAS to one thread (threadpoolctl, installed with scikit-learn), or None without it:
    then one decoding thread, whose resize BLAS parallelises."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=1, user_api="blas")


def _fill(images: npt.NDArray[np.uint8], chunks: Iterator[npt.NDArray[np.uint8]], bar: Any) -> None:
    start = 0
    for chunk in chunks:
        images[start : start + len(chunk)] = chunk
        start += len(chunk)
        bar.update(len(chunk))
