"""Every export checks itself against PyTorch: per-stage errors and gate-graph decisions.

The reference for a dynamic path is PyTorch for the layers and agents and the numpy E²CM
rule (:meth:`edgeskip.e2cm.E2CM.check`, the code the runtime runs) for the exits, applied
one image at a time: agent j runs layer j when ``p_j >= t_j``; the exit after layer j is
checked only when layer j ran and its threshold is below 1; the input leaves when
``top > T``. A decision whose probability lies within :data:`TIE` of its threshold may
legitimately go either way between two float implementations and is reported as a tie.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from edgeskip.exporters.stages import StageModule
from edgeskip.models.vit import ViT

__all__ = ["TIE", "Path", "reference_paths", "stage_inputs", "stage_errors", "compare_paths"]

TIE = 1e-6


@dataclasses.dataclass(frozen=True)
class Path:
    """How one input went through the dynamic network."""

    logits: npt.NDArray[np.float64]  # (K,); at an E²CM exit the class-mean logits -d/mu
    executed: npt.NDArray[np.bool_]  # (L,)
    exit_layer: int  # -1: the head classified it
    margins: tuple[float, ...]  # |probability - threshold| of every decision taken, in order


@torch.no_grad()
def reference_paths(model: ViT, images: torch.Tensor, *, thresholds: Sequence[float | None] | None = None,
                    e2cm: Any | None = None) -> list[Path]:
    """The dynamic rule applied to each image alone (``thresholds`` None: every layer runs)."""
    cfg, out = model.config, []
    exits = {layer: i for i, layer in enumerate(e2cm.exits)} if e2cm is not None else {}
    for img in images:
        x = model.embed(img[None])
        executed, margins, logits, exit_layer = np.zeros(cfg.depth, bool), [], None, -1
        for j in range(cfg.depth):
            t = None if thresholds is None else thresholds[j]
            if thresholds is None:
                ran = True
            elif t is None:
                ran = False
            else:
                p = float(torch.sigmoid(model.agent_logits(j, x[:, 0]))[0])  # type: ignore[operator]
                ran = p >= t
                margins.append(abs(p - t))
            if ran:
                x = model.blocks[j](x)
                executed[j] = True
            i = exits.get(j)
            if ran and i is not None and e2cm is not None and e2cm.thresholds[i] < 1.0:
                leaves, _, top = e2cm.check(i, x.numpy())
                margins.append(abs(float(top[0]) - float(e2cm.thresholds[i])))
                if leaves[0]:
                    logits, exit_layer = -e2cm.distances(i, x.numpy())[0], j
                    break
        if logits is None:
            logits = model.head(x)[0].double().numpy()
        out.append(Path(np.asarray(logits, np.float64), executed, exit_layer, tuple(margins)))
    return out


@torch.no_grad()
def stage_inputs(model: ViT, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The real input of every stage when every layer runs: images, then each layer's tokens."""
    x = model.embed(images)
    inputs = {"embed": images}
    for j, block in enumerate(model.blocks):
        inputs[f"layer_{j:02d}"] = x
        inputs[f"agent_{j:02d}"] = x
        x = block(x)
    inputs["head"] = x
    return inputs


@torch.no_grad()
def stage_errors(stages: Sequence[StageModule], inputs: dict[str, torch.Tensor],
                 run: Callable[[StageModule, npt.NDArray[np.float32]], npt.NDArray[Any]]) -> dict[str, float]:
    """max |exported - torch| per stage, each fed its real input (the whole batch at once)."""
    errors = {}
    for s in stages:
        x = inputs[s.name]
        want = s.module(x).double().numpy()
        got = np.asarray(run(s, x.numpy()), dtype=np.float64)
        if got.shape != want.shape:
            errors[s.name] = float("inf")
            continue
        errors[s.name] = float(np.abs(got - want).max()) if want.size else 0.0
    return errors


def compare_paths(reference: Sequence[Path], logits: Sequence[npt.NDArray[Any]], executed: Sequence[npt.NDArray[Any]],
                  exit_layers: Sequence[int]) -> dict[str, Any]:
    """Decisions and logits of an exported dynamic network against :func:`reference_paths`."""
    same, ties, differ, max_err = 0, 0, 0, 0.0
    for ref, lg, ex, xl in zip(reference, logits, executed, exit_layers, strict=True):
        if np.array_equal(np.asarray(ex, bool), ref.executed) and int(xl) == ref.exit_layer:
            same += 1
            max_err = max(max_err, float(np.abs(np.asarray(lg, np.float64).reshape(-1) - ref.logits).max()))
        elif min(ref.margins, default=1.0) <= TIE:
            ties += 1
        else:
            differ += 1
    return {"images": len(reference), "same_decisions": same, "ties": ties, "different_decisions": differ,
            "max_abs_logit_error": max_err}
