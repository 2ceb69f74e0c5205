"""The registered model variants, as data (torch-free).

The thesis family ("Reinforcement Learning Based Layer Skipping Vision Transformer"):
vit7/vit10/vit16 are width 384 with 12 heads and an MLP ratio of 1; vit9 is width 192
with 12 heads of size 16 and MLP hidden 384. All use patch 4 on 32x32 inputs; asking for
another image size scales the patch so the token grid stays the same (vit9 at 64x64 uses
patch 8). The small variants exist for tests and the digits quickstart.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgeskip.config import ViTConfig
from edgeskip.errors import ConfigError
from edgeskip.registry import Registry

__all__ = ["MODEL_CONFIGS", "model_config", "list_models"]

MODEL_CONFIGS: Registry[ViTConfig] = Registry("model")

_THESIS = dict(family="vit", patch_size=4, image_size=32, num_classes=10, drop_path=0.1)
MODEL_CONFIGS.register("vit7", ViTConfig(depth=7, width=384, heads=12, mlp_hidden=384, **_THESIS))  # type: ignore[arg-type]
MODEL_CONFIGS.register("vit9", ViTConfig(depth=9, width=192, heads=12, mlp_hidden=384, **_THESIS))  # type: ignore[arg-type]
MODEL_CONFIGS.register("vit10", ViTConfig(depth=10, width=384, heads=12, mlp_hidden=384, **_THESIS))  # type: ignore[arg-type]
MODEL_CONFIGS.register("vit16", ViTConfig(depth=16, width=384, heads=12, mlp_hidden=384, **_THESIS))  # type: ignore[arg-type]
# Small configurations built through the same registry (tests, CI, quickstart).
MODEL_CONFIGS.register(
    "vit-tiny", ViTConfig("vit", depth=4, width=64, heads=4, mlp_hidden=128, patch_size=4, drop_path=0.0)
)
MODEL_CONFIGS.register(
    "vit-digits",
    ViTConfig(
        "vit", depth=6, width=64, heads=4, mlp_hidden=128, patch_size=2, image_size=8,
        in_channels=1, num_classes=10, drop_path=0.0,
    ),
)
# The quickstart's model: the digits at vit9's width, so that a layer carries real work. At width 64 a layer
# took 0.03 ms at batch 1, less than the cost of deciding to skip it, and no dynamic path could beat static.
MODEL_CONFIGS.register(
    "vit-digits-wide",
    ViTConfig(
        "vit", depth=6, width=192, heads=6, mlp_hidden=384, patch_size=2, image_size=8,
        in_channels=1, num_classes=10, drop_path=0.0,
    ),
)


def model_config(name: str, **overrides: Any) -> ViTConfig:
    """The config registered as ``name`` with ``overrides`` applied.

    Changing ``image_size`` without giving ``patch_size`` scales the patch with it.
    """
    base = MODEL_CONFIGS.get(name)
    if "image_size" in overrides and "patch_size" not in overrides:
        size = overrides["image_size"]
        if not isinstance(size, int) or size < 1 or (size * base.patch_size) % base.image_size:
            raise ConfigError(
                f"{name} cannot scale its patch {base.patch_size} (for {base.image_size}px) "
                f"to image size {size!r}; give patch_size explicitly"
            )
        overrides["patch_size"] = size * base.patch_size // base.image_size
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ViTConfig)}
    if unknown:
        raise ConfigError(f"unknown model override(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(base, **overrides)


def list_models() -> list[str]:
    return MODEL_CONFIGS.names()
