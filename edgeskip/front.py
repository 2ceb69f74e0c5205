"""The Pareto front: one type and one file format for every search, and the choice by budget (torch-free).

``edgeskip posttrain`` (a checkpoint, compute in MACs) and ``edgeskip search`` (a bundle, latency and
energy from a device profile) both write a :class:`ParetoFront`; ``edgeskip apply-config``,
``edgeskip select``, :meth:`edgeskip.Runtime.select` and the examples read it. On disk::

    {"format": "edgeskip.pareto", "schema_version": 2, "searched": {...}, "cost": "profile" | "macs",
     "objectives": [...], "device": ..., "static": {point}, "points": [{point}, ...], ...}

Every point carries its genes, the configuration (per-layer agent thresholds: ``None`` removed, 0
always runs; per-exit thresholds, 1 disabled), its accuracy on the search images, its mean executed
layers and exit rate, and whatever costs its search knew: ``compute`` (share of the static model's
multiply-accumulates), ``latency_ms`` and ``energy_mj`` (predicted from a device profile), ``reward``
(the joint post-training variant). Schema 1 fronts of ``edgeskip search`` load through one
migration; post-training files of older releases (a bare ``{"pareto": [...]}``) are refused with the
command that writes them again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from edgeskip.errors import ConfigError, EdgeskipError
from edgeskip.fsutil import atomic_write_json
from edgeskip.manifest import ExecutionPath
from edgeskip.policy import Policy, SkipConfig
from edgeskip.schema import Record, SchemaError, field, read_json_record

__all__ = ["FORMAT", "SCHEMA_VERSION", "FrontError", "NothingFits", "ParetoFront", "ParetoPoint", "Searched",
           "Selection", "CHANCE_MARGIN", "Degenerate", "check_degenerate", "choose", "degenerate", "front_of", "load_front",
           "cheapest_within", "paired_loss", "pareto_path", "pick"]

FORMAT = "edgeskip.pareto"
SCHEMA_VERSION = 2
MAX_POINTS = 100_000
# Hypervolume reference in normalised objectives (error, cost / static, ...): a little beyond "every input
# wrong at the static model's cost", the same for every search so hypervolumes compare.
REFERENCE = 1.1
# A configuration this close to chance accuracy (1 / classes) is refused by select unless allowed.
CHANCE_MARGIN = 0.02


class FrontError(EdgeskipError):
    """A Pareto front is missing, unreadable, of another bundle or device, or of an unknown schema."""


class Degenerate(EdgeskipError):
    """The chosen configuration is no classifier worth deploying (see :func:`check_degenerate`)."""


class NothingFits(EdgeskipError):
    """No configuration of the front fits the budget."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParetoPoint(Record):
    """One configuration and what it did on the search images."""

    genes: tuple[int, ...]
    thresholds: tuple[float | None, ...] = field(ge=0.0, le=1.0)  # per layer: None removed, 0 always runs
    exit_thresholds: tuple[float, ...] | None = field(default=None, ge=0.0, le=1.0)  # per exit; None: no exits
    accuracy: float = field(ge=0.0, le=1.0)
    executed_layers: float = field(ge=0.0)  # mean per input
    exit_rate: float = field(default=0.0, ge=0.0, le=1.0)  # share of inputs that left at an exit
    compute: float | None = field(default=None, ge=0.0)  # share of the static model's MACs
    latency_ms: float | None = field(default=None, ge=0.0)  # predicted per call at the front's batch
    energy_mj: float | None = field(default=None, ge=0.0)
    reward: float | None = None  # mean agent reward (the joint post-training objective)
    # on the front's held-out images (meta["holdout"]), never used to choose: accuracy, and the paired
    # standard error of its loss against the static model there
    holdout_accuracy: float | None = field(default=None, ge=0.0, le=1.0)
    holdout_loss_se: float | None = field(default=None, ge=0.0)
    loss_se: float | None = field(default=None, ge=0.0)  # paired standard error of its loss on the search images
    # the execution path its latency is predicted on, at the front's batch (edgeskip.manifest.PATHS): the
    # Runtime runs it there (Runtime.set_policy(..., path=)); None: costed in MACs, or searched before paths
    path: ExecutionPath | None = None
    memory_mib: float | None = field(default=None, ge=0.0)  # that path's resident memory at the front's batch (profiled)
    precisions: tuple[str | None, ...] | None = None  # per layer, where the search chose them (None: the backend's)

    @property
    def policy(self) -> Policy:
        """The configuration as a runtime policy."""
        return Policy.config(self.thresholds, self.exit_thresholds, self.precisions)

    @property
    def skip(self) -> SkipConfig:
        """The layer thresholds as a checkpoint's skip configuration (exits are a bundle's, not a checkpoint's)."""
        return SkipConfig(self.thresholds)

    def cost(self, key: str) -> float:
        value = getattr(self, key)
        if value is None:
            raise FrontError(f"this front's points have no {key}")
        return float(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Searched(Record):
    """What a front was searched on: a bundle (by its manifest fingerprint) or a checkpoint (by its weights)."""

    kind: Literal["bundle", "checkpoint"]
    model: str
    fingerprint: str  # the bundle's manifest fingerprint, or the checkpoint's weights sha256
    weights_sha256: str | None = None  # the checkpoint weights the model came from, where known


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParetoFront(Record):
    """The non-dominated configurations of one search, sorted by cost, with the static model for reference."""

    searched: Searched
    cost: Literal["macs", "profile"]
    objectives: tuple[str, ...]
    hypervolume: float
    static: ParetoPoint  # every layer, no exit
    points: tuple[ParetoPoint, ...] = field(max_items=MAX_POINTS)
    reference: ParetoPoint | None = None  # post-training's uniform 0.5 thresholds
    device: str | None = None  # the profiled device (cost "profile")
    batch: int | None = field(default=None, ge=1)  # the batch latency and energy are predicted at
    energy_source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # images, evaluations, seconds, settings, calibration

    def __post_init__(self) -> None:
        if not self.points:
            raise ConfigError("a Pareto front needs at least one configuration")
        if self.cost == "profile" and (self.device is None or self.batch is None or any(
                p.latency_ms is None or p.energy_mj is None for p in (*self.points, self.static))):
            raise ConfigError("a front costed by a device profile needs its device, batch and every point's "
                              "latency_ms and energy_mj")
        if self.cost == "macs" and any(p.compute is None for p in (*self.points, self.static)):
            raise ConfigError("a front costed in MACs needs every point's compute")

    def to_file(self) -> dict[str, Any]:
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, **self.to_dict(),
                "hypervolume_reference": REFERENCE}

    def save(self, path: str | Path) -> Path:
        """Write the front atomically (JSON)."""
        atomic_write_json(path, self.to_file())
        return Path(path)


def pareto_path(bundle: Any, device: str) -> Path:
    """Where ``edgeskip search`` keeps a bundle's front for ``device``: ``pareto/<device>.json`` beside its files."""
    root = bundle.path if hasattr(bundle, "path") else Path(bundle)
    return Path(root) / "pareto" / f"{device}.json"


def front_of(bundle: Any, device: str, pareto: str | Path | None = None) -> Path:
    """The front file to choose from for ``device``: ``pareto`` when given, else the bundle's own, which must
    exist (a missing one is a :class:`FrontError` naming the fronts the bundle has and the command to run)."""
    if pareto is not None:
        return Path(pareto)
    path = pareto_path(bundle, device)
    if not path.is_file():
        root = path.parent.parent
        have = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.is_dir() else []
        also = f" (it has fronts for: {', '.join(have)})" if have else ""
        raise FrontError(f"{root} has no Pareto front for device {device}{also}: run 'edgeskip search {root} "
                         f"--device {device}' first")
    return path


def load_front(path: str | Path, *, fingerprint: str | None = None, device: str | None = None) -> ParetoFront:
    """Read and check a front: its schema, and that it is of the bundle with ``fingerprint`` and of ``device``
    when they are given."""
    path = Path(path)
    data = read_json_record(path, FORMAT, FrontError, "Pareto front",
                            "search (a bundle) or edgeskip posttrain (a checkpoint)", legacy=_refuse_legacy)
    front = _parse(data, path)
    if device is not None and front.device != device:
        raise FrontError(f"{path} is the Pareto front of device {front.device!r}, not {device!r}")
    if fingerprint is not None and (front.searched.kind != "bundle" or front.searched.fingerprint != fingerprint):
        raise FrontError(f"{path} was searched on another bundle (or this bundle changed since): run edgeskip search "
                         "again")
    return front


def _refuse_legacy(data: Any, path: Path) -> None:
    if isinstance(data, dict) and "pareto" in data and "format" not in data:
        raise FrontError(f"{path} was written by an older edgeskip posttrain (no schema version): run edgeskip "
                         "posttrain --checkpoint CKPT --out DIR again to write it in this format")


def _parse(data: dict[str, Any], path: Path) -> ParetoFront:
    version = data.get("schema_version")
    if version == 1:
        data = _migrate_v1(data)
    elif version != SCHEMA_VERSION:
        raise FrontError(f"{path}: Pareto front schema version {version!r} is not supported (this edgeskip reads "
                         f"{SCHEMA_VERSION} and 1); run edgeskip search or posttrain again")
    body = {k: v for k, v in data.items() if k not in ("format", "schema_version", "hypervolume_reference")}
    try:
        return ParetoFront.from_dict(body)
    except SchemaError as exc:
        raise FrontError(f"{path}: malformed Pareto front ({exc})") from None


_V1_KEYS = {"format", "schema_version", "device", "bundle", "batch", "energy_source", "objectives", "hypervolume",
            "hypervolume_reference_point", "static", "points"}


def _migrate_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A schema 1 front of ``edgeskip search`` (latency and energy from a profile) in schema 2."""
    bound = data.get("bundle")
    meta = {k: v for k, v in data.items() if k not in _V1_KEYS}
    return {"format": FORMAT, "schema_version": SCHEMA_VERSION,
            "searched": {"kind": "bundle", "model": str(meta.get("model", "")),
                         "fingerprint": bound.get("fingerprint") if isinstance(bound, dict) else None},
            "cost": "profile", "objectives": ["error", "latency_ms", "energy_mj"], "device": data.get("device"),
            "batch": data.get("batch"), "energy_source": data.get("energy_source"),
            "hypervolume": data.get("hypervolume"), "static": data.get("static"), "points": data.get("points"),
            "meta": {**meta, "migrated_from_schema": 1}}


# -- choosing by budget --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Selection:
    """The most accurate configuration of a front within a budget (what ``select`` decided; nothing written)."""

    point: ParetoPoint
    budget: float
    unit: str  # "ms" or "mJ"
    device: str
    batch: int
    candidates: int  # configurations within the budget
    energy_source: str
    images: int | None  # search images the accuracy was measured on
    static: bool = False  # the static model itself was the best choice (every layer, no decision, one call)
    holdout_static: float | None = None  # the static model's accuracy on the front's held-out images
    holdout_images: int | None = None
    max_loss: float | None = None  # chosen as the cheapest within this loss (cheapest_within), not by budget

    @property
    def policy(self) -> Policy:
        return self.point.policy

    def describe(self) -> str:
        p = self.point
        exits = "" if p.exit_thresholds is None else f", {100 * p.exit_rate:.0f}% leave at an exit"
        what = "the static model (every layer, no decision), " if self.static else ""
        held = ""
        if p.holdout_accuracy is not None and self.holdout_static is not None and p.holdout_loss_se is not None:
            held = (f" ({100 * p.holdout_accuracy:.2f}% on {self.holdout_images} held-out images: "
                    f"{100 * (p.holdout_accuracy - self.holdout_static):+.2f} ± {100 * p.holdout_loss_se:.2f} points "
                    "against static)")
        among = (f"{self.candidates} configuration(s) within {self.budget:g} {self.unit}" if self.max_loss is None else
                 f"the cheapest of {self.candidates} configuration(s) within {100 * self.max_loss:g} point(s) of static "
                 "on the search images, one standard error included")
        return (f"{what}accuracy {100 * p.accuracy:.2f}%{held} at {p.latency_ms:.3f} ms and {p.energy_mj:.3f} mJ per "
                f"call (batch {self.batch}, predicted on {self.device}{'' if p.path is None else f', {p.path} path'}"
                f"{'' if p.memory_mib is None else f', {p.memory_mib:.0f} MiB resident'}), "
                f"{p.executed_layers:.2f} layers per input"
                f"{exits}; {among}")


def _budget(budget_ms: float | None, budget_mj: float | None) -> tuple[float, str, str]:
    if (budget_ms is None) == (budget_mj is None):
        raise ConfigError("give one budget: a latency in ms or an energy in mJ")
    value, unit, key = (budget_ms, "ms", "latency_ms") if budget_ms is not None else (budget_mj, "mJ", "energy_mj")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"the budget must be a positive number of {unit}, got {value!r}")
    return float(value), unit, key


def choose(front: ParetoFront, *, budget_ms: float | None = None, budget_mj: float | None = None) -> Selection:
    """The most accurate configuration within the budget (ties: the cheaper) and how many fit, the static model
    among them: a dynamic point is never chosen over a static model that fits and is at least as accurate, so
    a budget above the static model's cost gets the static model unless a point beats it on the search images.
    A front without device costs (post-training's MACs) has no latency to budget."""
    budget, unit, key = _budget(budget_ms, budget_mj)
    if front.cost != "profile" or front.device is None or front.batch is None:
        raise FrontError(f"this front was costed in {front.cost} (searched on a {front.searched.kind}): it has no "
                         f"predicted {key.replace('_', ' ')}; search the exported bundle with a device profile "
                         "(edgeskip search --bundle B --device D)")
    candidates = [*front.points, *(() if any(p.genes == front.static.genes for p in front.points) else (front.static,))]
    fits = [p for p in candidates if p.cost(key) <= budget]
    if not fits:
        cheapest = min(candidates, key=lambda p: p.cost(key))
        raise NothingFits(f"nothing fits {budget:g} {unit} on {front.device}: the cheapest configuration needs "
                          f"{cheapest.cost(key):.3f} {unit} (accuracy {100 * cheapest.accuracy:.2f}%); "
                          "raise the budget, or profile a faster backend or device")
    best = max(fits, key=lambda p: (p.accuracy, -p.cost(key)))
    return _selection(front, best, budget, unit, len(fits))


def _selection(front: ParetoFront, best: ParetoPoint, budget: float, unit: str, candidates: int,
               max_loss: float | None = None) -> Selection:
    assert front.device is not None and front.batch is not None  # fronts costed by a profile
    images, held = front.meta.get("images"), front.meta.get("holdout")
    return Selection(best, budget, unit, front.device, front.batch, candidates, str(front.energy_source),
                     images if isinstance(images, int) else None, best.genes == front.static.genes,
                     holdout_static=front.static.holdout_accuracy,
                     holdout_images=held.get("images") if isinstance(held, dict) else None, max_loss=max_loss)


def cheapest_within(front: ParetoFront, max_loss: float, *, margin: float = 0.0) -> Selection:
    """The configuration of lowest predicted latency whose accuracy loss against the static model on the search
    images, plus one paired standard error of that loss (``loss_se``), is within ``max_loss`` (0.01: one point),
    and whose latency is at least ``margin`` (a share) below static's; the static model when none is.

    The standard error guards against the winner's curse: on the zoo vit9 the cheapest point within 1 point on
    2,000 search images lost 2.3 points on 2,500 held-out images (1.8 with 5,000 search images; a coarser
    threshold grid did not help), and on the digits' 170 search images 3.7-7.9 points."""
    if not (math.isfinite(max_loss) and max_loss >= 0) or not 0 <= margin < 1:
        raise ConfigError(f"need a loss of at least 0 points and a margin in [0, 1), got {max_loss!r} and {margin!r}")
    if front.cost != "profile" or front.device is None or front.batch is None:
        raise FrontError("only a front costed by a device profile has latencies to choose the cheapest by")
    static = front.static
    if any(p.loss_se is None for p in front.points):
        raise FrontError("this front's points have no standard error of their loss (searched by an older edgeskip): "
                         "run edgeskip search again")
    limit = (1.0 - margin) * static.cost("latency_ms")
    fits = [p for p in front.points if p.genes != static.genes and p.cost("latency_ms") <= limit
            and static.accuracy - p.accuracy + float(p.loss_se or 0.0) <= max_loss]
    best = min(fits, key=lambda p: (p.cost("latency_ms"), -p.accuracy), default=static)
    return _selection(front, best, best.cost("latency_ms"), "ms", len(fits) + 1, max_loss)


def pick(front: ParetoFront, *, budget_ms: float | None = None, budget_mj: float | None = None,
         max_loss_points: float | None = None) -> Selection:
    """By a budget (:func:`choose`) or, with ``max_loss_points``, the fastest within that loss
    (:func:`cheapest_within`); one of the two."""
    if max_loss_points is None:
        return choose(front, budget_ms=budget_ms, budget_mj=budget_mj)
    if budget_ms is not None or budget_mj is not None:
        raise ConfigError("give a budget or a largest accuracy loss, not both")
    if isinstance(max_loss_points, bool) or not isinstance(max_loss_points, (int, float)) \
            or not math.isfinite(max_loss_points) or max_loss_points < 0:
        raise ConfigError(f"the largest accuracy loss must be a number of points >= 0, got {max_loss_points!r}")
    return cheapest_within(front, max_loss_points / 100)


def paired_loss(correct: Any, reference: Any) -> tuple[float, float]:
    """Accuracy lost against ``reference`` on the same images (per-image correctness, booleans), and its
    standard error: of the per-image differences, so that the images both get right or wrong cost nothing."""
    import numpy as np

    a, b = np.asarray(correct, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ConfigError(f"paired accuracies need two equal, non-empty 1-D arrays, got {a.shape} and {b.shape}")
    d = a - b
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("inf")
    return -float(d.mean()), se


def degenerate(point: ParetoPoint, num_classes: int) -> str | None:
    """Why ``point`` is no classifier worth deploying, or None: it runs no layer for any input, or its
    accuracy is within :data:`CHANCE_MARGIN` of chance (one in ``num_classes``)."""
    chance = 1.0 / num_classes
    if point.executed_layers < 0.005:
        return "it runs no transformer layer (the embedding straight into the head)"
    if point.accuracy <= chance + CHANCE_MARGIN:
        return (f"its accuracy {100 * point.accuracy:.2f}% is within {100 * CHANCE_MARGIN:.0f} points of chance "
                f"({100 * chance:.1f}% for {num_classes} classes)")
    return None


def check_degenerate(chosen: Selection, num_classes: int, *, allow: bool = False,
                     what_to_do: str = "raise the budget, or pass --allow-degenerate (allow_degenerate=True) to "
                                       "take it anyway") -> str | None:
    """Refuse a degenerate choice (:class:`Degenerate`, ending with ``what_to_do``) unless ``allow``; returns the
    reason (None for a sound choice) so that an allowed one can be warned about."""
    reason = degenerate(chosen.point, num_classes)
    if reason is not None and not allow:
        raise Degenerate(f"the most accurate configuration within {chosen.budget:g} {chosen.unit} is degenerate: "
                         f"{reason}; {what_to_do}")
    return reason
