"""Evaluation of a skipping model: accuracy, executed layers, per-layer rates, paths."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from edgeskip.agents.model import SkipViT
from edgeskip.data.dataset import ImageDataset
from edgeskip.normalization import Normalization
from edgeskip.train.evaluate import autocast, eval_mode, image_batches

__all__ = ["SkipReport", "evaluate_skipping"]


@dataclasses.dataclass(frozen=True)
class SkipReport:
    accuracy: float
    loss: float
    count: int
    depth: int
    mean_executed: float  # layers per input
    layer_rates: tuple[float, ...]  # fraction of inputs that ran each layer
    paths: tuple[tuple[str, int], ...]  # (path, count), most common first

    @property
    def executed_fraction(self) -> float:
        return self.mean_executed / self.depth if self.depth else 0.0

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        paths = self.paths[:top] if top else self.paths
        return {
            "accuracy": self.accuracy, "loss": self.loss, "count": self.count, "depth": self.depth,
            "mean_executed_layers": self.mean_executed, "executed_fraction": self.executed_fraction,
            "layer_execution_rates": list(self.layer_rates),
            "paths": [{"path": p, "count": c, "percent": 100.0 * c / max(self.count, 1)} for p, c in paths],
            "distinct_paths": len(self.paths),
        }

    def table(self, top: int = 10) -> str:
        """A plain-text report: summary, per-layer rates, the most common paths."""
        lines = [
            f"accuracy {self.accuracy:.4f} on {self.count} images; mean executed layers "
            f"{self.mean_executed:.2f} of {self.depth} ({100 * self.executed_fraction:.1f}%)",
            "layer execution rates: " + " ".join(f"L{j}:{100 * r:.0f}%" for j, r in enumerate(self.layer_rates)),
            f"{'path':<{max(self.depth, 4) + 2}}{'count':>8}{'percent':>9}",
        ]
        for path, count in self.paths[:top]:
            lines.append(f"{path:<{max(self.depth, 4) + 2}}{count:>8}{100 * count / max(self.count, 1):>8.1f}%")
        if len(self.paths) > top:
            rest = sum(c for _, c in self.paths[top:])
            lines.append(f"({len(self.paths) - top} more paths: {rest} images)")
        return "\n".join(lines)


@torch.no_grad()
def evaluate_skipping(
    model: SkipViT,
    data: ImageDataset,
    norm: Normalization,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    rank: int = 0,
    world: int = 1,
) -> SkipReport:
    """Run ``model`` with its thresholds over ``data`` (every ``world``-th image per rank)."""
    device = device or next(model.parameters()).device
    correct, loss_sum, count = 0, 0.0, 0
    rate_sum = np.zeros(model.depth)
    paths: collections.Counter[str] = collections.Counter()
    with eval_mode(model):
        for idx, x, y in image_batches(data, norm, device, batch_size, rank, world):
            with autocast(device, dtype):
                out = model(x, sample=False)
            logits = out.logits.float()
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            count += len(idx)
            rate_sum += out.executed.sum(0).cpu().numpy()
            paths.update(out.paths())
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (correct, loss_sum, count, rate_sum, paths))
        correct = sum(g[0] for g in gathered)
        loss_sum = sum(g[1] for g in gathered)
        count = sum(g[2] for g in gathered)
        rate_sum = sum(g[3] for g in gathered)
        paths = sum((g[4] for g in gathered), collections.Counter())
    n = max(count, 1)
    rates = tuple(float(r) / n for r in rate_sum)
    return SkipReport(
        accuracy=correct / n, loss=loss_sum / n, count=count, depth=model.depth,
        mean_executed=float(sum(rates)), layer_rates=rates,
        paths=tuple(sorted(paths.items(), key=lambda kv: (-kv[1], kv[0]))),
    )
