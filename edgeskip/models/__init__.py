"""PyTorch models: ``create("vit10")`` builds a registered variant (needs the train extra)."""

from __future__ import annotations

from typing import Any

from edgeskip.config import ViTConfig
from edgeskip.models.vit import ViT
from edgeskip.variants import MODEL_CONFIGS, list_models, model_config

__all__ = ["ViT", "ViTConfig", "create", "list_models", "MODEL_CONFIGS"]


def create(name: str, **overrides: Any) -> ViT:
    """Build the registered model ``name``, e.g. ``create("vit9", num_classes=100)``."""
    return ViT(model_config(name, **overrides))
