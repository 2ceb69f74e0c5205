"""PyTorch models: ``create("vit10")`` builds a registered variant; ``from_timm`` and ``from_hf`` adapt a user's
pretrained timm or Hugging Face ViT / DeiT (needs the train extra; a Hugging Face model also transformers)."""

from __future__ import annotations

from typing import Any

from edgeskip.config import ViTConfig
from edgeskip.models.adapters import from_hf, from_timm
from edgeskip.models.vit import ViT
from edgeskip.variants import MODEL_CONFIGS, list_models, model_config

__all__ = ["ViT", "ViTConfig", "create", "from_hf", "from_timm", "list_models", "MODEL_CONFIGS"]


def create(name: str, **overrides: Any) -> ViT:
    """Build the registered model ``name``, e.g. ``create("vit9", num_classes=100)``."""
    return ViT(model_config(name, **overrides))
