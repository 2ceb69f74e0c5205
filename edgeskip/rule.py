"""The decision rule of a dynamic network, once, in numpy: what the runtime runs and everything else replays.

Two predicates and the order they are taken in:

* **agent rule**: layer j runs for an input when its agent's probability ``sigmoid(w_j . cls + b_j)``
  (``cls``: :func:`decision_input`, the CLS token or, for a DeiT configured so, the mean of CLS and
  distillation tokens)
  reaches the layer's threshold ``t_j``, taken as one comparison of the logit with
  ``logit(t_j) = log(t_j / (1 - t_j))`` (:func:`agent_cut`, :func:`agent_runs`); a threshold of 0 always
  runs (no agent is asked), ``None`` never runs (the layer is removed);
* **exit rule**: after layer j, an enabled E²CM exit (threshold ``T_i < 1``) is checked for the inputs
  that ran layer j (never after a skip); an input leaves when its top class-mean probability
  ``max softmax(-d)`` is above ``T_i``, strictly (:func:`exit_top`, :func:`exit_leaves`), with the
  class-mean logits ``-d`` (:func:`exit_logits`);
* **order** (:func:`route`): layers in order, each agent asked just before its layer, each exit just after;
  whoever is left at the end goes through the head. :func:`first_exit` is the same order replayed over
  decisions already recorded per exit.

The runtime's loop, the search's exact path cache, the export's fidelity reference and E²CM threshold
simulation all call these; the torch form of the agent rule, used in training, is
:func:`edgeskip.agents.model.agent_runs`, and the ONNX gate graph is checked against :func:`route` by
every export.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["Network", "Route", "agent_cut", "agent_runs", "decision_free_segments", "decision_input", "exit_enabled",
           "exit_leaves", "exit_logits", "exit_top", "first_exit", "route"]


def decision_input(tokens: Any, token: str = "cls") -> Any:
    """The (B, D) vector the agents and the E²CM ``cls`` feature read from (B, N, D) tokens (numpy or torch):
    the CLS token, or for ``"cls+dist"`` (a distilled DeiT, :attr:`edgeskip.config.ViTConfig.decision_token`)
    the mean of the CLS and distillation tokens."""
    if token == "cls":
        return tokens[:, 0]
    if token == "cls+dist":
        return (tokens[:, 0] + tokens[:, 1]) * 0.5
    raise ValueError(f"unknown decision token {token!r}: 'cls' or 'cls+dist'")


def agent_cut(threshold: float | None) -> float | None:
    """The cut on the agent's logit for a probability threshold: ``None`` for 0 (always runs, nobody asks),
    ``inf`` for 1 (decided on the float32 sigmoid, see :func:`agent_runs`), else ``log(t / (1 - t))``."""
    if threshold is None or threshold <= 0.0:
        return None
    if threshold >= 1.0:
        return math.inf
    return math.log(threshold) - math.log1p(-threshold)


def decision_free_segments(steps: Any, exits: Any) -> tuple[tuple[int, ...], ...]:
    """The runs of two or more consecutive steps that take no decision: every layer runs without asking its
    agent (cut or threshold None) and no enabled exit comes before the run's last layer. Whoever reaches the
    first layer of such a run goes through all of it, so a backend may run it as one call (a fused segment).
    ``steps`` are (layer, cut) pairs in order, ``exits`` the layers with an enabled exit."""
    out: list[tuple[int, ...]] = []
    run: list[int] = []
    for j, cut in steps:
        if cut is None:
            run.append(j)
        if cut is not None or j in exits:  # a decision before j, or an exit check after it, ends the run
            if len(run) >= 2:
                out.append(tuple(run))
            run = []
    if len(run) >= 2:
        out.append(tuple(run))
    return tuple(out)


def agent_runs(z: npt.NDArray[np.float32], cut: float) -> npt.NDArray[np.bool_]:
    """The agent rule ``sigmoid(z) >= t`` as ``z >= cut`` (one comparison; equal up to float rounding at the
    threshold). ``cut = inf`` (t = 1) keeps PyTorch's float32 meaning: the sigmoid rounds to 1 for z above
    about 16.6."""
    if cut == math.inf:
        with np.errstate(over="ignore"):
            return (np.float32(1.0) / (np.float32(1.0) + np.exp(-z))) >= np.float32(1.0)  # type: ignore[no-any-return]
    return z >= cut  # type: ignore[no-any-return]


def exit_enabled(threshold: float) -> bool:
    """An exit threshold of 1 can never fire (a softmax never exceeds 1): the exit is off and not checked."""
    return threshold < 1.0


def exit_top(distances: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Top exit probability and label from (..., K) normalised distances ``d_k / mu_k``:
    ``max softmax(-d) = 1 / sum_k exp(d_min - d_k)`` and ``argmin d``, without forming the softmax."""
    label = distances.argmin(axis=-1)
    top = 1.0 / np.exp(distances.min(axis=-1, keepdims=True) - distances).sum(axis=-1)
    return top, label


def exit_leaves(top: npt.NDArray[np.float64], threshold: float | npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """The exit rule: an input leaves when its top class-mean probability is above the threshold (strictly)."""
    return top > threshold  # type: ignore[no-any-return]


def exit_logits(distances: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """The logits an input leaves with: ``-d / mu``, whose softmax is the class-mean probability."""
    return (-distances).astype(np.float32)


def first_exit(top: npt.NDArray[np.float64], checked: npt.NDArray[np.bool_],
               thresholds: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Per input, the first exit (0..J-1) whose check ran and fired under ``thresholds``, else J (the head):
    :func:`route`'s order replayed over top probabilities recorded at every exit (``checked``: the exit's
    layer ran, so its check was made)."""
    fires = checked & exit_leaves(top, thresholds[None, :]) & (thresholds < 1.0)[None, :]
    return np.where(fires.any(axis=1), fires.argmax(axis=1), top.shape[1]).astype(np.int64)


class Network(Protocol):
    """What :func:`route` drives. Rows are positions in the current set of inputs still in the network
    (``None``: all of them); :meth:`keep` shrinks that set after some left at an exit."""

    def agent_logits(self, layer: int) -> npt.NDArray[np.float32]:
        """The agent logit of every row for ``layer``."""

    def run(self, layer: int, rows: npt.NDArray[np.intp] | None) -> None:
        """Run ``layer`` for ``rows``."""

    def exit_top(self, index: int, layer: int, rows: npt.NDArray[np.intp] | None) -> npt.NDArray[np.float64]:
        """Top class-mean probability at exit ``index`` (after ``layer``) of ``rows``, which just ran it."""

    def leave(self, index: int, layer: int, rows: npt.NDArray[np.intp],
              leaving: npt.NDArray[np.bool_]) -> npt.NDArray[np.floating[Any]]:
        """The exit logits of ``rows[leaving]``, which leave at exit ``index`` (the check of ``rows`` was the last
        :meth:`exit_top` call)."""

    def keep(self, rows: npt.NDArray[np.intp]) -> None:
        """Only ``rows`` stay in the network, in this order."""


class Route:
    """What :func:`route` decided for a batch: the layers each input ran and where it left."""

    __slots__ = ("executed", "left", "remaining", "everyone")

    def __init__(self, n: int, depth: int) -> None:
        self.executed = np.zeros((n, depth), bool)  # (N, L)
        # (inputs, layer, their exit logits) per exit that fired
        self.left: list[tuple[npt.NDArray[np.intp], int, npt.NDArray[np.floating[Any]]]] = []
        self.remaining: npt.NDArray[np.intp] | None = None  # inputs that reach the head, in row order; None: all
        self.everyone: list[int] = []  # layers every input ran (marked in ``executed`` at the end)

    @property
    def exit_layer(self) -> npt.NDArray[np.int64]:
        """(N,) the layer after which each input left, -1 for the head."""
        out = np.full(self.executed.shape[0], -1, np.int64)
        for inputs, layer, _ in self.left:
            out[inputs] = layer
        return out

    def logits(self, head: Callable[[], npt.NDArray[np.floating[Any]]], classes: int) -> npt.NDArray[np.floating[Any]]:
        """(N, K) logits: each input's exit logits where it left, the head's where it did not. ``head()`` gives the
        head's logits of the inputs still in (``remaining``, in order) and is called only if there are any."""
        if not self.left:
            return head()  # nobody left early: the head's output is every input's, in order
        out = np.empty((self.executed.shape[0], classes), self.left[0][2].dtype)
        for inputs, _, logits in self.left:
            out[inputs] = logits
        if self.remaining is not None and len(self.remaining):
            out[self.remaining] = head()
        return out


def route(steps: Any, exits: Any, n: int, depth: int, net: Network) -> Route:
    """Drive ``net`` through one plan for ``n`` inputs: ``steps`` are (layer, cut) pairs in order (cut None:
    the layer runs without asking its agent; see :func:`agent_cut`), ``exits`` maps a layer to (exit index,
    threshold) for the enabled exits. As few numpy calls as possible per layer: after a layer has streamed
    its weights through the caches each small call costs 10-50 us on a small CPU (measured here)."""
    out = Route(n, depth)
    ids: npt.NDArray[np.intp] | None = None  # the input of each row; None while row r is input r
    rows_now = n
    for j, cut in steps:
        if cut is None:
            ran, count = None, rows_now
        else:
            ran = agent_runs(net.agent_logits(j), cut)
            count = int(np.count_nonzero(ran))
        if count == 0:
            continue
        rows = None if count == rows_now or ran is None else np.flatnonzero(ran)
        net.run(j, rows)
        if rows is None:
            if ids is None:
                out.everyone.append(j)
            else:
                out.executed[ids, j] = True
        else:
            out.executed[rows if ids is None else ids[rows], j] = True
        exit_here = exits.get(j)
        if exit_here is None:
            continue
        i, threshold = exit_here
        leaving = exit_leaves(net.exit_top(i, j, rows), threshold)
        if not leaving.any():
            continue
        logits = net.leave(i, j, np.arange(rows_now) if rows is None else rows, leaving)
        gone = np.flatnonzero(leaving) if rows is None else rows[leaving]
        if ids is None:
            ids = np.arange(rows_now)
        stay = np.ones(rows_now, bool)
        stay[gone] = False
        out.left.append((ids[gone], j, logits))
        ids = ids[stay]
        rows_now = len(ids)
        net.keep(np.flatnonzero(stay))
        if rows_now == 0:
            break
    if out.everyone:
        out.executed[:, out.everyone] = True
    out.remaining = ids
    return out
