"""Bring your own pretrained ViT: timm and Hugging Face ViT / DeiT classifiers as edgeskip ViTs.

:func:`from_timm` and :func:`from_hf` copy a pretrained model's weights into edgeskip's own layer-addressable
:class:`~edgeskip.models.vit.ViT` (``embed -> blocks[i] -> head``, the seams every later step runs, skips and
exports one layer at a time). The architectures are the same pre-norm transformer, so nothing is
approximated: given the original model object, the adapted model's logits are checked against the
original's on a random batch before it is returned. What does not map (another activation, pooling
instead of the CLS token, register tokens, a parameter left over) is one :class:`AdapterError` naming it.

Supported:

* timm ``VisionTransformer`` and ``VisionTransformerDistilled`` with a CLS token head: ``vit_*``,
  ``deit_*`` and ``deit_*_distilled_*`` (the distillation token and its second head), LayerScale
  (``ls1`` / ``ls2``). As a model object (needs timm), or a timm state dict in a local ``.safetensors`` /
  ``.pth`` file read without timm (its architecture read from the weights; the head count from the model
  name or ``heads=``).
* transformers' ``ViTForImageClassification``, ``DeiTForImageClassification`` and
  ``DeiTForImageClassificationWithTeacher`` in the 5.x layout (``vit.layers.N.attention.q_proj`` ...),
  as an object or a local ``save_pretrained`` folder.

Nothing is downloaded unless asked: a name without a weights file goes to timm's hub download
(``pretrained=True``), which needs network access.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from edgeskip.config import ViTConfig
from edgeskip.errors import ConfigError
from edgeskip.models.vit import ViT
from edgeskip.normalization import Normalization

__all__ = ["Adapted", "AdapterError", "from_hf", "from_timm", "load_state_file", "resolve_model", "to_hf",
           "to_timm_state_dict", "with_new_head"]

HF_VIT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # ViTImageProcessor's defaults
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # DeiT's (timm IMAGENET_DEFAULT_*)
TOLERANCE = 1e-5  # max |logits| difference against the original (fp32; measured about 1e-6 on random weights)
# timm's size names -> heads (its vit_* / deit_* definitions: 64-wide heads up to large, huge 16 heads of 80)
TIMM_HEADS = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "huge": 16}
# Parameters of timm variants this adapter does not map, and what they mean to a user.
TIMM_UNSUPPORTED = {
    "fc_norm.": "global average pooling before the head (global_pool='avg'); edgeskip's agents and head read the "
                "CLS token",
    "reg_token": "register tokens",
    "norm_pre.": "a norm before the blocks (pre_norm, CLIP style)",
    ".q_norm.": "normalised queries and keys (qk_norm)",
    ".attn.norm.": "a norm inside attention (scale_attn_norm)",
    ".mlp.norm.": "a norm inside the MLP (scale_mlp_norm)",
    "attn_pool.": "attention pooling (a MAP head)",
    ".mlp.fc1_g.": "a gated MLP (SwiGLU)",
    "pre_logits.": "a pre-logits representation layer",
}
CHECKPOINT_KEYS = ("state_dict", "model", "module")  # what timm's training scripts wrap the weights in
# Model families that are not one stack of same-shape layers, by a piece of their class name: what is in the way.
NOT_A_LAYER_STACK = {
    "swin": "windowed attention with patch merging between stages", "pit": "pooling between blocks",
    "levit": "a convolutional stem and attention downsampling between stages", "convnext": "no attention layers",
    "dynamicvit": "token pruning", "evit": "token pruning", "tnt": "nested inner transformers",
    "crossvit": "two branches of different patch sizes", "mobilevit": "convolutions between transformer blocks",
    "efficientformer": "pooling token mixers", "beit": "relative position bias in every layer",
    "cait": "class-attention layers after the blocks",
    "xcit": "cross-covariance attention with a convolutional stem",
}


class AdapterError(ConfigError):
    """A model that does not map onto edgeskip's ViT, or weights or a folder that hold no such model."""


def _not_supported(cls: str, what: str) -> AdapterError:
    """The one error for a model class that is not supported, naming what is in the way where it is known."""
    why = next((v for k, v in NOT_A_LAYER_STACK.items() if k in cls.lower()), None)
    return AdapterError(f"{cls} is not supported" + (f" ({why})" if why else "") + f": edgeskip adapts {what}, "
                        "one stack of same-shape layers it can run, skip and export one at a time")


@dataclasses.dataclass(frozen=True)
class Adapted:
    """The adapted model with what its checkpoint needs: a name, class names (index = label), normalisation."""

    model: ViT
    name: str  # e.g. "timm:deit_tiny_patch16_224", "hf:my-vit" (a checkpoint's model_name)
    classes: tuple[str, ...]
    normalization: Normalization
    source: str
    max_abs_diff: float | None  # logits against the original on the check batch; None: no original to run


# -- timm -----------------------------------------------------------------------------------------------------


def from_timm(model_or_name: Any, *, weights: str | Path | None = None, heads: int | None = None,
              normalization: Normalization | None = None) -> Adapted:
    """An edgeskip ViT from a timm ViT / DeiT: a model object, or a model name with a local ``weights`` file (a
    timm state dict, ``.safetensors`` or ``.pth``; read without timm). A name without ``weights`` asks timm
    to download the pretrained weights (network access, timm installed)."""
    original = None
    if isinstance(model_or_name, str):
        name = model_or_name
        if weights is not None:
            state = load_state_file(weights)
            source = f"timm {name} weights from {weights}"
        else:
            original = _timm_create(name)
            state, source = original.state_dict(), f"timm {name} (downloaded by timm)"
    else:
        if weights is not None:
            raise AdapterError("give a timm model object or a model name with weights=FILE, not both")
        original = model_or_name
        name = str(getattr(original, "default_cfg", {}).get("architecture") or type(original).__name__)
        state, source = original.state_dict(), f"timm {type(original).__name__} object"
    if original is not None:
        cls = type(original).__name__
        if cls not in ("VisionTransformer", "VisionTransformerDistilled"):
            raise _not_supported(f"timm {cls}", "timm's VisionTransformer (vit_*, deit_*) and VisionTransformerDistilled")
        _check_timm_object(original, cls)
        heads = heads or int(original.blocks[0].attn.num_heads)
    cfg = _timm_config(state, name, heads)
    model = _built(cfg, _timm_mapped(state, cfg, name), name)
    diff = None if original is None else _compare(model, lambda x: original(x), cfg, name)
    norm = normalization or _timm_normalization(original, name, cfg.in_channels)
    classes = tuple(str(i) for i in range(cfg.num_classes))
    return Adapted(model, f"timm:{name}", classes, norm, source, diff)


def _timm_create(name: str) -> Any:
    try:
        import timm
    except ImportError:
        raise AdapterError(f"timm:{name} without a weights file needs timm to download it (pip install timm, "
                           "network access); or pass the weights you have: --weights FILE") from None
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as exc:  # timm raises RuntimeError, OSError, hub errors ...: one line for any of them
        raise AdapterError(f"timm could not create {name} with pretrained weights ({exc})") from None


def _check_timm_object(model: Any, cls: str) -> None:
    if getattr(model, "global_pool", "token") != "token":
        raise AdapterError(f"timm {cls} with global_pool={model.global_pool!r}: edgeskip's agents and head read "
                           "the CLS token (global_pool='token')")
    if getattr(model, "no_embed_class", False):
        raise AdapterError(f"timm {cls} with no_embed_class=True (position embeddings without the class token, "
                           "DeiT III / big_vision style) is not supported")
    if getattr(model, "dynamic_img_size", False):
        raise AdapterError(f"timm {cls} with dynamic_img_size=True is not supported: edgeskip exports one input size")
    act = type(getattr(model.blocks[0].mlp, "act", None)).__name__
    if act != "GELU" or getattr(model.blocks[0].mlp.act, "approximate", "none") != "none":
        raise AdapterError(f"timm {cls}: MLP activation {act} is not supported (edgeskip's blocks use exact GELU)")
    eps = {float(getattr(m, "eps", 1e-6)) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    if len(eps) > 1:
        raise AdapterError(f"timm {cls}: LayerNorms with different eps {sorted(eps)} are not supported")


def _timm_config(state: Mapping[str, torch.Tensor], name: str, heads: int | None) -> ViTConfig:
    for key in state:
        for marker, what in TIMM_UNSUPPORTED.items():
            if marker in f".{key}" or key.startswith(marker):
                raise AdapterError(f"timm {name}: {what} is not supported (parameter {key!r})")
    need = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "head.weight")
    missing = [k for k in need if k not in state]
    if missing:
        hint = " (a timm model without a CLS token or a head?)" if "patch_embed.proj.weight" in state else ""
        raise AdapterError(f"timm {name}: the weights lack {', '.join(missing)}: not a timm ViT / DeiT state "
                           f"dict{hint}")
    width = int(state["cls_token"].shape[-1])
    proj = state["patch_embed.proj.weight"]
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise AdapterError(f"timm {name}: patch embedding of shape {tuple(proj.shape)} (a non-square patch or a "
                           "conv stem) is not supported")
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    distilled = "dist_token" in state
    prefix = 1 + int(distilled)
    tokens = int(state["pos_embed"].shape[1])
    grid = math.isqrt(max(tokens - prefix, 0))
    if grid * grid != tokens - prefix:
        patches = math.isqrt(tokens)
        why = (" (position embeddings without the class token, no_embed_class: DeiT III / big_vision style)"
               if patches * patches == tokens else "")
        raise AdapterError(f"timm {name}: {tokens} position embeddings do not fit {prefix} prefix token(s) and a "
                           f"square grid of patches{why}")
    if heads is None:
        size = next((h for word, h in TIMM_HEADS.items() if re.search(rf"(^|_){word}(_|$)", name)), None)
        if size is None:
            raise AdapterError(f"timm {name}: the head count is not in the weights and not in the name: pass "
                               "heads=N (--heads N)")
        heads = size
    try:
        return ViTConfig(family="timm-vit", depth=depth, width=width, heads=heads,
                         mlp_hidden=int(state["blocks.0.mlp.fc1.weight"].shape[0]), patch_size=int(proj.shape[-1]),
                         image_size=grid * int(proj.shape[-1]), in_channels=int(proj.shape[1]),
                         num_classes=int(state["head.weight"].shape[0]), drop_path=0.0, layer_norm_eps=1e-6,
                         distilled=distilled, layer_scale="blocks.0.ls1.gamma" in state,
                         head_tokens="cls+dist" if "head_dist.weight" in state else "cls")
    except ConfigError as exc:
        raise AdapterError(f"timm {name}: {exc}") from None


def _timm_mapped(state: Mapping[str, torch.Tensor], cfg: ViTConfig, name: str) -> dict[str, torch.Tensor]:
    return _take(state, _timm_table(cfg), f"timm {name}")


def _timm_table(cfg: ViTConfig) -> dict[str, str]:
    """edgeskip parameter name -> timm's, for the architecture ``cfg`` (the one naming rule, both ways)."""
    table = {"embed.proj.weight": "patch_embed.proj.weight", "embed.proj.bias": "patch_embed.proj.bias",
             "embed.cls_token": "cls_token", "embed.pos_embed": "pos_embed", "head.norm.weight": "norm.weight",
             "head.norm.bias": "norm.bias", "head.fc.weight": "head.weight", "head.fc.bias": "head.bias"}
    if cfg.distilled:
        table["embed.dist_token"] = "dist_token"
    if cfg.head_tokens == "cls+dist":
        table |= {"head.fc_dist.weight": "head_dist.weight", "head.fc_dist.bias": "head_dist.bias"}
    parts = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    for j in range(cfg.depth):
        for part in parts:
            for p in ("weight", "bias"):
                table[f"blocks.{j}.{part}.{p}"] = f"blocks.{j}.{part}.{p}"
        if cfg.layer_scale:
            for ls in ("ls1", "ls2"):
                table[f"blocks.{j}.{ls}.gamma"] = f"blocks.{j}.{ls}.gamma"
    return table


def to_timm_state_dict(model: ViT) -> dict[str, torch.Tensor]:
    """``model``'s weights in timm's ``VisionTransformer`` names: what :func:`from_timm` reads back, and what
    timm's ``create_model(..., pretrained_cfg_overlay=dict(file=...))`` loads for the matching architecture."""
    state = model.state_dict()
    return {theirs: state[ours].detach().clone().contiguous() for ours, theirs in _timm_table(model.config).items()}


def _timm_normalization(original: Any, name: str, channels: int) -> Normalization:
    cfg = getattr(original, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    else:
        mean, std = IMAGENET_MEAN_STD if name.startswith("deit") else HF_VIT_MEAN_STD
    return _norm(mean, std, channels, f"timm {name}")


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file: ``.safetensors``, or a PyTorch ``.pth`` / ``.pt`` / ``.bin`` read with
    ``weights_only`` (no code is unpickled); a training checkpoint's ``state_dict`` / ``model`` entry and a
    DDP ``module.`` prefix are unwrapped, as timm's checkpoint helpers do."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise AdapterError(f"weights file {file} not found")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip errors differ by version: one line for all
        raise AdapterError(f"{file} is not a readable weights file ({type(exc).__name__}: {exc})") from None
    while isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
        inner = next((state[k] for k in CHECKPOINT_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise AdapterError(f"{file} holds no tensors (keys: {', '.join(map(str, list(state)[:6]))})")
        state = inner
    if not isinstance(state, dict):
        raise AdapterError(f"{file} holds a {type(state).__name__}, not a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items() if torch.is_tensor(v)}


# -- Hugging Face ---------------------------------------------------------------------------------------------

HF_CLASSES = {"ViTForImageClassification": "vit", "DeiTForImageClassification": "deit",
              "DeiTForImageClassificationWithTeacher": "deit"}


def from_hf(model_or_path: Any, *, normalization: Normalization | None = None) -> Adapted:
    """An edgeskip ViT with the weights of a Hugging Face ViT / DeiT classifier (an object, or a local folder
    written by ``save_pretrained``); ``normalization`` overrides the folder's ``preprocessor_config.json``
    (default: the ViT image processor's 0.5 / 0.5, DeiT's ImageNet mean and std)."""
    hf, folder = _hf_load(model_or_path)
    name = type(hf).__name__
    if name not in HF_CLASSES:
        raise _not_supported(name, f"transformers' {', '.join(HF_CLASSES)}")
    c = hf.config
    if c.hidden_act != "gelu":
        raise AdapterError(f"{name}: activation {c.hidden_act!r} is not supported (edgeskip's blocks use exact GELU)")
    size = c.image_size if isinstance(c.image_size, int) else None
    patch = c.patch_size if isinstance(c.patch_size, int) else None
    if size is None or patch is None:
        raise AdapterError(f"{name}: non-square images or patches ({c.image_size!r}, {c.patch_size!r}) are not supported")
    deit = HF_CLASSES[name] == "deit"
    try:
        cfg = ViTConfig(family=f"hf-{HF_CLASSES[name]}", depth=c.num_hidden_layers, width=c.hidden_size,
                        heads=c.num_attention_heads, mlp_hidden=c.intermediate_size, patch_size=patch,
                        image_size=size, in_channels=c.num_channels, num_classes=c.num_labels, drop_path=0.0,
                        layer_norm_eps=float(c.layer_norm_eps), distilled=deit,
                        head_tokens="cls+dist" if name.endswith("WithTeacher") else "cls")
    except ConfigError as exc:
        raise AdapterError(f"{name}: {exc}") from None
    model = _built(cfg, _hf_mapped(hf.state_dict(), cfg, HF_CLASSES[name], name), name)
    diff = _compare(model, lambda x: hf(pixel_values=x).logits, cfg, name)
    labels = getattr(c, "id2label", None) or {}
    classes = tuple(str(labels.get(i, labels.get(str(i), i))) for i in range(cfg.num_classes))
    default = IMAGENET_MEAN_STD if deit else HF_VIT_MEAN_STD
    norm = normalization or _hf_normalization(folder, cfg.in_channels, default)
    label = folder.name if folder is not None else HF_CLASSES[name]
    return Adapted(model, f"hf:{label}", classes, norm,
                   f"transformers {name}" + (f" from {folder}" if folder else ""), diff)


def _hf_load(model_or_path: Any) -> tuple[Any, Path | None]:
    if not isinstance(model_or_path, (str, Path)):
        return model_or_path, None
    folder = Path(model_or_path).expanduser()
    if not (folder / "config.json").is_file():
        raise AdapterError(f"{folder} is not a Hugging Face model folder (no config.json): pass the folder "
                           "save_pretrained wrote; edgeskip never downloads weights")
    try:
        from transformers import AutoModelForImageClassification
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise AdapterError("adapting a Hugging Face model needs transformers: pip install transformers") from None
    try:
        arch = (json.loads((folder / "config.json").read_text()).get("architectures") or [None])[0]
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{folder / 'config.json'} is not readable JSON ({exc})") from None
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per weight file; edgeskip's commands draw their own
    try:
        if arch == "DeiTForImageClassificationWithTeacher":  # the auto class would drop the distillation head
            from transformers import DeiTForImageClassificationWithTeacher

            return DeiTForImageClassificationWithTeacher.from_pretrained(folder, local_files_only=True), folder
        return AutoModelForImageClassification.from_pretrained(folder, local_files_only=True), folder
    except (OSError, ValueError, KeyError) as exc:
        raise AdapterError(f"{folder}: transformers cannot load this model ({exc})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _hf_mapped(state: Mapping[str, torch.Tensor], cfg: ViTConfig, base: str, name: str) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict in edgeskip's names; every parameter used once, none left over."""
    if f"{base}.layers.0.attention.q_proj.bias" not in state:  # qkv_bias=False: zero biases are the same model
        zeros = torch.zeros(cfg.width)
        state = {**state, **{f"{base}.layers.{j}.attention.{x}_proj.bias": zeros
                             for j in range(cfg.depth) for x in "qkv"}}
    return _take(state, _hf_table(cfg, base), name)


def _hf_table(cfg: ViTConfig, base: str) -> dict[str, Any]:
    """edgeskip parameter name -> the Hugging Face name (a tuple: q, k and v, concatenated in edgeskip's qkv)."""
    e = f"{base}.embeddings"
    table: dict[str, Any] = {
        "embed.proj.weight": f"{e}.patch_embeddings.projection.weight",
        "embed.proj.bias": f"{e}.patch_embeddings.projection.bias", "embed.cls_token": f"{e}.cls_token",
        "embed.pos_embed": f"{e}.position_embeddings", "head.norm.weight": f"{base}.layernorm.weight",
        "head.norm.bias": f"{base}.layernorm.bias"}
    if cfg.distilled:
        table["embed.dist_token"] = f"{e}.distillation_token"
    if cfg.head_tokens == "cls+dist":
        table |= {"head.fc.weight": "cls_classifier.weight", "head.fc.bias": "cls_classifier.bias",
                  "head.fc_dist.weight": "distillation_classifier.weight",
                  "head.fc_dist.bias": "distillation_classifier.bias"}
    else:
        table |= {"head.fc.weight": "classifier.weight", "head.fc.bias": "classifier.bias"}
    for j in range(cfg.depth):
        hf, ours = f"{base}.layers.{j}", f"blocks.{j}"
        for p in ("weight", "bias"):
            table[f"{ours}.attn.qkv.{p}"] = tuple(f"{hf}.attention.{x}_proj.{p}" for x in "qkv")
            for mine, theirs in (("attn.proj", "attention.o_proj"), ("norm1", "layernorm_before"),
                                 ("norm2", "layernorm_after"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                table[f"{ours}.{mine}.{p}"] = f"{hf}.{theirs}.{p}"
    return table


def to_hf(model: ViT, classes: tuple[str, ...] | None = None) -> Any:
    """``model`` as a transformers ``ViTForImageClassification`` (``DeiTForImageClassification[WithTeacher]`` with
    a distillation token) with the same weights: to ``save_pretrained`` a backbone trained here, or to hand
    edgeskip's own models to Hugging Face tooling. Needs transformers; LayerScale has no place there."""
    import transformers

    cfg = model.config
    if cfg.layer_scale:
        raise AdapterError("a model with LayerScale has no Hugging Face ViT / DeiT equivalent")
    labels = {i: c for i, c in enumerate(classes or (str(i) for i in range(cfg.num_classes)))}
    kw: dict[str, Any] = dict(hidden_size=cfg.width, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
              intermediate_size=cfg.mlp_hidden, image_size=cfg.image_size, patch_size=cfg.patch_size,
              num_channels=cfg.in_channels, num_labels=cfg.num_classes, layer_norm_eps=cfg.layer_norm_eps,
              hidden_act="gelu", id2label=labels, label2id={c: i for i, c in labels.items()})
    if cfg.distilled:
        cls = "DeiTForImageClassificationWithTeacher" if cfg.head_tokens == "cls+dist" else "DeiTForImageClassification"
        hf, base = getattr(transformers, cls)(transformers.DeiTConfig(**kw)), "deit"
    else:
        hf, base = transformers.ViTForImageClassification(transformers.ViTConfig(**kw)), "vit"
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _hf_table(cfg, base).items():
        if isinstance(theirs, tuple):
            out |= dict(zip(theirs, state[ours].chunk(3), strict=True))
        else:
            out[theirs] = state[ours]
    hf.load_state_dict(out)
    return hf.eval()


def _hf_normalization(folder: Path | None, channels: int, default: tuple[tuple[float, ...], ...]) -> Normalization:
    """The image processor's mean and std from the folder's ``preprocessor_config.json``, else ``default``."""
    mean, std = default
    file = folder / "preprocessor_config.json" if folder is not None else None
    if file is not None and file.is_file():
        try:
            data = json.loads(file.read_text())
            mean, std = tuple(data["image_mean"]), tuple(data["image_std"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AdapterError(f"{file}: unreadable image_mean / image_std ({exc})") from None
    return _norm(mean, std, channels, str(file))


# -- shared ---------------------------------------------------------------------------------------------------


def _take(state: Mapping[str, torch.Tensor], table: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
    """edgeskip name -> tensor for every entry of ``table`` (a source key, or a tuple of keys concatenated);
    a missing key, or a source parameter left unused, is an :class:`AdapterError`."""
    used: set[str] = set()

    def one(key: str) -> torch.Tensor:
        if key not in state:
            raise AdapterError(f"{name}: parameter {key!r} is missing (a layout this adapter does not know)")
        used.add(key)
        return state[key]

    out = {ours: torch.cat([one(k) for k in src]) if isinstance(src, tuple) else one(src) for ours, src in table.items()}
    left = sorted(k for k in set(state) - used if not k.endswith("num_batches_tracked"))
    if left:
        raise AdapterError(f"{name}: parameter(s) {left[:3]} have no place in edgeskip's ViT (a layout this adapter "
                           "does not know)")
    return {k: v.detach().clone().float() for k, v in out.items()}


def _built(cfg: ViTConfig, state: dict[str, torch.Tensor], name: str) -> ViT:
    model = ViT(cfg)
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise AdapterError(f"{name}: weights that do not fit the architecture: {'; '.join(wrong[:3])}")
    model.load_state_dict(state)
    return model.eval()


def _compare(model: ViT, original: Callable[[torch.Tensor], torch.Tensor], cfg: ViTConfig, name: str) -> float:
    """max |logits - original's| on a seeded random batch; above :data:`TOLERANCE` is an :class:`AdapterError`."""
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(x), original(x)
    diff = float((ours - theirs).abs().max())
    if not diff <= TOLERANCE * max(1.0, float(theirs.abs().max())):
        raise AdapterError(f"{name}: the adapted model's logits differ from the original's by {diff:.2e} "
                           f"(tolerance {TOLERANCE:g}): a layout this adapter does not know")
    return diff


def _norm(mean: Any, std: Any, channels: int, where: str) -> Normalization:
    try:
        return Normalization(tuple(float(m) for m in mean[:channels]), tuple(float(s) for s in std[:channels]))
    except (ConfigError, ValueError, TypeError) as exc:
        raise AdapterError(f"{where}: {exc}") from None


def with_new_head(model: ViT, num_classes: int, *, seed: int = 0) -> ViT:
    """``model`` with a freshly initialised head for ``num_classes`` classes (the backbone's weights kept), for
    fine-tuning a pretrained model on other classes."""
    cfg = dataclasses.replace(model.config, num_classes=num_classes)
    torch.manual_seed(seed)
    fresh = ViT(cfg)  # its head initialised as edgeskip's own models' are
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.fc")}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.fc") for k in missing):
        raise AdapterError(f"a new head does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return fresh.eval()


def resolve_model(spec: str, *, weights: str | None = None, heads: int | None = None) -> Adapted:
    """The pretrained model a command line names: ``timm:NAME`` (with ``weights``: a local timm state dict) or
    ``hf:FOLDER`` (a ``save_pretrained`` folder)."""
    kind, _, rest = spec.partition(":")
    if kind == "timm" and rest:
        return from_timm(rest, weights=weights, heads=heads)
    if kind == "hf" and rest:
        if weights is not None:
            raise AdapterError(f"--weights is for timm models: {spec} holds its own weights")
        return from_hf(rest)
    raise AdapterError(f"{spec!r} names no pretrained model: use timm:NAME --weights FILE or hf:FOLDER")
