"""The picture of a Pareto front: accuracy against each cost it was searched for, the static model marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeskip.front import ParetoFront
from edgeskip.plots import save_figure

__all__ = ["plot_front"]

_LABELS = {"compute": "compute (share of the static model's MACs)",
           "latency_ms": "predicted latency per call, batch {batch} (ms)",
           "energy_mj": "predicted energy per call (mJ){estimate}"}


def plot_front(front: ParetoFront, out: str | Path, title: str) -> Path:
    """One panel per cost figure of the front (compute; or latency and energy), written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("compute", "latency_ms", "energy_mj") if k in front.objectives]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), constrained_layout=True, squeeze=False)
    estimate = " (estimate)" if front.energy_source == "estimate" else ""
    for ax, key in zip(axes[0], keys, strict=True):
        pts = sorted(front.points, key=lambda p: p.cost(key))
        xs, ys = [p.cost(key) for p in pts], [p.accuracy for p in pts]
        ax.step(xs, np.maximum.accumulate(ys), where="post", color="tab:blue", alpha=0.4)
        ax.scatter(xs, ys, color="tab:blue", zorder=3, label=f"Pareto set ({len(pts)} configurations)")
        ax.scatter([front.static.cost(key)], [front.static.accuracy], marker="*", s=180, color="tab:red", zorder=4,
                   label="static model (every layer)")
        if front.reference is not None:
            ax.scatter([front.reference.cost(key)], [front.reference.accuracy], marker="D", s=60, color="tab:orange",
                       zorder=4, label="every agent threshold 0.5")
        ax.set(xlabel=_LABELS[key].format(batch=front.batch, estimate=estimate), ylabel="accuracy (search images)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(f"{title}\nhypervolume {front.hypervolume:.3f}, {front.meta.get('images')} images, "
                 f"{front.meta.get('evaluations')} configurations evaluated")
    return save_figure(fig, out)
