"""Run by test_ddp.py under torchrun: train on the digits, save this rank's final weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from edgeskip.train.config import TrainConfig
from edgeskip.train.loop import Trainer

out = Path(sys.argv[1])
agents = len(sys.argv) > 2 and sys.argv[2] == "agents"
cfg = TrainConfig(model="vit-digits", dataset="digits", out=str(out / "run"), epochs=2, batch_size=64,
                  augment="none", precision="fp32", progress=False, limit_per_class=40, threads=1, agents=agents)
if agents:
    from edgeskip.train.agents import AgentTrainer

    trainer: Trainer = AgentTrainer(cfg)
else:
    trainer = Trainer(cfg)
assert trainer.dist.world_size == 2 and dist.get_backend() == "gloo"
trainer.run()
state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
save_file(state, str(out / f"rank{trainer.dist.rank}.safetensors"))
dist.destroy_process_group()
