"""Checkpoints: weights in safetensors, everything else in JSON; nothing is ever unpickled.

A checkpoint is a directory, written atomically and never modified afterwards::

    config.json          model family/config, dataset, normalisation, hyper-parameters,
                         metrics, git commit, sha256 of every weight file
    model.safetensors    model weights
    train_state.safetensors   optimiser moments (optional; for resuming)

A training run keeps its checkpoints under ``checkpoints/epoch-NNNN/`` and points at the
newest with ``latest.json`` (replaced atomically), so an interrupted save never leaves a
checkpoint that loads half.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from edgeskip.config import ViTConfig, from_dict, to_dict
from edgeskip.errors import CheckpointError, ConfigError
from edgeskip.fsutil import FILE_MODE, atomic_directory, atomic_write_json, loads_json, sha256_file
from edgeskip.agents.model import SkipViT
from edgeskip.models.vit import ViT
from edgeskip.normalization import Normalization
from edgeskip.policy import SkipConfig

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "resolve_checkpoint", "git_commit", "state_sha256"]

log = logging.getLogger(__name__)

FORMAT = "edgeskip.checkpoint"
SCHEMA_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, LATEST_FILE = (
    "config.json", "model.safetensors", "train_state.safetensors", "latest.json",
)


def state_sha256(model: torch.nn.Module) -> str:
    """A fingerprint of a model's weights: sha256 over every tensor (name, dtype, shape, bytes) in name order.

    Recorded in the manifest (``weights.state_sha256``) so the torch reference backend can prove it
    rebuilt exactly the weights the bundle was exported from.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint on disk; :meth:`build_model` loads its weights."""

    path: Path
    model_name: str
    model_config: ViTConfig
    dataset: str
    normalization: Normalization
    classes: tuple[str, ...]
    metrics: dict[str, Any]
    meta: dict[str, Any]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return _load_tensors(self.path, self.meta["weights"], "weights")

    @property
    def has_agents(self) -> bool:
        return "agents" in self.meta

    def build_model(self) -> ViT:
        """The model with this checkpoint's weights, in eval mode (a SkipViT if it has agents)."""
        model = self._empty_model()
        state = self.state_dict()
        _check_matches(model, state, self.path)
        model.load_state_dict(state)
        return model.eval()

    def _empty_model(self) -> ViT:
        if not self.has_agents:
            return ViT(self.model_config)
        info = self.meta["agents"]
        try:
            skip = SkipConfig.from_dict(info["skip"])
            hidden = int(info["baseline_hidden"])
            return SkipViT(self.model_config, skip, baseline_hidden=hidden)
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise CheckpointError(f"{self.path}: invalid 'agents' entry in {CONFIG_FILE}: {exc}") from None

    def train_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """(JSON part, tensors) of the saved optimiser state, or None when absent."""
        info = self.meta.get("train_state")
        if not info:
            return None
        return info, _load_tensors(self.path, info, "train state")


def git_commit() -> str | None:
    """The commit of the edgeskip source tree (or of the working directory), if any."""
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
            )
            return out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            continue
    return None


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    model_config: ViTConfig,
    dataset: str,
    normalization: Normalization,
    classes: tuple[str, ...],
    train_config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    epoch: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    step: int | None = None,
) -> Path:
    """Write a new checkpoint directory at ``path`` (which must not exist yet)."""
    path = Path(path)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(path) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        os.chmod(tmp / WEIGHTS_FILE, FILE_MODE)  # safetensors writes 0600; checkpoints are meant to be shared
        meta: dict[str, Any] = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "model_name": model_name,
            "model": to_dict(model_config),
            "dataset": dataset,
            "normalization": normalization.to_dict(),
            "classes": list(classes),
            "train": train_config or {},
            "metrics": metrics or {},
            "epoch": epoch,
            "git_commit": git_commit(),
            "torch_version": torch.__version__,
            "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(tmp / WEIGHTS_FILE)},
        }
        agent_meta = getattr(model, "agent_meta", None)
        if callable(agent_meta):
            meta["agents"] = agent_meta()
        if optimizer is not None:
            tensors, groups = _flatten_optimizer(optimizer)
            save_file(tensors, str(tmp / STATE_FILE))
            os.chmod(tmp / STATE_FILE, FILE_MODE)
            meta["train_state"] = {
                "file": STATE_FILE, "sha256": sha256_file(tmp / STATE_FILE), "param_groups": groups, "step": step,
            }
        atomic_write_json(tmp / CONFIG_FILE, meta)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a training run's newest checkpoint via ``latest.json``."""
    path = Path(path).expanduser()
    if (path / CONFIG_FILE).is_file():
        return path
    pointer = path / LATEST_FILE
    if pointer.is_file():
        target = _read_json(pointer).get("checkpoint")
        if not isinstance(target, str) or Path(target).is_absolute() or ".." in Path(target).parts:
            raise CheckpointError(f"{pointer} must name a checkpoint folder inside {path}")
        return resolve_checkpoint(path / target)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raise CheckpointError(f"{path} is neither a checkpoint ({CONFIG_FILE}) nor a training run ({LATEST_FILE})")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint's config; weights are checked by sha256 when loaded."""
    path = resolve_checkpoint(path)
    meta = _read_json(path / CONFIG_FILE)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / CONFIG_FILE} is not an edgeskip checkpoint config")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint schema version {meta.get('schema_version')!r} is not supported "
            f"(this edgeskip reads version {SCHEMA_VERSION})"
        )
    try:
        cfg = from_dict(ViTConfig, meta["model"])
        norm = Normalization.from_dict(meta["normalization"])
        classes = tuple(str(c) for c in meta["classes"])
        if not isinstance(meta["weights"], dict):
            raise ConfigError("'weights' must be an object")
        name, dataset = str(meta["model_name"]), str(meta["dataset"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path / CONFIG_FILE} is malformed: {exc}") from None
    if len(classes) != cfg.num_classes:
        raise CheckpointError(f"{path}: {len(classes)} class names for a {cfg.num_classes}-class model")
    return Checkpoint(path, name, cfg, dataset, norm, classes, dict(meta.get("metrics") or {}), meta)


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = loads_json(file.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc!r}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} must hold a JSON object")
    return data


def _load_tensors(path: Path, info: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    name = info.get("file")
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        raise CheckpointError(f"{path}: invalid {what} file name {name!r}")
    file = path / name
    if not file.is_file():
        raise CheckpointError(f"{path}: {what} file {name} is missing")
    if sha256_file(file) != info.get("sha256"):
        raise CheckpointError(f"{file} does not match the sha256 in its config: the file was altered or truncated")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is not a valid safetensors file: {exc}") from None


def _check_matches(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k}" for k in sorted(expected.keys() - got.keys())]
    problems += [f"unexpected {k}" for k in sorted(got.keys() - expected.keys())]
    problems += [
        f"{k} has shape {got[k]}, config implies {expected[k]}"
        for k in sorted(expected.keys() & got.keys())
        if expected[k] != got[k]
    ]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise CheckpointError(f"{path}: weights disagree with the checkpoint's model config: {shown}")


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{idx}.{key}"] = t.detach().cpu().contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def restore_optimizer(opt: torch.optim.Optimizer, groups: list[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> None:
    """Load state saved by :func:`save_checkpoint` into ``opt`` (same parameter layout)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    fixed = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    try:
        opt.load_state_dict({"state": state, "param_groups": fixed})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"saved optimiser state does not fit this model: {exc}") from None
