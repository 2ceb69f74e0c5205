"""Skip agents: per-sample execution, thresholds, removed layers, bad input, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgeskip.policy import SkipConfig
from edgeskip.agents.model import SkipViT
from edgeskip.errors import ConfigError, DataError
from edgeskip.models.vit import ViT
from edgeskip.normalization import get_normalization
from edgeskip.train.checkpoint import load_checkpoint, save_checkpoint
from edgeskip.variants import model_config


def mixed_model(seed: int = 0, threshold: float = 0.5) -> SkipViT:
    """A vit-tiny whose agents disagree across inputs (so batches mix run and skip)."""
    torch.manual_seed(seed)
    model = SkipViT(model_config("vit-tiny"), SkipConfig.uniform(4, threshold)).eval()
    with torch.no_grad():
        for agent in model.agents:
            agent.weight.normal_(std=1.0)
            agent.bias.zero_()
    return model


def count_block_calls(model: SkipViT) -> list[int]:
    rows = [0] * model.depth

    def hook(j: int):  # type: ignore[no-untyped-def]
        def fn(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            rows[j] += inputs[0].shape[0]
        return fn

    for j, block in enumerate(model.blocks):
        block.register_forward_hook(hook(j))
    return rows


def test_gather_scatter_equals_running_each_sample_alone() -> None:
    model = mixed_model()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        batch = model(x)
        executed = batch.executed
        assert 0 < executed.float().mean() < 1, "the test needs a mix of run and skip"
        assert len(set(batch.paths())) > 1
        for i in range(len(x)):
            alone = model(x[i : i + 1])
            assert torch.equal(alone.executed[0], executed[i])
            torch.testing.assert_close(alone.logits[0], batch.logits[i], rtol=1e-5, atol=1e-5)


def test_skipped_rows_cost_nothing() -> None:
    model = mixed_model()
    rows = count_block_calls(model)
    with torch.no_grad():
        out = model(torch.randn(16, 3, 32, 32))
    assert rows == out.executed.sum(0).tolist()


def test_fixed_pattern_equals_manual_layers() -> None:
    model = mixed_model()
    x = torch.randn(6, 3, 32, 32)
    pattern = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1], [1, 0, 0, 0], [1, 1, 0, 1]]).bool()
    with torch.no_grad():
        out = model(x, executed=pattern)
        for i in range(len(x)):
            tokens = model.embed(x[i : i + 1])
            for j in range(model.depth):
                if pattern[i, j]:
                    tokens = model.blocks[j](tokens)
            torch.testing.assert_close(model.head(tokens)[0], out.logits[i], rtol=1e-5, atol=1e-5)
    assert torch.equal(out.executed, pattern)


def test_threshold_zero_runs_everything_and_equals_static_exactly() -> None:
    model = mixed_model(threshold=0.0)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        static = ViT.forward(model, x)
    assert out.executed.all()
    assert torch.equal(out.logits, static)


def test_removed_layer_never_runs() -> None:
    model = mixed_model()
    model.set_skip_config(SkipConfig((0.0, None, 0.5, None)))
    rows = count_block_calls(model)
    x = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        assert not model(x).executed[:, [1, 3]].any()
        model.train()
        sampled = model(x)  # Bernoulli actions in training
    assert not sampled.executed[:, [1, 3]].any()
    assert rows[1] == rows[3] == 0 and rows[0] == 32 + int(sampled.executed[:, 0].sum())
    assert sampled.log_probs is not None and torch.all(sampled.log_probs[:, [1, 3]] == 0)


def test_sampling_draws_from_the_agent_probabilities() -> None:
    model = mixed_model().train()
    with torch.no_grad():
        for agent in model.agents:
            agent.weight.zero_()
            agent.bias.fill_(torch.logit(torch.tensor(0.3)).item())
    torch.manual_seed(1)
    out = model(torch.randn(512, 3, 32, 32))
    assert out.executed.float().mean().item() == pytest.approx(0.3, abs=0.03)
    expected = torch.where(out.executed, torch.log(torch.tensor(0.3)), torch.log(torch.tensor(0.7)))
    torch.testing.assert_close(out.log_probs, expected, rtol=1e-5, atol=1e-5)
    assert out.states is not None and out.states.shape == (512, 4, 64)


def test_agent_parameter_overhead() -> None:
    for name in ("vit9", "vit10"):
        cfg = model_config(name)
        assert SkipViT(cfg).agent_parameter_count() == (cfg.width + 1) * cfg.depth


def test_empty_batch_gives_an_empty_result() -> None:
    out = mixed_model()(torch.zeros(0, 3, 32, 32))
    assert out.logits.shape == (0, 10) and out.executed.shape == (0, 4) and out.paths() == []


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.full((2, 3, 32, 32), float("nan")), "NaN or infinite"),
        (torch.full((2, 3, 32, 32), float("inf")), "NaN or infinite"),
        (torch.zeros(2, 1, 32, 32), r"expected images of shape \(B, 3, 32, 32\)"),
        (torch.zeros(3, 32, 32), r"got \(3, 32, 32\)"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "expected float images"),
    ],
)
def test_bad_images_are_clear(images: torch.Tensor, message: str) -> None:
    with pytest.raises(DataError, match=message):
        mixed_model()(images)


@pytest.mark.parametrize(
    "thresholds, message",
    [
        ((0.5, 1.5, 0.5, 0.5), "threshold of layer 1 must be in"),
        ((0.5, -0.1, 0.5, 0.5), "threshold of layer 1 must be in"),
        ((0.5, float("nan"), 0.5, 0.5), "threshold of layer 1 must be in"),
        ((None, None, None, None), "every layer is removed"),
        ((), "at least one layer"),
    ],
)
def test_bad_skip_configs(thresholds: tuple[float | None, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SkipConfig(thresholds)


def test_wrong_depth_and_wrong_pattern() -> None:
    model = mixed_model()
    with pytest.raises(ConfigError, match="3 layer"):
        model.set_skip_config(SkipConfig((0.5, 0.5, 0.5)))
    with pytest.raises(ConfigError, match="executed pattern must have shape"):
        model(torch.zeros(2, 3, 32, 32), executed=torch.ones(2, 3, dtype=torch.bool))


def test_skip_checkpoint_round_trip(tmp_path: Path) -> None:
    model = mixed_model()
    model.set_skip_config(SkipConfig((0.25, None, 0.75, 0.5)))
    save_checkpoint(tmp_path / "ckpt", model, model_name="vit-tiny", model_config=model.config, dataset="cifar10",
                    normalization=get_normalization("cifar10"), classes=tuple("abcdefghij"))
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.has_agents
    loaded = ckpt.build_model()
    assert isinstance(loaded, SkipViT) and loaded.skip == model.skip
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.executed, b.executed)
