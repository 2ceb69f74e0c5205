"""DDP through torch.distributed: two CPU processes with gloo end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgeskip.train.checkpoint import load_checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["static", "agents"])
def test_two_gloo_ranks_end_identical(tmp_path: Path, kind: str) -> None:
    """With agents, ranks skip different layers per step: DDP must still keep them in sync."""
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(worker), str(tmp_path), kind],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    saved = load_checkpoint(tmp_path / "run")
    assert saved.meta["train"]["world_size"] == 2
    assert saved.has_agents == (kind == "agents")
    # Each rank trained on its own half of the data, so equality proves gradient sync.
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(value, rank0[key], rtol=0, atol=0)
    assert saved.metrics["epoch"] == 2 and 0.0 <= saved.metrics["test_accuracy"] <= 1.0
