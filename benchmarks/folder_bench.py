"""Decoding an image folder on this machine: one thread against several, and the memory-mapped cache.

Writes ``--images`` CIFAR-10 training images upsampled to ``--file-size`` JPEGs (a stand-in for camera images),
then loads the folder at ``--size`` three ways, each in a fresh process (so one's memory does not help the next):
decoded by one thread, by ``--workers`` threads, and read back from the cache the first load wrote. Reports
seconds, images/s and peak resident memory, with the spread of ``--repeats`` interleaved runs. The folder loader
uses threads from 2,048 images (``PARALLEL_FROM``); this measures whether that pays on this machine.

    python benchmarks/folder_bench.py --data ../shared/data/cifar10-images.tar.gz [--images 4096] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write_image_folder

from edgeskip.data import load_cifar10

LOAD = """
import json, resource, sys, time
import edgeskip.data.folder as folder
folder.PARALLEL_FROM = 1
start = time.perf_counter()
splits = folder.load_image_folder(sys.argv[1], int(sys.argv[2]), workers=int(sys.argv[3]),
                                  use_cache=sys.argv[4] == "cache", cache_dir=sys.argv[5])
n = len(splits.train) + len(splits.test)
int(splits.train.images[::97].sum())  # touch the data (a memory-mapped load reads it lazily)
print(json.dumps({"seconds": time.perf_counter() - start, "images": n,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def load(folder: Path, size: int, workers: int, mode: str, cache: Path) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", LOAD, str(folder), str(size), str(workers), mode, str(cache)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the CIFAR-10 image-folder .tar.gz")
    p.add_argument("--images", type=int, default=4096, help="images in the folder")
    p.add_argument("--file-size", type=int, default=256, help="their size on disk")
    p.add_argument("--size", type=int, default=224, help="the model's input size they are fitted to")
    p.add_argument("--workers", type=int, default=2, help="decoding threads of the parallel load")
    p.add_argument("--repeats", type=int, default=3, help="runs of each way, interleaved")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    results: dict[str, list[dict[str, float]]] = {"one thread": [], f"{args.workers} threads": [], "cache": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "images", Path(tmp) / "cache"
        train = load_cifar10(args.data, limit_per_class=args.images // 10).train
        first, rest = train.halves()  # any two parts: the loader decodes both splits alike
        write_image_folder({"train": rest, "test": first}, folder, args.file_size)
        load(folder, args.size, args.workers, "cache", cache)  # writes the cache the "cache" rows read
        for _ in range(args.repeats):
            results["one thread"].append(load(folder, args.size, 1, "memory", cache))
            results[f"{args.workers} threads"].append(load(folder, args.size, args.workers, "memory", cache))
            results["cache"].append(load(folder, args.size, 1, "cache", cache))
    print(f"{args.images} JPEGs of {args.file_size}x{args.file_size} fitted to {args.size}x{args.size}, "
          f"{args.repeats} interleaved runs each (median, min-max):")
    for name, runs in results.items():
        s = [r["seconds"] for r in runs]
        rss = statistics.median(r["peak_rss_mib"] for r in runs)
        print(f"  {name:<12} {statistics.median(s):7.2f} s ({min(s):.2f}-{max(s):.2f})  "
              f"{args.images / statistics.median(s):7.0f} images/s  peak RSS {rss:5.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
