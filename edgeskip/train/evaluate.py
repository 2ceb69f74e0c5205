"""Batched evaluation and the shared image -> tensor preparation of training."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from edgeskip.data.dataset import ImageDataset
from edgeskip.host import cpu_has_bf16
from edgeskip.errors import ConfigError
from edgeskip.normalization import Normalization

__all__ = ["to_tensor", "Normalizer", "autocast_dtype", "autocast", "evaluate", "rank_batches", "image_batches",
           "eval_mode"]


def to_tensor(images: npt.NDArray[np.uint8], device: torch.device) -> Tensor:
    """uint8 NHWC -> float NCHW in [0, 1] on ``device``."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)


class Normalizer(nn.Module):
    """``(x - mean) / std`` per channel; equals :func:`edgeskip.normalization.preprocess`."""

    mean: Tensor
    std: Tensor

    def __init__(self, norm: Normalization) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(norm.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "fp16":
        raise ConfigError("fp16 autocast needs a CUDA GPU; use --precision bf16 or fp32 on a CPU")
    if precision == "auto":
        return torch.bfloat16 if cpu_has_bf16() else None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def rank_batches(n: int, size: int, rank: int = 0, world: int = 1) -> Iterator[npt.NDArray[np.int64]]:
    """Index batches over this rank's share (every ``world``-th item, from ``rank``)."""
    idx = np.arange(rank, n, world)
    for start in range(0, len(idx), size):
        yield idx[start : start + size]


def image_batches(data: ImageDataset, norm: Normalization, device: torch.device, batch_size: int, rank: int = 0,
                  world: int = 1) -> Iterator[tuple[npt.NDArray[np.int64], Tensor, Tensor]]:
    """(indices, normalised float images, labels) per batch of this rank's share of ``data``."""
    normalize = Normalizer(norm).to(device)
    for idx in rank_batches(len(data), batch_size, rank, world):
        yield idx, normalize(to_tensor(data.images[idx], device)), torch.from_numpy(data.labels[idx]).to(device)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block, back in its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageDataset,
    norm: Normalization,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``data``.

    Under DDP each rank evaluates every ``world``-th image and the sums are all-reduced.
    """
    device = device or next(model.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss, count
    with eval_mode(model):
        for idx, x, y in image_batches(data, norm, device, batch_size, rank, world):
            with autocast(device, dtype):
                logits = model(x)
            logits = logits.float()
            sums[0] += (logits.argmax(1) == y).sum()
            sums[1] += F.cross_entropy(logits, y, reduction="sum")
            sums[2] += len(idx)
    if world > 1:
        dist.all_reduce(sums)
    count = max(float(sums[2]), 1.0)
    return {"accuracy": float(sums[0]) / count, "loss": float(sums[1]) / count, "count": float(sums[2])}
