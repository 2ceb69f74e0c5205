"""``edgeskip train``: one entry point that picks the trainer a configuration asks for."""

from __future__ import annotations

from edgeskip.data import DatasetSplits
from edgeskip.train.agents import AgentTrainer
from edgeskip.train.config import TrainConfig
from edgeskip.train.loop import Trainer, TrainResult

__all__ = ["train"]


def train(cfg: TrainConfig, data: DatasetSplits | None = None) -> TrainResult:
    """Run training as ``cfg`` says (with skip agents if ``cfg.agents``); under torchrun every rank calls this."""
    trainer = AgentTrainer(cfg, data) if cfg.agents else Trainer(cfg, data)
    return trainer.run()
