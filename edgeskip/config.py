"""Frozen, typed configuration dataclasses shared by training, export and runtime.

Torch-free on purpose: the runtime reads the same :class:`ViTConfig` from a bundle.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from edgeskip.errors import ConfigError

__all__ = ["DECISION_TOKENS", "HEAD_TOKENS", "ViTConfig", "from_dict", "to_dict"]

HEAD_TOKENS = ("cls", "cls+dist")
DECISION_TOKENS = ("cls", "cls+dist")

C = TypeVar("C")


def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a clear error."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """JSON-ready dict of a dataclass (tuples become lists)."""
    return json_ready(dataclasses.asdict(obj))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture of one pre-norm Vision Transformer.

    ``embed -> blocks[0..depth-1] -> head`` is the seam along which edgeskip runs,
    skips and exports one layer at a time.
    """

    family: str
    depth: int
    width: int
    heads: int
    mlp_hidden: int
    patch_size: int
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    drop_path: float = 0.1
    layer_norm_eps: float = 1e-6
    distilled: bool = False  # a distillation token after CLS (DeiT)
    layer_scale: bool = False  # a learned per-channel scale on both residual branches (timm's ls1 / ls2)
    head_tokens: str = "cls"  # what the head classifies: "cls", or "cls+dist" (two heads, logits averaged: DeiT)
    decision_token: str = "cls"  # what the agents and the E²CM cls feature read: "cls", or "cls+dist" (their mean)

    def __post_init__(self) -> None:
        positive = ("depth", "width", "heads", "mlp_hidden", "patch_size", "image_size", "in_channels")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ViTConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ConfigError(f"ViTConfig.num_classes must be an integer >= 2, got {self.num_classes!r}")
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image size {self.image_size} is not divisible by patch size {self.patch_size}"
            )
        if not (isinstance(self.drop_path, (int, float)) and 0.0 <= self.drop_path < 1.0):
            raise ConfigError(f"drop_path must be in [0, 1), got {self.drop_path!r}")
        if not (isinstance(self.layer_norm_eps, float) and math.isfinite(self.layer_norm_eps)):
            raise ConfigError(f"layer_norm_eps must be a finite float, got {self.layer_norm_eps!r}")
        for name in ("distilled", "layer_scale"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"ViTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.head_tokens not in HEAD_TOKENS:
            raise ConfigError(f"head_tokens must be one of {', '.join(HEAD_TOKENS)}, got {self.head_tokens!r}")
        if self.head_tokens == "cls+dist" and not self.distilled:
            raise ConfigError("head_tokens 'cls+dist' needs the distillation token (distilled=true)")
        if self.decision_token not in DECISION_TOKENS:
            raise ConfigError(f"decision_token must be one of {', '.join(DECISION_TOKENS)}, got {self.decision_token!r}")
        if self.decision_token == "cls+dist" and not self.distilled:
            raise ConfigError("decision_token 'cls+dist' needs the distillation token: a DeiT with distillation")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches: CLS, and the distillation token where there is one."""
        return 1 + int(self.distilled)

    @property
    def num_tokens(self) -> int:
        """Patches plus the prefix tokens."""
        return self.num_patches + self.prefix_tokens

    def param_count(self) -> int:
        """Exact number of parameters of the model this config builds."""
        d, m, c = self.width, self.mlp_hidden, self.num_classes
        embed = self.in_channels * self.patch_size**2 * d + d + self.prefix_tokens * d + self.num_tokens * d
        block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * m + m) + (m * d + d) + 2 * d * self.layer_scale
        head = 2 * d + (d * c + c) * (2 if self.head_tokens == "cls+dist" else 1)
        return embed + self.depth * block + head

    def layer_flops(self, batch: int = 1) -> int:
        """Multiply-adds of one transformer block for ``batch`` inputs (no norms/softmax)."""
        n, d, m = self.num_tokens, self.width, self.mlp_hidden
        return batch * (n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * m)
