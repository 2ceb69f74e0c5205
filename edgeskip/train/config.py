"""The training configuration: one frozen dataclass feeds both the Python API and the CLI."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from edgeskip.config import DECISION_TOKENS
from edgeskip.errors import ConfigError
from edgeskip.variants import MODEL_CONFIGS

__all__ = ["TrainConfig", "PRECISIONS", "AUGMENTS", "PRETRAINED_PREFIXES", "is_pretrained"]

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
AUGMENTS = ("none", "basic", "full")
DATASETS = ("cifar10", "digits", "folder")
PRETRAINED_PREFIXES = ("timm:", "hf:")


def is_pretrained(model: str) -> bool:
    """Whether ``model`` names a user's pretrained model (``timm:NAME``, ``hf:FOLDER``), not a registered one."""
    return model.startswith(PRETRAINED_PREFIXES)


def _opt(help: str, **extra: Any) -> dict[str, Any]:
    return {"help": help, **extra}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (see ``edgeskip train --help``)."""

    model: str = field(default="vit9", metadata=_opt(
        "registered model name (edgeskip models lists them), or your pretrained model: timm:NAME with --weights "
        "FILE, or hf:FOLDER (a Hugging Face save_pretrained folder)"))
    dataset: str = field(default="auto", metadata=_opt(
        "dataset; auto: folder for a pretrained model, else cifar10", choices=("auto", *DATASETS)))
    data: str | None = field(default=None, metadata=_opt(
        "the dataset's copy: a CIFAR-10 folder or .tar.gz, or an image folder (train/<class>/*, test/ or val/)"))
    weights: str | None = field(default=None, metadata=_opt(
        "timm:NAME: its weights, a local .safetensors or .pth state dict (without it timm downloads them)"))
    heads: int | None = field(default=None, metadata=_opt(
        "timm:NAME: attention heads, where the name does not say (tiny 3, small 6, base 12, ...)"))
    image_size: int | None = field(default=None, metadata=_opt(
        "registered models: train at this input size, images resized and centre-cropped to it (default: the "
        "dataset's, or the model's own for an image folder); a pretrained model keeps its own"))
    decision_token: str = field(default="cls", metadata=_opt(
        "what the agents (and E²CM's cls feature) read: the CLS token, or for a distilled DeiT the mean of CLS and "
        "distillation tokens", choices=DECISION_TOKENS))
    freeze_backbone: bool = field(default=False, metadata=_opt(
        "train only the agents and baselines (and a new head where the classes differ); the backbone stays as "
        "loaded"))
    out: str = field(default="runs/train", metadata=_opt("run directory for checkpoints and history"))
    epochs: int = field(default=10, metadata=_opt("number of epochs"))
    batch_size: int = field(default=128, metadata=_opt("global batch size (split across DDP ranks)"))
    lr: float = field(default=1e-3, metadata=_opt("peak AdamW learning rate"))
    min_lr: float = field(default=1e-5, metadata=_opt("final learning rate of the cosine schedule"))
    weight_decay: float = field(default=0.05, metadata=_opt("AdamW weight decay"))
    warmup_epochs: float = field(default=1.0, metadata=_opt("linear warm-up length in epochs"))
    label_smoothing: float = field(default=0.1, metadata=_opt("cross-entropy label smoothing"))
    precision: str = field(
        default="auto", metadata=_opt("autocast dtype; auto = bf16 where the hardware has it", choices=PRECISIONS)
    )
    augment: str = field(
        default="full",
        metadata=_opt("none | basic (crop+flip) | full (+AutoAugment CIFAR-10, random erasing)", choices=AUGMENTS),
    )
    limit_per_class: int | None = field(default=None, metadata=_opt("use the first N images per class"))
    eval_batch_size: int = field(default=256, metadata=_opt("batch size for evaluation"))
    grad_clip: float = field(default=1.0, metadata=_opt("max gradient norm (0 disables clipping)"))
    seed: int = field(default=0, metadata=_opt("random seed"))
    threads: int | None = field(default=None, metadata=_opt("torch intra-op threads (default: torch's)"))
    keep_checkpoints: int = field(default=2, metadata=_opt("epoch checkpoints kept besides the best"))
    resume: bool = field(default=False, metadata=_opt("continue from the run directory's latest checkpoint"))
    agents: bool = field(default=False, metadata=_opt("train per-layer skip agents jointly (REINFORCE)"))
    init: str | None = field(default=None, metadata=_opt("start from this (static) checkpoint's weights"))
    gamma: float = field(default=0.99, metadata=_opt("agents: discount; layer j gets gamma^(L-1-j) * R"))
    reward_epsilon: float = field(default=-1e-5, metadata=_opt("agents: epsilon added to every reward"))
    depth_penalty: float = field(default=1.0, metadata=_opt(
        "agents: weight of executed/L in the reward (1 = thesis; lower keeps more layers)"))
    baseline_hidden: int = field(default=64, metadata=_opt("agents: hidden width of each learned baseline"))
    agent_threshold: float = field(default=0.5, metadata=_opt("agents: execution threshold at evaluation"))
    path_table: bool = field(default=False, metadata=_opt(
        "agents: log the commonest paths on the test split after every epoch (always in history.json)"))
    progress: bool = field(default=True, metadata=_opt("show a progress bar"))

    def __post_init__(self) -> None:
        if self.dataset == "auto":  # frozen: the resolved default is stored once, here
            object.__setattr__(self, "dataset", "folder" if is_pretrained(self.model) else "cifar10")
        if not is_pretrained(self.model) and self.model not in MODEL_CONFIGS:
            MODEL_CONFIGS.get(self.model)  # raises UnknownNameError listing the models
        if (self.weights is not None or self.heads is not None) and not self.model.startswith("timm:"):
            raise ConfigError("--weights and --heads belong to a timm model: --model timm:NAME --weights FILE")
        if self.image_size is not None and (is_pretrained(self.model) or self.image_size < 1):
            raise ConfigError("--image-size is a positive size for a registered model (a pretrained one keeps its own)")
        if self.freeze_backbone and not (self.agents and (is_pretrained(self.model) or self.init)):
            raise ConfigError("--freeze-backbone trains the agents of a trained backbone: add --agents and a "
                              "pretrained --model timm:/hf: or --init CHECKPOINT")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; available: {', '.join(DATASETS)}")
        if self.decision_token not in DECISION_TOKENS:
            raise ConfigError(f"decision_token must be one of {', '.join(DECISION_TOKENS)}, got {self.decision_token!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr} min_lr={self.min_lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("warmup_epochs, weight_decay and grad_clip must be >= 0")
        if self.limit_per_class is not None and self.limit_per_class < 1:
            raise ConfigError(f"limit_per_class must be >= 1, got {self.limit_per_class}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if not self.depth_penalty >= 0.0:
            raise ConfigError(f"depth_penalty must be >= 0, got {self.depth_penalty}")
        if not 0.0 <= self.agent_threshold <= 1.0:
            raise ConfigError(f"agent_threshold must be in [0, 1], got {self.agent_threshold}")
        if self.baseline_hidden < 1:
            raise ConfigError(f"baseline_hidden must be >= 1, got {self.baseline_hidden}")
        if self.init is not None and not self.agents:
            raise ConfigError("--init starts agent training from a static checkpoint: add --agents")
        if self.init is not None and is_pretrained(self.model):
            raise ConfigError(f"--init and --model {self.model} both give starting weights: pass one")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
