"""Every export checks itself against PyTorch: per-stage errors and gate-graph decisions.

The reference for a dynamic path is the decision rule of :mod:`edgeskip.rule` (the code the
runtime runs) driving PyTorch for the layers and agents and the numpy E²CM exits, one image at
a time: agent j runs layer j when ``p_j >= t_j``; the exit after layer j is checked only when
layer j ran and its threshold is below 1; the input leaves when ``top > T``. A decision whose probability lies within :data:`TIE` of its threshold may
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
from edgeskip.rule import agent_cut, decision_input, exit_enabled, exit_top, route

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
    """The decision rule (:func:`edgeskip.rule.route`) driving the PyTorch layers and agents and the numpy E²CM
    exits, each image alone (``thresholds`` None: every layer runs)."""
    depth = model.config.depth
    steps: list[tuple[int, float | None]]
    if thresholds is None:
        steps = [(j, None) for j in range(depth)]
    else:
        steps = [(j, agent_cut(t)) for j, t in enumerate(thresholds) if t is not None]
    exits = {} if e2cm is None else {layer: (i, float(t)) for i, (layer, t) in enumerate(zip(e2cm.exits, e2cm.thresholds))
                                     if exit_enabled(float(t))}
    out = []
    for img in images:
        net = _OneImage(model, model.embed(img[None]), thresholds, e2cm)
        path = route(steps, exits, 1, depth, net)
        logits = path.logits(lambda: model.head(net.x).double().numpy(), model.config.num_classes)[0]  # noqa: B023
        out.append(Path(np.asarray(logits, np.float64), path.executed[0], int(path.exit_layer[0]), tuple(net.margins)))
    return out


class _OneImage:
    """One image through the PyTorch model as the rule drives it, keeping how close each decision came."""

    def __init__(self, model: ViT, x: torch.Tensor, thresholds: Sequence[float | None] | None, e2cm: Any) -> None:
        self.model, self.x, self.thresholds, self.e2cm = model, x, thresholds, e2cm
        self.margins: list[float] = []
        self.distances: npt.NDArray[np.float64] | None = None

    def agent_logits(self, layer: int) -> npt.NDArray[np.float32]:
        z = self.model.agent_logits(layer, decision_input(self.x, self.model.config.decision_token))  # type: ignore[operator]
        assert self.thresholds is not None and self.thresholds[layer] is not None
        self.margins.append(abs(float(torch.sigmoid(z)[0]) - float(self.thresholds[layer])))  # type: ignore[arg-type]
        return z.numpy()  # type: ignore[no-any-return]

    def run(self, layer: int, rows: Any) -> None:
        self.x = self.model.blocks[layer](self.x)

    def exit_top(self, index: int, layer: int, rows: Any) -> npt.NDArray[np.float64]:
        self.distances = self.e2cm.distances(index, self.x.numpy())
        top = exit_top(self.distances)[0]  # type: ignore[arg-type]
        self.margins.append(abs(float(top[0]) - float(self.e2cm.thresholds[index])))
        return top

    def leave(self, index: int, layer: int, rows: Any, leaving: Any) -> npt.NDArray[np.float64]:
        assert self.distances is not None
        return -self.distances[leaving]  # float64: the reference keeps every digit

    def keep(self, rows: Any) -> None:
        """One image: once it left there is nothing to keep."""


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
