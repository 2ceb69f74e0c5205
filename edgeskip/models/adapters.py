"""Bring your own pretrained ViT: a Hugging Face ``ViTForImageClassification`` as an edgeskip ViT.

:func:`from_hf` takes the model object or a local ``save_pretrained`` folder (never the network) and copies
its weights into edgeskip's own layer-addressable :class:`~edgeskip.models.vit.ViT` (``embed -> blocks[i]
-> head``, the seams every later step runs, skips and exports one layer at a time). The architectures are the
same pre-norm transformer, so nothing is approximated: the adapted model's logits equal the original's,
checked on a random batch before it is returned. What does not map (another activation, a distillation
token, a parameter left over) is one :class:`AdapterError` naming it. The agents and the E²CM ``cls``
feature read the CLS token, as in the thesis models.

Supported: transformers' ``ViTForImageClassification`` in the 5.x layout (``vit.layers.N.attention.q_proj``
and so on; the version installed here). Not yet: DeiT's distillation token, timm models.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from edgeskip.config import ViTConfig
from edgeskip.errors import ConfigError
from edgeskip.models.vit import ViT
from edgeskip.normalization import Normalization

__all__ = ["Adapted", "AdapterError", "FAMILY", "from_hf"]

FAMILY = "hf-vit"
HF_VIT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # ViTImageProcessor's defaults
TOLERANCE = 1e-4  # max |logits| difference against the original (fp32; measured 1e-6 on random weights)


class AdapterError(ConfigError):
    """A model that does not map onto edgeskip's ViT, or a folder that holds no such model."""


@dataclasses.dataclass(frozen=True)
class Adapted:
    """The adapted model with what its checkpoint needs: class names (index = label) and input normalisation."""

    model: ViT
    classes: tuple[str, ...]
    normalization: Normalization
    source: str
    max_abs_diff: float  # logits against the original on the check batch


def from_hf(model_or_path: Any, *, normalization: Normalization | None = None) -> Adapted:
    """An edgeskip ViT with the weights of a Hugging Face ViT classifier (an object, or a local folder written by
    ``save_pretrained``); ``normalization`` overrides the folder's ``preprocessor_config.json`` (default: the
    ViT image processor's 0.5 / 0.5)."""
    hf, folder = _load(model_or_path)
    name = type(hf).__name__
    if "deit" in name.lower():
        raise AdapterError(f"{name}: DeiT's distillation token is not supported yet (ViTForImageClassification is)")
    if name != "ViTForImageClassification":
        raise AdapterError(f"{name} is not supported: edgeskip adapts transformers' ViTForImageClassification")
    c = hf.config
    if c.hidden_act != "gelu":
        raise AdapterError(f"{name}: activation {c.hidden_act!r} is not supported (edgeskip's blocks use exact GELU)")
    size = c.image_size if isinstance(c.image_size, int) else None
    patch = c.patch_size if isinstance(c.patch_size, int) else None
    if size is None or patch is None:
        raise AdapterError(f"{name}: non-square images or patches ({c.image_size!r}, {c.patch_size!r}) are not supported")
    try:
        cfg = ViTConfig(family=FAMILY, depth=c.num_hidden_layers, width=c.hidden_size, heads=c.num_attention_heads,
                        mlp_hidden=c.intermediate_size, patch_size=patch, image_size=size, in_channels=c.num_channels,
                        num_classes=c.num_labels, drop_path=0.0, layer_norm_eps=float(c.layer_norm_eps))
    except ConfigError as exc:
        raise AdapterError(f"{name}: {exc}") from None
    model = ViT(cfg)
    model.load_state_dict(_mapped(hf.state_dict(), cfg.depth, name))
    model.eval()
    hf.eval()
    x = torch.randn(2, cfg.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((model(x) - hf(pixel_values=x).logits).abs().max())
    if not diff <= TOLERANCE:
        raise AdapterError(f"{name}: the adapted model's logits differ from the original's by {diff:.2e} "
                           f"(tolerance {TOLERANCE:g}): a layout this adapter does not know")
    labels = getattr(c, "id2label", None) or {}
    classes = tuple(str(labels.get(i, labels.get(str(i), i))) for i in range(cfg.num_classes))
    norm = normalization or _normalization(folder, cfg.in_channels)
    return Adapted(model, classes, norm, f"transformers {name}" + (f" from {folder}" if folder else ""), diff)


def _load(model_or_path: Any) -> tuple[Any, Path | None]:
    if not isinstance(model_or_path, (str, Path)):
        return model_or_path, None
    folder = Path(model_or_path).expanduser()
    if not (folder / "config.json").is_file():
        raise AdapterError(f"{folder} is not a Hugging Face model folder (no config.json): pass the folder "
                           "save_pretrained wrote; edgeskip never downloads weights")
    try:
        from transformers import AutoModelForImageClassification
    except ImportError:
        raise AdapterError("adapting a Hugging Face model needs transformers: pip install transformers") from None
    try:
        return AutoModelForImageClassification.from_pretrained(folder, local_files_only=True), folder
    except (OSError, ValueError, KeyError) as exc:
        raise AdapterError(f"{folder}: transformers cannot load this model ({exc})") from None


def _mapped(state: dict[str, torch.Tensor], depth: int, name: str) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict in edgeskip's names; every parameter used once, none left over."""
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise AdapterError(f"{name}: parameter {key!r} is missing (a layout this adapter does not know)")
        used.add(key)
        return state[key]

    out = {"embed.proj.weight": take("vit.embeddings.patch_embeddings.projection.weight"),
           "embed.proj.bias": take("vit.embeddings.patch_embeddings.projection.bias"),
           "embed.cls_token": take("vit.embeddings.cls_token"),
           "embed.pos_embed": take("vit.embeddings.position_embeddings"),
           "head.norm.weight": take("vit.layernorm.weight"), "head.norm.bias": take("vit.layernorm.bias"),
           "head.fc.weight": take("classifier.weight"), "head.fc.bias": take("classifier.bias")}
    for j in range(depth):
        hf, ours = f"vit.layers.{j}", f"blocks.{j}"
        q, k, v = (f"{hf}.attention.{p}_proj" for p in "qkv")
        out[f"{ours}.attn.qkv.weight"] = torch.cat([take(f"{q}.weight"), take(f"{k}.weight"), take(f"{v}.weight")])
        biases = [state.get(f"{p}.bias") for p in (q, k, v)]
        used.update(f"{p}.bias" for p in (q, k, v) if f"{p}.bias" in state)
        out[f"{ours}.attn.qkv.bias"] = torch.cat([b if b is not None else torch.zeros_like(state[f"{q}.weight"][:, 0])
                                                  for b in biases])
        for mine, theirs in (("attn.proj", "attention.o_proj"), ("norm1", "layernorm_before"),
                             ("norm2", "layernorm_after"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{ours}.{mine}.{p}"] = take(f"{hf}.{theirs}.{p}")
    left = sorted(set(state) - used)
    if left:
        raise AdapterError(f"{name}: parameter(s) {left[:3]} have no place in edgeskip's ViT (a layout this adapter "
                           "does not know)")
    return {k: v.detach().clone().float() for k, v in out.items()}


def _normalization(folder: Path | None, channels: int) -> Normalization:
    """The image processor's mean and std from the folder's ``preprocessor_config.json``, else ViT's defaults."""
    mean, std = HF_VIT_MEAN_STD
    file = folder / "preprocessor_config.json" if folder is not None else None
    if file is not None and file.is_file():
        try:
            data = json.loads(file.read_text())
            mean, std = tuple(data["image_mean"]), tuple(data["image_std"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AdapterError(f"{file}: unreadable image_mean / image_std ({exc})") from None
    try:
        return Normalization(tuple(float(m) for m in mean[:channels]), tuple(float(s) for s in std[:channels]))
    except (ConfigError, ValueError, TypeError) as exc:
        raise AdapterError(f"{file}: {exc}") from None
