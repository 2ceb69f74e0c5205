"""Skip agents on this machine, every figure a ratio measured side by side in one run.

1. Training: per-epoch time of joint agent training (REINFORCE) against static training of
   the same model on the same images, epochs alternated (target: at most 1.3x).
2. Inference at batch 64 with a fixed skip pattern: per-sample gather/scatter against the
   static model, and against the compute-proportional ideal built from each stage's own
   measured time (embed + head + sum_j layer_j * fraction of rows that run j) (target:
   at least 0.9 of ideal).

    python benchmarks/agents_bench.py --model vit9
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import (  # benchmarks/common.py (run as a script)
    DEFAULT_DATA,
    benchmark_data,
)

from edgeskip.agents.model import SkipViT
from edgeskip.train.agents import AgentTrainer
from edgeskip.data import DatasetSplits
from edgeskip.host import describe_host
from edgeskip.models.vit import ViT
from edgeskip.train.config import TrainConfig
from edgeskip.train.loop import Trainer
from edgeskip.variants import model_config


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def training(args: argparse.Namespace, data: DatasetSplits) -> dict[str, object]:
    rates: dict[str, list[float]] = {"static": [], "agents": []}
    executed: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        trainers: dict[str, Trainer] = {}
        for kind in rates:
            cfg = TrainConfig(model=args.model, dataset="cifar10", out=f"{tmp}/{kind}", epochs=args.repeats + 1,
                              batch_size=args.batch_size, augment="full", progress=False, agents=kind == "agents")
            trainers[kind] = (AgentTrainer if kind == "agents" else Trainer)(cfg, data)
        for epoch in range(1, args.repeats + 2):
            for kind, trainer in trainers.items():
                stats = trainer.train_epoch(epoch)
                if epoch > 1:  # the first epoch of each is a warm-up
                    rates[kind].append(stats["epoch_seconds"])
                    if kind == "agents":
                        executed.append(stats["train_exec"])
                    print(f"  train {kind:<6} epoch {epoch - 1}: {stats['epoch_seconds']:.2f} s "
                          f"({stats['images_per_second']:.0f} img/s)")
        precision = trainers["static"].precision
    static, agents = statistics.median(rates["static"]), statistics.median(rates["agents"])
    return {"precision": precision, "static_epoch_s": static, "agents_epoch_s": agents,
            "ratio": agents / static, "target_max": 1.3, "sampled_executed_fraction": statistics.mean(executed),
            "images_per_epoch": len(data.train), "samples": len(rates["static"])}


@torch.no_grad()
def inference(args: argparse.Namespace, images: torch.Tensor) -> dict[str, object]:
    cfg = model_config(args.model)
    torch.manual_seed(0)
    model = SkipViT(cfg).eval()
    b, depth = images.shape[0], cfg.depth
    rng = np.random.default_rng(0)
    skipped = [2, 5, 8][: max(1, depth // 3)]
    patterns = {
        f"layers {skipped} skipped for every input": torch.ones(b, depth, dtype=torch.bool).index_fill_(
            1, torch.tensor(skipped), False),
        "per-sample random, each layer run by 2/3 of inputs": torch.from_numpy(rng.random((b, depth)) < 2 / 3),
    }
    tokens = model.embed(images)
    stage = {
        "embed": lambda: model.embed(images),
        **{f"layer{j}": (lambda j=j: model.blocks[j](tokens)) for j in range(depth)},
        "head": lambda: model.head(tokens),
        "static": lambda: ViT.forward(model, images),
        **{name: (lambda p=p: model(images, executed=p)) for name, p in patterns.items()},
    }
    for fn in stage.values():  # warm-up
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in stage}
    for _ in range(args.inference_repeats):  # interleaved, so drift hits every variant alike
        for name, fn in stage.items():
            times[name] += timed(fn, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    results = {}
    for name, pattern in patterns.items():
        fractions = pattern.float().mean(0).tolist()
        ideal = med["embed"] + med["head"] + sum(med[f"layer{j}"] * f for j, f in enumerate(fractions))
        results[name] = {
            "executed_fraction": float(pattern.float().mean()),
            "static_ms": 1e3 * med["static"], "dynamic_ms": 1e3 * med[name], "ideal_ms": 1e3 * ideal,
            "dynamic_ms_p90": 1e3 * float(np.percentile(times[name], 90)),
            "speedup": med["static"] / med[name], "ideal_speedup": med["static"] / ideal,
            "fraction_of_ideal": ideal / med[name], "target_min": 0.9,
        }
    return {"batch": b, "precision": "fp32", "repeats": args.inference_repeats, "warmup": args.warmup,
            "stage_ms": {k: 1e3 * v for k, v in med.items() if k in ("embed", "head", "static") or k.startswith("layer")},
            "patterns": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit9")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed training epochs per variant")
    parser.add_argument("--inference-batch", type=int, default=64)
    parser.add_argument("--inference-repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    data, pixels, source = benchmark_data(args.data, args.batch_size * args.steps, args.batch_size,
                                          n_test=args.inference_batch)
    images = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25

    print(f"{args.model} on {describe_host().cpu_model}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    report = {"model": args.model, "data": source, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "host": describe_host().to_dict(), "training": training(args, data), "inference": inference(args, images)}
    t = report["training"]
    print(f"\ntraining ({t['precision']}, {t['images_per_epoch']} images/epoch, agents sampled "  # type: ignore[index]
          f"{100 * t['sampled_executed_fraction']:.0f}% of layers): static {t['static_epoch_s']:.2f} s, "  # type: ignore[index]
          f"agents {t['agents_epoch_s']:.2f} s per epoch -> {t['ratio']:.2f}x (target <= 1.3x)")  # type: ignore[index]
    inf = report["inference"]
    print(f"inference, batch {inf['batch']}, fp32, median of {inf['repeats']}:")  # type: ignore[index]
    for name, r in inf["patterns"].items():  # type: ignore[index]
        print(f"  {name}: executed {100 * r['executed_fraction']:.0f}%, static {r['static_ms']:.1f} ms, "
              f"dynamic {r['dynamic_ms']:.1f} ms, ideal {r['ideal_ms']:.1f} ms -> speed-up {r['speedup']:.2f}x of "
              f"ideal {r['ideal_speedup']:.2f}x = {r['fraction_of_ideal']:.2f} of ideal (target >= 0.9)")
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
