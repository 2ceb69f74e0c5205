"""Workstation training: AdamW, warm-up + cosine, label smoothing, autocast, DDP, resume.

:class:`Trainer` keeps the per-step loss in :meth:`Trainer.compute_loss` so that joint
training schemes (the skip agents) extend it without copying the loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from edgeskip.config import ViTConfig, to_dict
from edgeskip.data import DatasetSplits, load_dataset
from edgeskip.errors import CheckpointError, ConfigError, DataError, EdgeskipError
from edgeskip.fsutil import atomic_write_json
from edgeskip.models.adapters import resolve_model, with_new_head
from edgeskip.models.vit import DropPath, ViT
from edgeskip.normalization import get_normalization
from edgeskip.progress import progress_bar
from edgeskip.train.augment import build_augmentation
from edgeskip.train.checkpoint import (
    LATEST_FILE,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from edgeskip.train.config import TrainConfig, is_pretrained
from edgeskip.train.distributed import DistInfo, init_distributed, shard_indices
from edgeskip.train.evaluate import (
    Normalizer,
    autocast,
    autocast_dtype,
    evaluate,
    to_tensor,
)
from edgeskip.train.schedule import warmup_cosine
from edgeskip.variants import model_config

__all__ = ["Trainer", "TrainResult", "TrainingDivergedError"]

log = logging.getLogger(__name__)
BEST_FILE, HISTORY_FILE = "best.json", "history.json"


class TrainingDivergedError(EdgeskipError):
    """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    out: Path
    checkpoint: Path
    history: list[dict[str, Any]]
    precision: str

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


class Trainer:
    def __init__(self, cfg: TrainConfig, data: DatasetSplits | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.dist: DistInfo = init_distributed()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.pretrained = resolve_model(cfg.model, weights=cfg.weights, heads=cfg.heads) if is_pretrained(cfg.model) \
            else None
        size, channels = self._input_shape()
        if data is None:
            data = load_dataset(cfg.dataset, cfg.data, image_size=size, channels=channels,
                                limit_per_class=cfg.limit_per_class, progress=cfg.progress)
        elif size is not None:
            data = DatasetSplits(data.name, data.train.fitted(size), data.test.fitted(size))
        self.data = data
        h, w, c = data.train.image_shape
        if h != w:
            raise DataError(f"square images expected, got {h}x{w}")
        self.new_head = False
        self.initial_state: dict[str, Tensor] | None = None
        if self.pretrained is not None:
            self.norm = self.pretrained.normalization
            self.model_cfg = self._pretrained_config(data.train.classes)
        else:
            self.norm = get_normalization(cfg.dataset, c)
            self.model_cfg = model_config(cfg.model, image_size=h, in_channels=c, num_classes=len(data.train.classes),
                                          decision_token=cfg.decision_token)
        if c != self.norm.channels:
            raise DataError(f"the {cfg.dataset} normalisation has {self.norm.channels} channel(s), images have {c}")
        self.device = self.dist.device
        self.dtype = autocast_dtype(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.model = self.build_model().to(self.device)
        if cfg.freeze_backbone:
            self._freeze_backbone()
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=cfg.lr, betas=(0.9, 0.999))
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)
        self.augment = build_augmentation(cfg.augment, h, c).to(self.device)
        self.normalize = Normalizer(self.norm).to(self.device)
        self.local_batch = max(1, cfg.batch_size // self.dist.world_size)
        per_rank = -(-len(data.train) // self.dist.world_size)
        self.steps_per_epoch = -(-per_rank // self.local_batch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.step = 0
        self.start_epoch = 1
        self.history: list[dict[str, Any]] = []
        self._prepare_out()
        self.net: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Skipping leaves some layers without gradients in a step: DDP must look for them.
            self.net = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=cfg.agents)

    def build_model(self) -> ViT:
        """The network to train (subclasses add agents), with a pretrained model's weights where there is one."""
        model = ViT(self.model_cfg)
        if self.initial_state is not None:
            model.load_state_dict(self.initial_state)
        return model

    def _input_shape(self) -> tuple[int | None, int | None]:
        """(image size, channels) the dataset is loaded at: a pretrained model's own; for a registered model
        ``--image-size`` (an image folder: else the model's own size), channels from the dataset or, for a
        folder, the model."""
        cfg = self.cfg
        if self.pretrained is not None:
            mc = self.pretrained.model.config
            return mc.image_size, mc.in_channels
        if cfg.dataset == "folder":
            own = model_config(cfg.model)
            return cfg.image_size or own.image_size, own.in_channels
        return cfg.image_size, None

    def _pretrained_config(self, classes: tuple[str, ...]) -> ViTConfig:
        """The pretrained model's config for these classes; a new head where its classes differ (a timm state
        dict names none: its head is kept when the count matches)."""
        assert self.pretrained is not None
        adapted = self.pretrained
        named = not all(c.isdigit() for c in adapted.classes)
        model = adapted.model
        if len(adapted.classes) != len(classes) or (named and adapted.classes != classes):
            log.info("a new %d-class head for %s (it was trained for %d classes)", len(classes), adapted.name,
                     len(adapted.classes))
            model = with_new_head(model, len(classes), seed=self.cfg.seed)
            self.new_head = True
        self.initial_state = model.state_dict()
        log.info("starting from %s", adapted.source)
        return dataclasses.replace(model.config, decision_token=self.cfg.decision_token)

    def _freeze_backbone(self) -> None:
        """Only the agents and baselines learn (and a new head); every other weight stays as loaded, and the
        frozen layers drop no paths (stochastic depth regularises what learns)."""
        trainable = ("agents.", "baselines.") + (("head.fc",) if self.new_head else ())
        for name, p in self.model.named_parameters():
            p.requires_grad_(name.startswith(trainable))
        for m in self.model.modules():
            if isinstance(m, DropPath):
                m.p = 0.0
        n = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info("backbone frozen: %d of %d parameters train", n, sum(p.numel() for p in self.model.parameters()))

    @property
    def model_name(self) -> str:
        """What the checkpoint calls the model: the registered name, or a pretrained model's own (``hf:my-vit``,
        ``timm:deit_tiny_patch16_224``: not the folder's whole path)."""
        return self.pretrained.name if self.pretrained is not None else self.cfg.model

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def _param_groups(self) -> list[dict[str, Any]]:
        """No weight decay on biases, norms, CLS token and position embedding."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            is_token = name in ("embed.cls_token", "embed.dist_token", "embed.pos_embed")
            (no_decay if p.ndim <= 1 or is_token else decay).append(p)
        return [
            {"params": decay, "weight_decay": self.cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    # -- run directory -------------------------------------------------------------------

    def _prepare_out(self) -> None:
        has_run = (self.out / LATEST_FILE).is_file()
        if has_run and not self.cfg.resume:
            raise ConfigError(f"{self.out} already holds a training run: pass --resume to continue it or choose another --out")
        if has_run:
            self._resume()

    def _resume(self) -> None:
        ckpt = load_checkpoint(self.out)
        saved = ckpt.meta.get("train", {})
        for key in ("model", "dataset", "agents"):
            if saved.get(key, False) != getattr(self.cfg, key):
                raise CheckpointError(
                    f"cannot resume {self.out}: it was trained with {key}={saved.get(key)!r}, not {getattr(self.cfg, key)!r}"
                )
        if ckpt.model_config != self.model_cfg:
            raise CheckpointError(f"cannot resume {self.out}: its model config differs from this run's")
        self.model.load_state_dict(ckpt.build_model().state_dict())
        state = ckpt.train_state()
        if state is None:
            raise CheckpointError(f"{ckpt.path} has no optimiser state to resume from")
        info, tensors = state
        restore_optimizer(self.optimizer, info["param_groups"], tensors)
        self.step = int(info.get("step") or 0)
        self.start_epoch = int(ckpt.meta["epoch"]) + 1
        history_file = self.out / HISTORY_FILE
        if history_file.is_file():
            self.history = [h for h in json.loads(history_file.read_text()) if h["epoch"] < self.start_epoch]
        log.info("resuming %s from epoch %d (step %d)", self.out, self.start_epoch, self.step)

    # -- the loop ---------------------------------------------------------------------------

    def compute_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Loss, logits and extra metrics for one batch (override for joint objectives)."""
        logits = self.net(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.label_smoothing)
        return loss, logits, {}

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, d = self.cfg, self.dist
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + d.rank)  # drop-path/augment draws
        self.net.train()
        order = shard_indices(len(self.data.train), epoch, cfg.seed, d.rank, d.world_size)
        sums = np.zeros(3)  # loss*n, correct, n
        extra_sums: dict[str, float] = {}
        start = time.perf_counter()
        bar = progress_bar(
            total=self.steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
            enabled=cfg.progress and d.is_main, leave=False, dynamic_ncols=True,
        )
        with bar:
            for first in range(0, len(order), self.local_batch):
                idx = order[first : first + self.local_batch]
                lr = warmup_cosine(self.step, self.total_steps, self.warmup_steps, cfg.lr, cfg.min_lr)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                x = self.normalize(self.augment(to_tensor(self.data.train.images[idx], self.device)))
                y = torch.from_numpy(self.data.train.labels[idx]).to(self.device)
                with autocast(self.device, self.dtype):
                    loss, logits, extra = self.compute_loss(x, y)
                self._check_finite(loss)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.step += 1
                n = len(idx)
                sums += (loss.item() * n, (logits.argmax(1) == y).sum().item(), n)
                for k, v in extra.items():
                    extra_sums[k] = extra_sums.get(k, 0.0) + v * n
                rate = sums[2] * d.world_size / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.3f}",
                                img_s=f"{rate:.0f}", lr=f"{lr:.2e}", **{k: f"{v / sums[2]:.3f}" for k, v in extra_sums.items()})
                bar.update()
        seconds = time.perf_counter() - start
        names = sorted(extra_sums)
        totals = torch.tensor([*sums, *(extra_sums[k] for k in names)], dtype=torch.float64)
        if d.enabled:
            dist.all_reduce(totals)
        stats = {
            "train_loss": float(totals[0] / totals[2]),
            "train_accuracy": float(totals[1] / totals[2]),
            "epoch_seconds": seconds,
            "images_per_second": float(totals[2]) / seconds,
        }
        stats.update({f"train_{k}": float(totals[3 + i] / totals[2]) for i, k in enumerate(names)})
        return stats

    def _check_finite(self, loss: Tensor) -> None:
        """Stop on a NaN/inf loss; under DDP every rank learns of it and stops together."""
        ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
        if self.dist.enabled:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if ok.item() < 1:
            raise TrainingDivergedError(
                f"the loss became NaN or infinite at step {self.step}: lower --lr (now {self.cfg.lr}) or use --grad-clip"
            )

    def evaluate(self) -> dict[str, Any]:
        return evaluate(
            self.model, self.data.test, self.norm, batch_size=self.cfg.eval_batch_size, device=self.device,
            dtype=self.dtype, rank=self.dist.rank, world=self.dist.world_size,
        )

    def run(self) -> TrainResult:
        cfg = self.cfg
        log.info(
            "training %s (%d params) on %s: %d train / %d test images, %s, %s, world size %d",
            cfg.model, self.model_cfg.param_count(), cfg.dataset, len(self.data.train), len(self.data.test),
            self.precision, self.device, self.dist.world_size,
        )
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            record = {"epoch": epoch, "step": self.step, **self.train_epoch(epoch)}
            record.update({f"test_{k}": v for k, v in self.evaluate().items() if k != "count"})
            self.history.append(record)
            log.info(
                "epoch %d/%d: loss %.4f, train acc %.4f, test acc %.4f, %.1f img/s%s",
                epoch, cfg.epochs, record["train_loss"], record["train_accuracy"],
                record["test_accuracy"], record["images_per_second"],
                f", executed {record['test_executed_fraction']:.3f}" if "test_executed_fraction" in record else "",
            )
            if self.dist.is_main:
                self.save(epoch, record)
            if self.dist.enabled:
                dist.barrier()
        latest = self.out / json.loads((self.out / LATEST_FILE).read_text())["checkpoint"]
        return TrainResult(self.out, latest, self.history, self.precision)

    def save(self, epoch: int, metrics: dict[str, Any]) -> Path:
        """Write this epoch's checkpoint, then move the pointers and prune old epochs."""
        name = f"checkpoints/epoch-{epoch:04d}"
        train_config = {**to_dict(self.cfg), "precision_used": self.precision, "world_size": self.dist.world_size}
        target = self.out / name
        if target.exists():  # left by a run that died after saving but before moving the pointer
            shutil.rmtree(target)
        save_checkpoint(
            target, self.model, model_name=self.model_name, model_config=self.model_cfg,
            dataset=self.cfg.dataset, normalization=self.norm, classes=self.data.train.classes,
            train_config=train_config, metrics=metrics, epoch=epoch, optimizer=self.optimizer, step=self.step,
        )
        atomic_write_json(self.out / HISTORY_FILE, self.history)
        best = self._best_epoch()
        atomic_write_json(self.out / BEST_FILE, {"checkpoint": f"checkpoints/epoch-{best:04d}", "epoch": best})
        atomic_write_json(self.out / LATEST_FILE, {"checkpoint": name, "epoch": epoch})
        keep = {best} | {h["epoch"] for h in self.history[-self.cfg.keep_checkpoints :]}
        for old in (self.out / "checkpoints").glob("epoch-*"):
            if old.name.split("-")[-1].isdigit() and int(old.name.split("-")[-1]) not in keep:
                shutil.rmtree(old, ignore_errors=True)
        return target

    def _best_epoch(self) -> int:
        return int(max(self.history, key=lambda h: (h["test_accuracy"], h["epoch"]))["epoch"])
