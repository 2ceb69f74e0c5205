"""Training throughput (images/s) of a model on this machine, fp32 and bf16 side by side.

Runs the real training path (edgeskip.train.loop.Trainer: augmentation, autocast, AdamW,
clipping) on real CIFAR-10 images when a copy is available, alternating fp32 and bf16
epochs so both see the same machine state. The first epoch of each is a warm-up.

    python benchmarks/train_throughput.py --model vit9 --data ../shared/data/cifar10-images.tar.gz
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

import torch
from common import (  # benchmarks/common.py (run as a script)
    DEFAULT_DATA,
    benchmark_data,
)

from edgeskip.host import describe_host
from edgeskip.train.config import TrainConfig
from edgeskip.train.loop import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit9")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per precision")
    parser.add_argument("--augment", default="full", choices=("none", "basic", "full"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data, _, source = benchmark_data(args.data, args.batch_size * args.steps, args.batch_size)

    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            p: Trainer(TrainConfig(model=args.model, dataset="cifar10", out=f"{tmp}/{p}", epochs=args.repeats + 1,
                                   batch_size=args.batch_size, augment=args.augment, precision=p,
                                   threads=args.threads, progress=False), data)
            for p in ("fp32", "bf16")
        }
        for epoch in range(1, args.repeats + 2):
            for precision, trainer in trainers.items():
                stats = trainer.train_epoch(epoch)
                if epoch > 1:
                    rates.setdefault(precision, []).append(stats["images_per_second"])
                    print(f"{precision} epoch {epoch - 1}/{args.repeats}: {stats['images_per_second']:.1f} images/s")

    summary = {
        "model": args.model, "batch_size": args.batch_size, "steps_per_epoch": args.steps,
        "augment": args.augment, "data": source, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "host": describe_host().to_dict(),
        "images_per_second": {p: {"median": statistics.median(r), "min": min(r), "max": max(r), "samples": len(r)}
                              for p, r in rates.items()},
    }
    fp32, bf16 = (summary["images_per_second"][p]["median"] for p in ("fp32", "bf16"))  # type: ignore[index]
    summary["bf16_speedup"] = bf16 / fp32
    epoch_images = 50_000
    print(f"\n{args.model} training throughput on {summary['host']['cpu_model']} ({summary['threads']} threads), "  # type: ignore[index]
          f"batch {args.batch_size}, augment={args.augment}, {source}")
    print(f"  fp32: {fp32:7.1f} images/s  ({epoch_images / fp32 / 60:.1f} min per CIFAR-10 epoch)")
    print(f"  bf16: {bf16:7.1f} images/s  ({epoch_images / bf16 / 60:.1f} min per CIFAR-10 epoch)")
    print(f"  bf16 / fp32: {bf16 / fp32:.2f}x")
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
