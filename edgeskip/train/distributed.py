"""torch.distributed set-up for runs launched by ``torchrun`` (DDP; gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "shard_indices"]


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        created = True
    return DistInfo(rank, world, local, device, created)


def shard_indices(n: int, epoch: int, seed: int, rank: int, world: int) -> npt.NDArray[np.int64]:
    """This rank's share of an epoch's shuffled indices; every rank gets the same count.

    Like ``DistributedSampler``: the permutation is padded by wrapping so it divides evenly.
    """
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    pad = (-n) % world
    if pad:
        perm = np.concatenate([perm, perm[:pad]])
    return perm[rank::world].astype(np.int64)
