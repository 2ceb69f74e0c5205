"""The units a bundle is cut into, as small torch modules with one input and one output.

``embed`` (images -> tokens), ``layer_NN`` (tokens -> tokens), ``head`` (tokens -> logits)
and ``agent_NN`` (tokens -> probability that layer NN runs). Every exporter (ONNX, TFLite,
TensorRT's ONNX) converts exactly these modules, so all formats cut the model at the same
seams and are checked against the same PyTorch reference.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from edgeskip.bundle import TensorSpec, agent_name, stage_name
from edgeskip.config import ViTConfig
from edgeskip.models.vit import ViT
from edgeskip.rule import decision_input

__all__ = ["StageModule", "AgentProbability", "StaticModel", "stage_modules", "agent_modules"]

BATCH = "batch"


class AgentProbability(nn.Module):
    """Agent j as a stage: tokens (B, N, D) -> sigmoid(w . cls + b), shape (B,) (``cls``: the model's
    :func:`~edgeskip.rule.decision_input`)."""

    def __init__(self, linear: nn.Linear, token: str = "cls") -> None:
        super().__init__()
        self.linear = linear
        self.token = token

    def forward(self, tokens: Tensor) -> Tensor:
        return torch.sigmoid(self.linear(decision_input(tokens, self.token))).squeeze(1)


class StaticModel(nn.Module):
    """embed -> every non-removed layer -> head: the monolithic model the per-stage loop is measured against."""

    def __init__(self, model: ViT, removed: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.model = model
        self.keep = [j for j in range(model.depth) if j not in removed]

    def forward(self, images: Tensor) -> Tensor:
        x = self.model.embed(images)
        for j in self.keep:
            x = self.model.blocks[j](x)
        return self.model.head(x)  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class StageModule:
    """One stage: its name, kind, layer index, module and tensor specs (batch axis named)."""

    name: str
    kind: str
    layer: int | None
    module: nn.Module
    input: TensorSpec
    output: TensorSpec

    def example(self, batch: int = 2, *, seed: int = 0) -> Tensor:
        """A random input of this stage's shape (for tracing; batch > 1 keeps the axis dynamic)."""
        shape = tuple(batch if d == BATCH else int(d) for d in self.input.shape)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _specs(cfg: ViTConfig) -> tuple[TensorSpec, TensorSpec, TensorSpec]:
    images = TensorSpec(name="images", shape=(BATCH, cfg.in_channels, cfg.image_size, cfg.image_size), dtype="float32")
    tokens = TensorSpec(name="tokens", shape=(BATCH, cfg.num_tokens, cfg.width), dtype="float32")
    logits = TensorSpec(name="logits", shape=(BATCH, cfg.num_classes), dtype="float32")
    return images, tokens, logits


def stage_modules(model: ViT, removed: tuple[int, ...] = ()) -> list[StageModule]:
    """embed, the non-removed layers in order, head."""
    images, tokens, logits = _specs(model.config)
    out = [StageModule("embed", "embed", None, model.embed, images, tokens)]
    # a layer's output needs its own name: ONNX would silently rename a clash ("tokens.1")
    layer_out = dataclasses.replace(tokens, name="tokens_out")
    out += [StageModule(stage_name(j), "layer", j, block, tokens, layer_out)
            for j, block in enumerate(model.blocks) if j not in removed]
    out.append(StageModule("head", "head", None, model.head, tokens, logits))
    return out


def agent_modules(model: ViT, removed: tuple[int, ...] = ()) -> list[StageModule]:
    """One probability stage per non-removed layer of a model with agents (else empty)."""
    agents = getattr(model, "agents", None)
    if agents is None:
        return []
    _, tokens, _ = _specs(model.config)
    prob = TensorSpec(name="probability", shape=(BATCH,), dtype="float32")
    return [StageModule(agent_name(j), "agent", j, AgentProbability(lin, model.config.decision_token), tokens, prob)
            for j, lin in enumerate(agents) if j not in removed]
