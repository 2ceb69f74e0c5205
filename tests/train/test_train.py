"""Real (short) training runs, the schedule, sharding and resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeskip.data import DatasetSplits, load_cifar10, load_digits
from edgeskip.errors import ConfigError, UnknownNameError
from edgeskip.train.checkpoint import load_checkpoint
from edgeskip.train.config import TrainConfig
from edgeskip.train.distributed import shard_indices
from edgeskip.train.run import train
from edgeskip.train.schedule import warmup_cosine


@pytest.fixture(scope="module")
def digits_small() -> DatasetSplits:
    d = load_digits()
    return DatasetSplits("digits", d.train.per_class(30), d.test.per_class(10))


def digits_config(out: Path, **kw: object) -> TrainConfig:
    base = dict(model="vit-digits", dataset="digits", out=str(out), epochs=2, batch_size=32, augment="none",
                precision="fp32", progress=False, warmup_epochs=0.5)
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.slow
def test_short_cifar10_training_beats_chance(cifar10_tarball: Path, tmp_path: Path) -> None:
    full = load_cifar10(cifar10_tarball, limit_per_class=200, progress=False)
    data = DatasetSplits("cifar10", full.train, full.test.per_class(50))
    cfg = TrainConfig(model="vit-tiny", dataset="cifar10", out=str(tmp_path / "run"), epochs=5, batch_size=64,
                      augment="full", lr=1e-3, warmup_epochs=0.5, progress=False)
    result = train(cfg, data)
    accs = [h["test_accuracy"] for h in result.history]
    # 500 test images: chance is 0.10 with a standard deviation of about 0.013.
    assert max(accs) > 0.2, accs
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.dataset == "cifar10" and ckpt.normalization.mean == (0.4914, 0.4822, 0.4465)
    assert ckpt.meta["train"]["augment"] == "full" and ckpt.meta["epoch"] == 5


def test_resume_equals_an_uninterrupted_run(digits_small: DatasetSplits, tmp_path: Path) -> None:
    straight = train(digits_config(tmp_path / "straight", epochs=3), digits_small)
    # A run that died after saving epoch 2: same config, epoch 3 never written.
    run = tmp_path / "resumed"
    train(digits_config(run, epochs=3), digits_small)
    shutil.rmtree(run / "checkpoints" / "epoch-0003")
    (run / "latest.json").write_text(json.dumps({"checkpoint": "checkpoints/epoch-0002", "epoch": 2}))
    resumed = train(digits_config(run, epochs=3, resume=True), digits_small)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a = load_checkpoint(straight.checkpoint).state_dict()
    b = load_checkpoint(resumed.checkpoint).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert resumed.history[-1]["test_accuracy"] == straight.history[-1]["test_accuracy"]


def test_existing_run_needs_resume(digits_small: DatasetSplits, tmp_path: Path) -> None:
    train(digits_config(tmp_path / "run", epochs=1), digits_small)
    with pytest.raises(ConfigError, match="pass --resume"):
        train(digits_config(tmp_path / "run", epochs=2), digits_small)


def test_checkpoints_are_pruned_but_best_kept(digits_small: DatasetSplits, tmp_path: Path) -> None:
    result = train(digits_config(tmp_path / "run", epochs=4, keep_checkpoints=1, lr=3e-3), digits_small)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert "epoch-0004" in kept and Path(best["checkpoint"]).name in kept
    assert len(kept) <= 2
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 4 == len(result.history)
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp"))


def test_schedule() -> None:
    lrs = [warmup_cosine(s, 100, 10, 1.0, 0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3)
    assert warmup_cosine(0, 10, 0, 1.0, 0.0) == pytest.approx(1.0)


@pytest.mark.parametrize("n, world", [(10, 1), (10, 2), (11, 2), (7, 3)])
def test_sharding_covers_every_index(n: int, world: int) -> None:
    shards = [shard_indices(n, epoch=3, seed=1, rank=r, world=world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert set(np.concatenate(shards).tolist()) == set(range(n))
    assert not np.array_equal(shard_indices(n, 3, 1, 0, 1), shard_indices(n, 4, 1, 0, 1)) or n < 3


@pytest.mark.parametrize(
    "kw, error",
    [
        ({"model": "vit11"}, UnknownNameError),
        ({"epochs": 0}, ConfigError),
        ({"precision": "fp8"}, ConfigError),
        ({"lr": -1.0}, ConfigError),
        ({"augment": "heavy"}, ConfigError),
        ({"dataset": "mnist"}, ConfigError),
    ],
)
def test_bad_train_config(kw: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        TrainConfig(**kw)  # type: ignore[arg-type]


def test_fp16_on_cpu_is_a_clear_error(digits_small: DatasetSplits, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("fp16 autocast is valid on a CUDA machine")
    with pytest.raises(ConfigError, match="fp16 autocast needs a CUDA GPU"):
        train(digits_config(tmp_path / "run", precision="fp16"), digits_small)


@pytest.mark.slow
def test_agent_training_on_cifar10_learns_to_skip(cifar10_tarball: Path, tmp_path: Path) -> None:
    full = load_cifar10(cifar10_tarball, limit_per_class=200, progress=False)
    data = DatasetSplits("cifar10", full.train, full.test.per_class(50))
    cfg = TrainConfig(model="vit-tiny", dataset="cifar10", out=str(tmp_path / "run"), epochs=6, batch_size=64,
                      augment="basic", lr=2e-3, warmup_epochs=0.5, progress=False, agents=True)
    result = train(cfg, data)
    first, last = result.history[0], result.history[-1]
    assert last["train_exec"] < first["train_exec"] - 0.05, [h["train_exec"] for h in result.history]
    assert last["test_executed_fraction"] < 1.0
    assert max(h["test_accuracy"] for h in result.history) > 0.2  # chance 0.1 on 500 images
    assert last["train_reward"] > first["train_reward"]
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.has_agents and ckpt.meta["agents"]["skip"]["thresholds"] == [0.5] * 4
    paths = last["test_paths"]
    assert sum(p["count"] for p in paths) <= 500 and paths == sorted(paths, key=lambda p: -p["count"])


def test_init_from_a_static_checkpoint(digits_small: DatasetSplits, tmp_path: Path) -> None:
    static = train(digits_config(tmp_path / "static", epochs=1), digits_small)
    agents = train(digits_config(tmp_path / "agents", epochs=1, agents=True, init=str(static.checkpoint), lr=1e-9,
                                 min_lr=0.0, warmup_epochs=0.0), digits_small)
    a = load_checkpoint(static.checkpoint).state_dict()
    b = load_checkpoint(agents.checkpoint).state_dict()
    assert {k for k in b if k.startswith("agents.")} and all(k in b for k in a)
    torch.testing.assert_close(a["blocks.0.mlp.fc1.weight"], b["blocks.0.mlp.fc1.weight"], atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="add --agents"):
        digits_config(tmp_path / "x", init=str(static.checkpoint))


def test_a_nan_loss_stops_training_with_a_clear_error(digits_small: DatasetSplits, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeskip.errors import EdgeskipError
    from edgeskip.train.loop import Trainer, TrainingDivergedError

    original = Trainer.compute_loss

    def nan_loss(self: Trainer, images: torch.Tensor, labels: torch.Tensor):  # type: ignore[no-untyped-def]
        loss, logits, extra = original(self, images, labels)
        return loss * float("nan"), logits, extra

    monkeypatch.setattr(Trainer, "compute_loss", nan_loss)
    with pytest.raises(TrainingDivergedError, match="lower --lr") as info:
        train(digits_config(tmp_path / "run", epochs=1), digits_small)
    assert isinstance(info.value, EdgeskipError)
    assert not (tmp_path / "run" / "latest.json").exists()
