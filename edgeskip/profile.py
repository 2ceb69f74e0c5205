"""The device profile: what each piece of a bundle costs on one device, as typed records (torch-free).

``edgeskip profile`` (:mod:`edgeskip.devices.profiler`) measures and writes it as
``profiles/<device>.json`` beside the bundle's files; the search's cost model
(:class:`edgeskip.search.costs.ProfileCosts`) reads it. It is bound to the bundle it measured by the
manifest's fingerprint and names its device, so a profile of another bundle or device is refused
on load. The measured parts are typed (every timing, the runtime's overhead, memory); what describes
the run (backend, host, energy meter, settings) is kept as recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.errors import EdgeskipError
from edgeskip.fsutil import atomic_write_json
from edgeskip.schema import Record, SchemaError, field, read_json_record

__all__ = ["FORMAT", "SCHEMA_VERSION", "STATIC", "GateCost", "Overhead", "Profile", "ProfileError", "ProfiledBundle",
           "Stability", "Timing", "at_distance", "load_profile", "profile_path"]

FORMAT = "edgeskip.profile"
SCHEMA_VERSION = 2
MAX_ENTRIES = 100_000
# The piece that times the static policy as the Runtime runs it: the bundle's monolithic model in one call,
# input preparation and telemetry included (profiles of backends without a one-call model do not have it).
STATIC = "static"


class ProfileError(EdgeskipError):
    """A profile is missing, of another bundle or device, or of an unknown schema version."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Timing(Record):
    """Latency statistics of one measured piece, and its energy per call."""

    median_ms: float = field(ge=0.0)
    mean_ms: float = field(ge=0.0)  # 5%-trimmed mean: what the cost model adds up
    p90_ms: float = field(ge=0.0)
    std_ms: float = field(ge=0.0)
    samples: int = field(ge=1)
    energy_mj: float = field(ge=0.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Overhead(Record):
    """The runtime's own cost around the stages at one batch size (see the profiler)."""

    per_call_ms: float = field(ge=0.0)
    fixed_ms: float = field(ge=0.0)
    static_loop_ms: float
    sum_of_stages_ms: float
    half_loop_ms: float
    half_sum_of_stages_ms: float
    passes: int = field(ge=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateCost(Record):
    """The gate graph (``onnx/gate.onnx``, one backend call per input) at one batch size, as the profiler fits it:
    whole Runtime calls with every layer run (``all_ms``), every other layer skipped (``half_ms``) and every exit
    checked without firing (``exits_ms``), timed in the same passes as the stages, give what a layer run costs
    inside the graph beyond its time as a stage call (``per_layer_ms``; negative where the graph saves the stage
    call's dispatch), what an exit check costs there (``per_exit_ms``) and the call's fixed cost (``fixed_ms``:
    input preparation, every layer's agent and ``If``)."""

    per_layer_ms: float
    per_exit_ms: float
    fixed_ms: float
    all_ms: float = field(ge=0.0)
    half_ms: float | None = field(default=None, ge=0.0)  # None: no agents, every configuration runs every layer
    exits_ms: float | None = field(default=None, ge=0.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stability(Record):
    """How steady the machine was while one batch size was profiled, from the whole static loop timed once in
    every pass: ``drift``, the change of its median from the first half of the passes to the second (0.1: the
    second half ran 10% slower); ``spread``, its (p90 - p10) / median; ``extensions``, how many times the
    profiler timed more passes because the drift exceeded the settings' ``max_drift``."""

    drift: float
    spread: float = field(ge=0.0)
    extensions: int = field(ge=0)
    passes: int = field(ge=0)
    max_drift: float = field(ge=0.0)

    @property
    def steady(self) -> bool:
        return abs(self.drift) <= self.max_drift


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProfiledBundle(Record):
    model: str
    fingerprint: str  # the manifest's fingerprint
    target: str
    removed: tuple[int, ...] = field(ge=0)
    exits: tuple[int, ...] = field(ge=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Memory(Record):
    peak_rss_mb: float = field(ge=0.0)  # of the profiling process
    peak_rss_before_mb: float = field(ge=0.0)
    # batch -> execution path -> steady resident MiB of a fresh process running it (edgeskip.devices.memory)
    paths: dict[str, dict[str, float]] = field(default_factory=dict, max_items=64)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Profile(Record):
    """One bundle measured on one device: per batch size, every piece's timing and the runtime's overhead."""

    device: str
    bundle: ProfiledBundle
    batches: dict[str, dict[str, Timing]] = field(max_items=64)  # batch -> piece ('layer_03', 'agent_03@0') -> timing
    overhead: dict[str, Overhead] = field(max_items=64)
    energy: dict[str, Any]  # the meter: {"source": "rapl" | ... | "estimate", "unavailable": [...], ...}
    memory: Memory
    backend: dict[str, Any]  # what ran: backend, provider, threads, versions
    host: dict[str, Any]
    settings: dict[str, Any]
    created_utc: str
    stability: dict[str, Stability] = field(default_factory=dict, max_items=64)  # batch -> (profiles before: {})
    gate: dict[str, GateCost] = field(default_factory=dict, max_items=64)  # batch -> (no gate graph measured: {})

    def __post_init__(self) -> None:
        if not self.batches or any(not pieces for pieces in self.batches.values()):
            raise SchemaError("batches: a profile needs measurements")
        if any(not b.isdigit() or int(b) < 1 for b in self.batches):
            raise SchemaError(f"batches: keys are batch sizes, got {sorted(self.batches)}")
        if sum(len(p) for p in self.batches.values()) > MAX_ENTRIES:
            raise SchemaError(f"batches: more than {MAX_ENTRIES} measured pieces")
        if not isinstance(self.energy.get("source"), str):
            raise SchemaError("energy.source: the energy meter's name is missing")

    @property
    def energy_source(self) -> str:
        return str(self.energy["source"])

    def to_file(self) -> dict[str, Any]:
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, **self.to_dict()}

    def save(self, bundle_dir: str | Path) -> Path:
        """Write ``profiles/<device>.json`` beside the bundle's files, atomically."""
        path = profile_path(bundle_dir, self.device)
        atomic_write_json(path, self.to_file())
        return path


def at_distance(measured: Sequence[tuple[int, float]], static: float, depth: int,
                distance: Any) -> npt.NDArray[np.float64]:
    """A layer's cost at reuse ``distance`` (other layers run since its own previous run; scalar or array): linear
    between its measured ``layer_NN@d`` entries ``measured`` ((d, value) pairs) and its static-pass entry
    ``static``, which is the cost after every other layer (d = depth - 1)."""
    pts = sorted(measured)
    return np.interp(np.asarray(distance, np.float64), [float(d) for d, _ in pts] + [float(depth - 1)],
                     [v for _, v in pts] + [static])


def profile_path(bundle: Any, device: str) -> Path:
    """Where a bundle's profile of ``device`` lives: ``profiles/<device>.json`` beside its files."""
    root = bundle.path if hasattr(bundle, "path") else Path(bundle)
    return Path(root) / "profiles" / f"{device}.json"


def load_profile(path: str | Path, *, fingerprint: str | None = None, device: str | None = None) -> Profile:
    """Read and check a profile: its schema, and that it measured the bundle with ``fingerprint`` on ``device``
    when they are given."""
    data = read_json_record(path, FORMAT, ProfileError, "profile", "profile")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ProfileError(f"{path}: profile schema version {data.get('schema_version')!r} is not supported (this "
                           f"edgeskip reads {SCHEMA_VERSION}); run edgeskip profile again")
    try:
        profile = Profile.from_dict({k: v for k, v in data.items() if k not in ("format", "schema_version")})
    except SchemaError as exc:
        raise ProfileError(f"{path}: malformed profile ({exc})") from None
    if device is not None and profile.device != device:
        raise ProfileError(f"{path} is the profile of device {profile.device!r}, not {device!r}")
    if fingerprint is not None and profile.bundle.fingerprint != fingerprint:
        raise ProfileError(f"{path} was made for another bundle (or this bundle changed since): run edgeskip profile "
                           "again")
    return profile
