"""Any image-folder dataset: layouts, sizes, formats, the seeded split, the cache and the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeskip.data import load_digits
from edgeskip.data.folder import load_image_folder
from edgeskip.errors import DataError
from edgeskip.imaging import fit_image

FORMATS = ("png", "jpg", "webp")


def _write(root: Path, per_class: int, size: tuple[int, int] = (40, 30), classes: int = 3) -> dict[Path, np.ndarray]:
    """Digits upscaled to ``size`` (width, height) as PNG, JPEG and WebP images under ``root/<class>/``."""
    digits = load_digits().train
    written = {}
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(digits.labels == c)[:per_class]):
            grey = Image.fromarray(digits.images[index, :, :, 0]).resize(size, Image.NEAREST)
            file = root / f"class_{c}" / f"{i:03d}.{FORMATS[i % 3]}"
            grey.convert("RGB").save(file, quality=95) if file.suffix == ".jpg" else grey.convert("RGB").save(file)
            written[file] = np.asarray(Image.open(file).convert("RGB"))
    return written


def test_train_and_test_folders_any_size_and_format(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    train = _write(root / "train", 6)
    _write(root / "val", 2)
    (root / "train" / "class_0" / "notes.txt").write_text("not an image")  # skipped
    splits = load_image_folder(root, 24, cache_dir=tmp_path / "cache")
    assert splits.name == "ds" and splits.train.classes == ("class_0", "class_1", "class_2")
    assert splits.train.images.shape == (18, 24, 24, 3) and splits.test.images.shape == (6, 24, 24, 3)
    assert splits.train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    # each image fitted by the runtime's own rule: a 40x30 image -> 32x24, the middle 24 columns
    first = sorted(train)[0]
    assert np.array_equal(splits.train.images[0], fit_image(train[first][None], 24)[0])
    cached = load_image_folder(root, 24, cache_dir=tmp_path / "cache")  # from the cache: the same arrays
    assert np.array_equal(cached.train.images, splits.train.images) and cached.test.classes == splits.test.classes
    grey = load_image_folder(root, 16, channels=1, use_cache=False)
    assert grey.train.images.shape == (18, 16, 16, 1)


def test_one_folder_is_split_by_a_seeded_share(tmp_path: Path) -> None:
    _write(tmp_path / "flat", 10, classes=2)
    a = load_image_folder(tmp_path / "flat", 8, test_fraction=0.3, seed=1, use_cache=False)
    b = load_image_folder(tmp_path / "flat", 8, test_fraction=0.3, seed=1, use_cache=False)
    c = load_image_folder(tmp_path / "flat", 8, test_fraction=0.3, seed=2, use_cache=False)
    assert len(a.train) == 14 and len(a.test) == 6 and np.bincount(a.test.labels).tolist() == [3, 3]
    assert np.array_equal(a.test.images, b.test.images) and not np.array_equal(a.test.images, c.test.images)
    limited = load_image_folder(tmp_path / "flat", 8, limit_per_class=2, use_cache=False)
    assert np.bincount(limited.train.labels).tolist() == [2, 2]


def test_bad_folders_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "nowhere", 8)
    _write(tmp_path / "one", 3, classes=1)
    with pytest.raises(DataError, match=r"found 1 class folder\(s\) \(class_0\); a classifier needs at least two"):
        load_image_folder(tmp_path / "one", 8, use_cache=False)
    _write(tmp_path / "empty", 3, classes=2)
    (tmp_path / "empty" / "class_9").mkdir()
    with pytest.raises(DataError, match="class 'class_9' has no images"):
        load_image_folder(tmp_path / "empty", 8, use_cache=False)
    _write(tmp_path / "differ" / "train", 3, classes=3)
    _write(tmp_path / "differ" / "test", 1, classes=2)
    with pytest.raises(DataError, match=r"classes differ .*missing \['class_2'\], unexpected \[\]"):
        load_image_folder(tmp_path / "differ", 8, use_cache=False)
    _write(tmp_path / "broken", 2, classes=2)
    bad = tmp_path / "broken" / "class_1" / "zz.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"cannot decode image {bad}"):
        load_image_folder(tmp_path / "broken", 8, use_cache=False)
    for kwargs, message in (({"image_size": 0}, "image_size"), ({"image_size": 8, "channels": 2}, "channels"),
                            ({"image_size": 8, "test_fraction": 1.0}, "test_fraction")):
        with pytest.raises(DataError, match=message):
            load_image_folder(tmp_path / "broken", **kwargs)  # type: ignore[arg-type]


def test_worker_threads_decode_the_same_images_into_a_memory_mapped_cache(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeskip.data.folder as folder

    _write(tmp_path / "ds", 30, classes=3)
    one = load_image_folder(tmp_path / "ds", 16, workers=1, use_cache=False)
    monkeypatch.setattr(folder, "PARALLEL_FROM", 1)  # threads for any size (the default starts at 2,048 images)
    monkeypatch.setattr(folder, "CHUNK", 7)
    two = load_image_folder(tmp_path / "ds", 16, workers=2, cache_dir=tmp_path / "cache")
    assert isinstance(two.train.images, np.memmap) and not two.train.images.flags.writeable  # read from the cache
    assert np.array_equal(one.train.images, two.train.images) and np.array_equal(one.test.labels, two.test.labels)
    bad = tmp_path / "ds" / "class_2" / "zz.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"cannot decode image {bad}"):  # raised in a worker, named in one line
        load_image_folder(tmp_path / "ds", 16, workers=2, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".tmp"))  # no half-written entry


def test_a_cache_that_cannot_be_written_decodes_into_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path / "ds", 4, classes=2)
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder would go")
    splits = load_image_folder(tmp_path / "ds", 8, cache_dir=blocked)
    assert splits.train.images.shape == (6, 8, 8, 3) and not isinstance(splits.train.images, np.memmap)
    assert "decoding into memory" in caplog.text
