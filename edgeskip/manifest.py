"""The bundle contract: ``manifest.json`` as frozen, typed records, validated in one place (torch-free).

Written by ``edgeskip export`` (:mod:`edgeskip.exporters.export`), read by the runtime and every tool;
anything changed after export (TensorRT engines, a default configuration) goes through
:func:`edgeskip.bundle.update_manifest`. Each section is a :class:`~edgeskip.schema.Record`: unknown
keys, wrong types, values out of range are a :class:`BundleError` naming the field
(``manifest.json: agents.thresholds[3]: must be a number, got str 'x'``); what spans several fields
(stage order, thresholds per layer, paths in the files table) is checked by :meth:`Manifest.check`.
Limits bound everything the runtime would read, allocate or loop over, and are checked before
anything loops over the model's layers. A bundle travels between machines: it records no machine
path, only names and content hashes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, Literal, get_args

from edgeskip.config import ViTConfig
from edgeskip.errors import EdgeskipError
from edgeskip.normalization import Normalization
from edgeskip.schema import Record, SchemaError, convert, field

__all__ = [
    "FORMAT", "SCHEMA_VERSION", "MANIFEST", "PRECISIONS", "TARGETS", "STAGE_KINDS", "MAX_FILE_BYTES", "MAX_FILES", "LIMITS",
    "BundleError", "TensorSpec", "Stage", "FileEntry", "Weights", "Agents", "Exits", "Gate", "Monolithic",
    "EngineRecord", "TensorRT", "FormatInfo", "Preprocessing", "Provenance", "GateFidelity", "Fidelity",
    "DefaultConfig", "Manifest", "check_relative_path", "stage_name", "agent_name",
]

FORMAT = "edgeskip.bundle"
SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
TARGETS = ("cpu", "onnx", "tflite", "jetson")
STAGE_KINDS = ("embed", "layer", "head", "agent")
PRECISIONS = ("fp32", "fp16", "int8")  # what a layer can run in, where the bundle holds it
MAX_FILE_BYTES = 4 << 30  # ONNX and TFLite files are at most 2 GiB (protobuf / flatbuffer offsets)
MAX_FILES = 10_000
MAX_ITEMS = 65_536  # any list or table in a manifest
# A manifest may not make the runtime read, allocate or loop beyond these.
LIMITS = {"depth": 1024, "width": 1 << 16, "heads": 1024, "mlp_hidden": 1 << 18, "image_size": 8192,
          "patch_size": 8192, "in_channels": 64, "num_classes": 100_000}
SHA256 = frozenset("0123456789abcdef")


class BundleError(EdgeskipError):
    """A bundle is missing, malformed, tampered with, or names a file outside itself."""


def stage_name(j: int) -> str:
    return f"layer_{j:02d}"


def agent_name(j: int) -> str:
    return f"agent_{j:02d}"


def check_relative_path(name: Any) -> PurePosixPath:
    """A manifest path must be relative, '/'-separated and stay inside the bundle."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise BundleError(f"invalid file path {name!r} in the manifest")
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("..", ".", "") for part in p.parts) or name.startswith("/"):
        raise BundleError(f"manifest names a file outside the bundle: {name!r} (paths must be relative, without '..')")
    return p


def _sha256(value: str | None, where: str) -> None:
    if value is not None and (len(value) != 64 or not set(value) <= SHA256):
        raise SchemaError(f"{where}: sha256 must be 64 lowercase hex digits")


Threshold = float | None  # an agent threshold in [0, 1]; None: the layer is removed


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSpec(Record):
    """Name, shape (``"batch"`` for the dynamic batch axis) and dtype of one stage input/output."""

    name: str
    shape: tuple[int | str, ...] = field(ge=1, max_items=16)
    dtype: str

    def check_shape(self, shape: Any, where: str, kind: str) -> None:
        """A model's input/output ``shape`` (ints, or names / None for symbolic axes) fits this spec: the same
        rank, and every size fixed on both sides equal; otherwise a BundleError (a different model)."""
        if len(shape) != len(self.shape) or any(isinstance(want, int) and isinstance(have, int) and want != have
                                                for want, have in zip(self.shape, shape)):
            raise BundleError(f"{where}: {kind} has shape {list(shape)}, the manifest says {self.name!r} is "
                              f"{list(self.shape)} (a different model)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage(Record):
    """One unit the runtime executes: its kind, layer index, tensors and files per format."""

    name: str
    kind: Literal["embed", "layer", "head", "agent"]
    layer: int | None = field(ge=0)
    inputs: tuple[TensorSpec, ...] = field(max_items=16)
    outputs: tuple[TensorSpec, ...] = field(max_items=16)
    files: dict[str, str] = field(max_items=64)  # format ("onnx", "tflite", ...) -> path in the bundle

    def __post_init__(self) -> None:
        if (self.layer is None) != (self.kind in ("embed", "head")):
            raise SchemaError(f"stage {self.name!r}: a {self.kind} stage needs "
                              f"{'no' if self.kind in ('embed', 'head') else 'an integer'} layer index")
        for path in self.files.values():
            check_relative_path(path)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileEntry(Record):
    sha256: str
    bytes: int = field(ge=0)

    def __post_init__(self) -> None:
        _sha256(self.sha256, "sha256")
        if self.bytes > MAX_FILE_BYTES:
            raise SchemaError(f"said to hold {self.bytes} bytes, more than any bundle file may ({MAX_FILE_BYTES})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Weights(Record):
    """Where the weights came from: a checkpoint (its folder name and weights sha256, never a path) or a seed."""

    source: Literal["checkpoint", "random-init"]
    untrained: bool
    state_sha256: str  # every tensor of the exported model (the torch reference backend proves its rebuild)
    checkpoint_name: str | None = None
    checkpoint_sha256: str | None = None  # sha256 of the checkpoint's model.safetensors
    seed: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict, max_items=MAX_ITEMS)

    def __post_init__(self) -> None:
        _sha256(self.state_sha256, "state_sha256")
        _sha256(self.checkpoint_sha256, "checkpoint_sha256")
        if self.source == "checkpoint" and (self.checkpoint_sha256 is None or self.untrained):
            raise SchemaError("weights from a checkpoint need its checkpoint_sha256 and are not untrained")
        if self.source == "random-init" and (self.seed is None or not self.untrained):
            raise SchemaError("random-init weights need their seed and are untrained")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Agents(Record):
    """The skip agents: weights (L, D) and biases (L,) in ``file``, a threshold per layer (None: removed)."""

    file: str
    thresholds: tuple[Threshold, ...] = field(ge=0.0, le=1.0, max_items=LIMITS["depth"])
    stages: tuple[str, ...] = field(max_items=LIMITS["depth"])
    rule: str = "run layer j when sigmoid(w_j . cls + b_j) >= threshold_j"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Exits(Record):
    """E²CM exits: class means, normalisers and thresholds under ``dir`` (e2cm.npz, e2cm.json)."""

    dir: str
    feature: str
    exits: tuple[int, ...] = field(ge=0, max_items=LIMITS["depth"])
    thresholds: tuple[float, ...] = field(ge=0.0, le=1.0, max_items=LIMITS["depth"])
    costs: dict[str, Any] = field(default_factory=dict, max_items=64)  # edgeskip.e2cm.MacCosts.to_dict()
    budget: float | None = None

    def __post_init__(self) -> None:
        check_relative_path(self.dir)
        if len(set(self.exits)) != len(self.exits) or len(self.thresholds) != len(self.exits):
            raise SchemaError(f"'exits' must be distinct layer indices with one threshold each, got exits "
                              f"{list(self.exits)} and {len(self.thresholds)} thresholds")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gate(Record):
    """``onnx/gate.onnx``: the whole dynamic network with an ONNX ``If`` per layer."""

    file: str
    inputs: tuple[str, ...] = field(max_items=16)
    outputs: tuple[str, ...] = field(max_items=16)
    layer_thresholds: dict[str, str] = field(max_items=LIMITS["depth"])  # layer index -> initialiser name
    exit_thresholds: tuple[str, ...] = field(max_items=LIMITS["depth"])
    batch: str
    files: dict[str, str] = field(default_factory=dict, max_items=64)  # other formats of the gate graph


@dataclasses.dataclass(frozen=True, kw_only=True)
class Monolithic(Record):
    """``onnx/model.onnx``: the static model in one graph (the runtime's fastest static path on onnxruntime)."""

    file: str
    inputs: tuple[str, ...] = field(max_items=16)
    outputs: tuple[str, ...] = field(max_items=16)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineRecord(Record):
    """A TensorRT engine ``edgeskip build-engines`` built on the device."""

    stage: str
    precision: str
    batch: int = field(ge=1)
    file: str
    onnx: str
    trt_version: str
    device: str | None  # the GPU, or the Jetson module, it was built on (None: unknown)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorRT(Record):
    """What the bundle holds for TensorRT: the build script of a Jetson export, and the engines built on the device."""

    precision: str
    batch_sizes: tuple[int, ...] = field(ge=1, max_items=64)
    script: str | None = None  # tensorrt/build_engines.sh (--target jetson)
    opset: int = 17
    engines: tuple[EngineRecord, ...] = field(default=(), max_items=MAX_ITEMS)
    note: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class FormatInfo(Record):
    """What one file format holds: its batch axis, weight and I/O types."""

    batch: int | Literal["dynamic"] = field(ge=1, le=65536)
    weights: str
    io: str
    opset: int | None = None
    use: str | None = None
    # one input's outputs depend on the other inputs of its call (INT8 activations quantized over each call's batch)
    batch_dependent: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preprocessing(Record):
    """How the runtime turns an application's image into the model's input."""

    input: str
    layout: str
    scale: float
    image_size: int = field(ge=1)
    channels: int = field(ge=1)
    resize: str
    normalization: Normalization


@dataclasses.dataclass(frozen=True, kw_only=True)
class Provenance(Record):
    edgeskip_version: str
    torch_version: str
    onnx_version: str
    opset: int
    created_utc: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateFidelity(Record):
    images: int
    same_decisions: int
    ties: int
    different_decisions: int
    max_abs_logit_error: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fidelity(Record):
    """What the export measured against PyTorch on ``images``: max |exported - torch| per stage and format."""

    images: str
    tolerance_fp32: float
    onnx: dict[str, float] = field(max_items=MAX_ITEMS)
    monolithic: float
    gate: GateFidelity
    formats: dict[str, dict[str, float]] = field(default_factory=dict, max_items=64)  # onnx-fp16, tflite, ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budget(Record):
    value: float = field(gt=0.0)
    unit: Literal["ms", "mJ"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Predicted(Record):
    latency_ms: float | None = None
    energy_mj: float | None = None
    energy_source: str | None = None


# How the Runtime runs a configuration (Runtime.path): the monolithic model (a static plan), the gate graph (one
# input per backend call) or the per-stage loop; what a Pareto point and a default configuration record.
ExecutionPath = Literal["monolithic", "gate", "stages"]
PATHS: tuple[str, ...] = get_args(ExecutionPath)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DefaultConfig(Record):
    """The configuration ``edgeskip select`` chose for a budget, which policy ``auto`` runs."""

    thresholds: tuple[Threshold, ...] | None = field(ge=0.0, le=1.0, max_items=LIMITS["depth"])
    exit_thresholds: tuple[float, ...] | None = field(ge=0.0, le=1.0, max_items=LIMITS["depth"])
    device: str
    budget: Budget
    batch: int = field(ge=1)
    predicted: Predicted
    accuracy: float = field(ge=0.0, le=1.0)
    calibration_images: int | None = None
    selected_utc: str
    path: ExecutionPath | None = None  # the execution path it was predicted on
    precisions: tuple[str | None, ...] | None = field(default=None, max_items=LIMITS["depth"])  # per layer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest(Record):
    """The parsed, validated ``manifest.json``."""

    model_name: str
    config: ViTConfig
    classes: tuple[str, ...] = field(max_items=LIMITS["num_classes"])
    dataset: str
    normalization: Normalization
    target: Literal["cpu", "onnx", "tflite", "jetson"]
    precision: str
    stages: tuple[Stage, ...] = field(max_items=2 * LIMITS["depth"] + 2)
    files: dict[str, FileEntry] = field(max_items=MAX_FILES)
    weights: Weights
    removed: tuple[int, ...] = field(default=(), ge=0, max_items=LIMITS["depth"])
    agents: Agents | None = None
    e2cm: Exits | None = None
    gate: Gate | None = None
    monolithic: Monolithic | None = None
    tensorrt: TensorRT | None = None
    fidelity: Fidelity | None = None
    formats: dict[str, FormatInfo] = field(default_factory=dict, max_items=64)
    preprocessing: Preprocessing | None = None
    provenance: Provenance | None = None
    default_config: DefaultConfig | None = None  # written by ``edgeskip select``

    @property
    def untrained(self) -> bool:
        return self.weights.untrained

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise BundleError(f"the bundle has no stage {name!r}")

    def layer_stages(self) -> list[Stage]:
        return [s for s in self.stages if s.kind == "layer"]

    def to_file(self) -> dict[str, Any]:
        """What ``manifest.json`` holds: the format, the schema version and every section."""
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, **self.to_dict()}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_file(), indent=2, sort_keys=True).encode() + b"\n"

    @property
    def fingerprint(self) -> str:
        """sha256 of the manifest without its ``default_config``: what a profile or a Pareto front is bound to
        (choosing a default configuration does not change the model, so it keeps them valid)."""
        data = self.to_file()
        data.pop("default_config")
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> Manifest:
        """Parse a manifest's JSON (with ``format`` and ``schema_version``) and check it whole."""
        if not isinstance(data, Mapping):
            raise BundleError(f"{MANIFEST} must hold a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise BundleError(f"{MANIFEST} is not an edgeskip bundle manifest (format {data.get('format')!r})")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(f"bundle schema version {version!r} is not supported (this edgeskip reads version "
                              f"{SCHEMA_VERSION}); export the bundle again with this edgeskip")
        _check_limits(data.get("config"))
        body = {k: v for k, v in data.items() if k not in ("format", "schema_version")}
        try:
            manifest = convert(cls, body, "")
        except SchemaError as exc:
            raise BundleError(f"{MANIFEST}: {exc}") from None
        manifest.check()
        return manifest

    def referenced_files(self) -> list[str]:
        """Every path the manifest points at (each must be in the files table)."""
        paths = [p for s in self.stages for p in s.files.values()]
        paths += [section.file for section in (self.agents, self.gate, self.monolithic) if section is not None]
        if self.e2cm is not None:
            paths += [f"{self.e2cm.dir}/{name}" for name in ("e2cm.npz", "e2cm.json")]
        if self.tensorrt is not None:
            paths += [e.file for e in self.tensorrt.engines]
        return paths

    def check(self) -> None:
        """What spans fields: stage order, one threshold per layer, every used file listed, paths inside."""
        cfg, where = self.config, MANIFEST
        for name in self.files:
            check_relative_path(name)
        if len(self.classes) != cfg.num_classes:
            raise BundleError(f"{where}: {len(self.classes)} class names for a {cfg.num_classes}-class model")
        if any(r >= cfg.depth for r in self.removed) or len(set(self.removed)) != len(self.removed):
            raise BundleError(f"{where}: removed layers {list(self.removed)} must be distinct layer indices "
                              f"0..{cfg.depth - 1}")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise BundleError(f"{where}: stage names repeat")
        layers = [s.layer for s in self.stages if s.kind == "layer"]
        expected = [j for j in range(cfg.depth) if j not in self.removed]
        if names[:1] != ["embed"] or "head" not in names or layers != expected:
            raise BundleError(f"{where}: stages must be embed, the non-removed layers {expected} in order, then "
                              f"head; got {names}")
        if self.agents is not None and len(self.agents.thresholds) != cfg.depth:
            raise BundleError(f"{where}: agents need {cfg.depth} thresholds (null for removed layers)")
        if self.e2cm is not None and any(e >= cfg.depth for e in self.e2cm.exits):
            raise BundleError(f"{where}: e2cm: 'exits' must be distinct layer indices 0..{cfg.depth - 1}, got "
                              f"{list(self.e2cm.exits)}")
        pre = self.preprocessing
        if pre is not None and (pre.image_size, pre.channels) != (cfg.image_size, cfg.in_channels):
            raise BundleError(f"{where}: preprocessing ({pre.image_size} px, {pre.channels} channels) disagrees with "
                              f"the model config ({cfg.image_size} px, {cfg.in_channels} channels)")
        if self.default_config is not None:
            self._check_default(self.default_config)
        for path in self.referenced_files():
            check_relative_path(path)
            if path not in self.files:
                raise BundleError(f"{where}: {path} is used but missing from the files table")

    def _check_default(self, cfg: DefaultConfig) -> None:
        depth, n_exits = self.config.depth, len(self.e2cm.exits) if self.e2cm else 0
        if cfg.thresholds is not None and len(cfg.thresholds) != depth:
            raise BundleError(f"{MANIFEST}: default_config needs {depth} layer thresholds in [0, 1] or null, got "
                              f"{list(cfg.thresholds)}")
        if cfg.exit_thresholds is not None and (not n_exits or len(cfg.exit_thresholds) != n_exits):
            raise BundleError(f"{MANIFEST}: default_config needs {n_exits} exit thresholds in [0, 1], got "
                              f"{list(cfg.exit_thresholds)}")
        if cfg.precisions is not None and (len(cfg.precisions) != depth or any(
                p is not None and p not in PRECISIONS for p in cfg.precisions)):
            raise BundleError(f"{MANIFEST}: default_config needs {depth} layer precisions ({', '.join(PRECISIONS)} or "
                              f"null), got {list(cfg.precisions)}")


def _check_limits(config: Any) -> None:
    """The model's sizes within the runtime's limits, before anything loops over them."""
    if not isinstance(config, Mapping):
        return  # the schema names what is wrong
    for key, limit in LIMITS.items():
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            raise BundleError(f"{MANIFEST}: config.{key} = {value} is beyond this runtime's limit {limit}")
