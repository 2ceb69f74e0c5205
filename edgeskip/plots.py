"""PNG plots of what a person would rather look at than read (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeskip.fsutil import atomic_write_bytes

__all__ = ["plot_training_curves", "save_figure"]


def save_figure(fig: Any, out: str | Path) -> Path:
    """Save a matplotlib figure as PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120)
    finally:
        plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return Path(out)


def plot_training_curves(history: Sequence[dict[str, Any]], out: str | Path, title: str) -> Path:
    """Loss and accuracy per epoch (train and test) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train (smoothed labels)")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], label="train")
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], label="test")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, out)
