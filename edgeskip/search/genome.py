"""The one gene encoding of a configuration, both ways (torch-free).

A genome has one gene per searchable layer (0 removes the layer; k >= 1 is the agent threshold
``grid[k - 1]``; a model without agents has the grid ``(0.0,)``: a layer runs or is removed) and, where
the model has E²CM exits, one gene per exit (0 disables it; k >= 1 is the exit threshold
``exit_grids[i][k - 1]``) and, where the bundle's backend can run its layers in more than one precision, one
gene per searchable layer for its precision (k: ``precisions[k]``, 0 the backend's own). :meth:`Genome.policy` decodes genes into the :class:`~edgeskip.policy.Policy`
the runtime runs; :meth:`Genome.genes_of` encodes a configuration back (None when a threshold is off
the grids). Post-training searches every layer of a checkpoint; a bundle search only the layers the
bundle holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.errors import ConfigError
from edgeskip.policy import Policy

__all__ = ["DEFAULT_GRID", "Genome", "grid_with_step"]

DEFAULT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def grid_with_step(step: float) -> tuple[float, ...]:
    """Thresholds ``0, step, 2 step, ..., 1`` (``step`` must divide 1)."""
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0.0 < step <= 1.0:
        raise ConfigError(f"grid step must be in (0, 1], got {step!r}")
    n = int(round(1.0 / step))
    if not math.isclose(n * step, 1.0, abs_tol=1e-9):
        raise ConfigError(f"grid step {step} does not divide [0, 1] evenly")
    return tuple(round(k * step, 12) for k in range(n + 1))


class Genome:
    """Two-way map between integer genes and the configurations of one model.

    ``depth``: the model's layers; ``layers``: those with a gene (the others are removed); ``grid``: agent
    thresholds (``(0.0,)`` without agents); ``exit_grids``: one threshold grid per exit (none: no exits);
    ``precisions``: what each searchable layer may run in, the backend's own first (fewer than two: no gene).
    """

    def __init__(self, depth: int, layers: Sequence[int] | None = None, grid: Sequence[float] = DEFAULT_GRID,
                 exit_grids: Sequence[Sequence[float]] = (), precisions: Sequence[str] = ()) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"depth must be a positive integer, got {depth!r}")
        self.depth = depth
        self.layers = tuple(range(depth)) if layers is None else tuple(int(j) for j in layers)
        if not self.layers or len(set(self.layers)) != len(self.layers) or not all(0 <= j < depth for j in self.layers):
            raise ConfigError(f"searchable layers must be distinct indices 0..{depth - 1}, got {self.layers}")
        self.grid = tuple(float(t) for t in grid)
        self.exit_grids = tuple(tuple(float(t) for t in g) for g in exit_grids)
        for name, values in (("threshold grid", self.grid), *(("exit grid", g) for g in self.exit_grids)):
            if len(set(values)) != len(values) or any(not 0.0 <= v <= 1.0 for v in values):
                raise ConfigError(f"{name} must hold distinct values in [0, 1], got {values}")
        if not self.grid:
            raise ConfigError("the threshold grid is empty")
        self.precisions = tuple(str(p) for p in precisions)
        if len(set(self.precisions)) != len(self.precisions):
            raise ConfigError(f"precisions must be distinct, got {self.precisions}")

    @property
    def n_precision_genes(self) -> int:
        return len(self.layers) if len(self.precisions) > 1 else 0

    @property
    def n_exits(self) -> int:
        return len(self.exit_grids)

    @property
    def upper(self) -> list[int]:
        """The largest value of each gene."""
        return [len(self.grid)] * len(self.layers) + [len(g) for g in self.exit_grids] \
            + [len(self.precisions) - 1] * self.n_precision_genes

    @property
    def size(self) -> int:
        return len(self.layers) + self.n_exits + self.n_precision_genes

    def check(self, genes: Sequence[int] | npt.NDArray[np.integer[Any]]) -> tuple[int, ...]:
        """Genes as a tuple of ints, each within its range; anything else is a ConfigError."""
        g = np.asarray(genes)
        if g.shape != (self.size,) or g.dtype.kind not in "iu":  # (timedelta64 is an integer to numpy: refused)
            raise ConfigError(f"genes must be {self.size} integers, got {np.asarray(genes).tolist()!r}")
        out = tuple(int(v) for v in g)
        if any(not 0 <= v <= u for v, u in zip(out, self.upper, strict=True)):
            raise ConfigError(f"genes must be {self.size} integers within {self.upper}, got {list(out)}")
        return out

    def thresholds(self, genes: Sequence[int]) -> tuple[tuple[float | None, ...], tuple[float, ...] | None]:
        """(per-layer agent thresholds, per-exit thresholds or None without exits) of checked genes."""
        g = self.check(genes)
        layers: list[float | None] = [None] * self.depth
        for j, v in zip(self.layers, g, strict=False):
            layers[j] = None if v == 0 else self.grid[v - 1]
        start = len(self.layers)
        exits = [1.0 if v == 0 else grid[v - 1]
                 for v, grid in zip(g[start:start + self.n_exits], self.exit_grids, strict=True)]
        return tuple(layers), (tuple(exits) if self.n_exits else None)

    def layer_precisions(self, genes: Sequence[int]) -> tuple[str | None, ...] | None:
        """Per layer, the precision of checked genes (None for a layer without a gene or removed by its genes: it
        has no precision to run in); None without precision genes."""
        if not self.n_precision_genes:
            return None
        layers, _ = self.thresholds(genes)
        g = self.check(genes)[len(self.layers) + self.n_exits:]
        out: list[str | None] = [None] * self.depth
        for j, v in zip(self.layers, g, strict=True):
            out[j] = None if layers[j] is None else self.precisions[v]
        return tuple(out)

    def policy(self, genes: Sequence[int] | npt.NDArray[np.integer[Any]]) -> Policy:
        """The configuration the genes encode."""
        layers, exits = self.thresholds(genes)  # type: ignore[arg-type]
        if all(t is None for t in layers):
            raise ConfigError("genes that remove every layer are no configuration: keep at least one layer")
        return Policy.config(layers, exits, self.layer_precisions(genes))  # type: ignore[arg-type]

    def genes_of(self, layers: Sequence[float | None] | None, exits: Sequence[float] | None = None,
                 precisions: Sequence[str | None] | None = None) -> tuple[int, ...] | None:
        """The genes of a configuration (``layers`` None: every searchable layer always runs; ``exits`` None: all
        off; ``precisions`` None, or a None entry: the backend's own), or None when a threshold is off the grids, a
        layer without a gene would run or a precision is not on offer."""
        if layers is not None and any(layers[j] is not None for j in range(self.depth) if j not in self.layers):
            return None
        genes = [_gene(0.0 if layers is None else layers[j], self.grid) for j in self.layers]
        genes += [_gene(None if t >= 1.0 else t, grid)
                  for t, grid in zip(exits if exits is not None else [1.0] * self.n_exits, self.exit_grids, strict=True)]
        if self.n_precision_genes:
            chosen = [None if precisions is None else precisions[j] for j in self.layers]
            genes += [0 if p is None else self.precisions.index(p) if p in self.precisions else None for p in chosen]
        elif precisions is not None and self.precisions and any(p not in (None, self.precisions[0]) for p in precisions):
            return None  # without a gene every layer runs in the one precision on offer
        return None if None in genes else tuple(genes)  # type: ignore[arg-type]

    @property
    def static_genes(self) -> tuple[int, ...]:
        """Every searchable layer always runs, no exit: the static model (needs 0 on the grid)."""
        genes = self.genes_of(None, None)
        if genes is None:
            raise ConfigError(f"the threshold grid {self.grid} has no 0 (always run): the static model is no genome")
        return genes

    def seeds(self, own: tuple[Sequence[float | None] | None, Sequence[float] | None] | None = None) -> list[tuple[int, ...]]:
        """Genomes every search starts from: the static model, the model's own configuration ``own`` (layer and exit
        thresholds) and every layer at threshold 0.5, where they are on the grids."""
        half = [0.5 if j in self.layers else None for j in range(self.depth)] if 0.5 in self.grid else None
        out = [self.static_genes]
        for g in (self.genes_of(*own) if own is not None else None, self.genes_of(half) if half else None):
            if g is not None and g not in out:
                out.append(g)
        return out


def _gene(t: float | None, grid: Sequence[float]) -> int | None:
    """0 for None (removed / disabled), k for ``grid[k - 1]``, None when ``t`` is off the grid."""
    if t is None:
        return 0
    return next((k + 1 for k, g in enumerate(grid) if math.isclose(g, t, abs_tol=1e-9)), None)
