"""``edgeskip quickstart``: the README's main job on data every installation has.

Trains the small ``vit-digits`` model on scikit-learn's 8x8 digits, reloads the best
checkpoint from disk, evaluates it on the held-out digits and writes a report and a PNG of
the training curves. Later stages of the pipeline (agents, exits, export, profile, select)
join this command as they land.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from edgeskip.errors import ConfigError
from edgeskip.fsutil import atomic_write_json

__all__ = ["run_quickstart", "MARKER"]

log = logging.getLogger(__name__)
MARKER = "quickstart.json"


def run_quickstart(out: Path, *, epochs: int = 30, force: bool = False, progress: bool = True) -> str:
    """Run the quickstart into ``out`` and return a short human-readable report."""
    from edgeskip.data import load_digits
    from edgeskip.plots import plot_training_curves
    from edgeskip.train.checkpoint import load_checkpoint
    from edgeskip.train.config import TrainConfig
    from edgeskip.train.evaluate import evaluate
    from edgeskip.train.loop import train

    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if out.exists():
        if not ((out / MARKER).is_file() or force):
            raise ConfigError(f"{out} exists and is not a quickstart folder; choose another --out or pass --force")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    data = load_digits()
    cfg = TrainConfig(
        model="vit-digits", dataset="digits", out=str(out / "run"), epochs=epochs, batch_size=64,
        lr=2e-3, warmup_epochs=2.0, augment="none", progress=progress,
    )
    result = train(cfg, data)
    train_seconds = time.perf_counter() - start

    best = load_checkpoint(out / "run" / json.loads((out / "run" / "best.json").read_text())["checkpoint"])
    metrics = evaluate(best.build_model(), data.test, best.normalization)
    plot = plot_training_curves(result.history, out / "training.png", f"vit-digits on digits ({result.precision})")
    report = {
        "model": "vit-digits",
        "params": best.model_config.param_count(),
        "dataset": "digits (scikit-learn, 8x8)",
        "train_images": len(data.train),
        "test_images": len(data.test),
        "epochs": epochs,
        "precision": result.precision,
        "best_epoch": best.meta["epoch"],
        "test_accuracy": metrics["accuracy"],
        "train_seconds": train_seconds,
        "images_per_second": result.final["images_per_second"],
        "checkpoint": str(best.path),
        "plot": str(plot),
    }
    atomic_write_json(out / MARKER, report)
    return (
        f"edgeskip quickstart: vit-digits ({report['params']:,} params) trained {epochs} epochs on "
        f"{len(data.train)} digits in {train_seconds:.0f} s ({result.precision}, "
        f"{report['images_per_second']:.0f} img/s)\n"
        f"  held-out accuracy (best epoch {report['best_epoch']}, reloaded from disk, fp32): "
        f"{metrics['accuracy']:.4f} on {len(data.test)} images (chance 0.10)\n"
        f"  checkpoint: {best.path}\n  curves:     {plot}\n  report:     {out / MARKER}"
    )
