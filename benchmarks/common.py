"""What the benchmark scripts share: the default CIFAR-10 location and their image sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgeskip.data import DatasetSplits, ImageDataset, load_cifar10

__all__ = ["DEFAULT_DATA", "benchmark_data", "edgeskip", "write_image_folder"]

DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-images.tar.gz")


def edgeskip(*args: str) -> str:
    """``edgeskip ARGS`` in a fresh process, as a user types it (no progress bars); its standard output, or exit
    with its error."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "edgeskip", *args, "--no-progress"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"edgeskip {args[0]} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def write_image_folder(splits: dict[str, ImageDataset], root: Path, size: int | None = None,
                       suffix: str = ".jpg") -> Path:
    """``splits`` as an image folder ``root/<split>/<class>/NNNN<suffix>``, each image resized to ``size`` x
    ``size`` first (bicubic, as a camera's pictures would come); returns ``root``."""
    from PIL import Image

    for split, ds in splits.items():
        for i, (img, label) in enumerate(zip(ds.images, ds.labels, strict=True)):
            pic = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).convert("RGB")
            if size is not None:
                pic = pic.resize((size, size), Image.BICUBIC)
            out = root / split / ds.classes[label] / f"{i:05d}{suffix}"
            out.parent.mkdir(parents=True, exist_ok=True)
            pic.save(out, quality=90) if suffix == ".jpg" else pic.save(out)
    return root


def benchmark_data(
    data: str, n_train: int, batch_size: int, n_test: int = 0
) -> tuple[DatasetSplits, npt.NDArray[np.uint8], str]:
    """``n_train`` real CIFAR-10 training images (random uint8 images when no copy exists),
    a one-batch test split for the trainers, ``n_test`` test images, and where they came from."""
    if Path(data).exists():
        full = load_cifar10(data, limit_per_class=-(-max(n_train, n_test) // 10), progress=True)
        train, source = full.train.subset(np.arange(n_train)), f"CIFAR-10 ({data})"
        test_pixels = full.test.images[:n_test]
    else:
        rng = np.random.default_rng(0)
        train = ImageDataset(rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
                             rng.integers(0, 10, n_train).astype(np.int64), tuple(str(i) for i in range(10)))
        source, test_pixels = "random uint8 images (no CIFAR-10 copy found)", train.images[:n_test]
    return DatasetSplits("cifar10", train, train.subset(np.arange(batch_size))), test_pixels, source
