"""The bundle: what ``edgeskip export`` writes and the on-device runtime reads (torch-free).

A bundle is a directory described by ``manifest.json``::

    manifest.json         schema version, model config, preprocessing, stages, files + sha256
    onnx/embed.onnx       one ONNX file per stage (embed, layer_00..layer_NN, head, agent_NN)
    onnx/model.onnx       the monolithic static model (reference and benchmarks)
    onnx/gate.onnx        the whole dynamic network with an ONNX ``If`` per layer
    tflite/...            per-stage .tflite (``--target tflite``), fp32 and fp16 weights
    tensorrt/...          engine build script (``--target jetson``); engines are built on the device
    agents.npz            agent weights (L, D) and biases (L,)
    e2cm/                 class means, normalisers, thresholds (when calibrated)

Every file is listed in the manifest's ``files`` table with its size and sha256; loading
checks the schema, rejects any path that leaves the bundle (absolute, ``..``, symlinks),
and verifies every checksum before a backend parses anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from edgeskip.config import ViTConfig, from_dict, to_dict
from edgeskip.errors import ConfigError, EdgeskipError
from edgeskip.normalization import Normalization

__all__ = [
    "FORMAT", "SCHEMA_VERSION", "MANIFEST", "BundleError", "TensorSpec", "Stage", "Manifest", "Bundle",
    "sha256_file", "stage_name", "agent_name", "check_relative_path",
]

FORMAT = "edgeskip.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TARGETS = ("cpu", "onnx", "tflite", "jetson")
STAGE_KINDS = ("embed", "layer", "head", "agent")


class BundleError(EdgeskipError):
    """A bundle is missing, malformed, tampered with, or names a file outside itself."""


def stage_name(j: int) -> str:
    return f"layer_{j:02d}"


def agent_name(j: int) -> str:
    return f"agent_{j:02d}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_relative_path(name: Any) -> PurePosixPath:
    """A manifest path must be relative, '/'-separated and stay inside the bundle."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise BundleError(f"invalid file path {name!r} in the manifest")
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("..", ".", "") for part in p.parts) or name.startswith("/"):
        raise BundleError(f"manifest names a file outside the bundle: {name!r} (paths must be relative, without '..')")
    return p


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``"batch"`` for the dynamic batch axis) and dtype of one stage input/output."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Any) -> TensorSpec:
        try:
            spec = cls(str(data["name"]), tuple(data["shape"]), str(data["dtype"]))
        except (KeyError, TypeError) as exc:
            raise BundleError(f"malformed tensor spec {data!r}: {exc}") from None
        if any(not (isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 1)) for d in spec.shape):
            raise BundleError(f"tensor {spec.name!r}: shape entries must be positive integers or axis names, got {spec.shape}")
        return spec


@dataclasses.dataclass(frozen=True)
class Stage:
    """One unit the runtime executes: its kind, layer index, tensors and files per format."""

    name: str
    kind: str
    layer: int | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: Mapping[str, str]  # format ("onnx", "tflite", "tflite-fp16") -> path in the bundle

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "layer": self.layer,
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "files": dict(self.files)}

    @classmethod
    def from_dict(cls, data: Any) -> Stage:
        if not isinstance(data, dict):
            raise BundleError(f"a stage must be a JSON object, got {type(data).__name__}")
        try:
            kind, layer, files = data["kind"], data["layer"], data["files"]
            stage = cls(str(data["name"]), kind, layer, tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
                        tuple(TensorSpec.from_dict(t) for t in data["outputs"]), files)
        except (KeyError, TypeError) as exc:
            raise BundleError(f"malformed stage {data.get('name')!r}: missing or wrong {exc}") from None
        if kind not in STAGE_KINDS:
            raise BundleError(f"stage {stage.name!r}: unknown kind {kind!r} (known: {', '.join(STAGE_KINDS)})")
        if (layer is None) != (kind in ("embed", "head")) or (layer is not None and (isinstance(layer, bool) or not isinstance(layer, int))):
            raise BundleError(f"stage {stage.name!r}: a {kind} stage needs {'no' if kind in ('embed', 'head') else 'an integer'} layer index")
        if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
            raise BundleError(f"stage {stage.name!r}: 'files' must map format names to paths")
        for path in files.values():
            check_relative_path(path)
        return stage


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The parsed, validated ``manifest.json`` (unknown top-level keys are rejected)."""

    model_name: str
    config: ViTConfig
    classes: tuple[str, ...]
    dataset: str
    normalization: Normalization
    target: str
    precision: str
    stages: tuple[Stage, ...]
    files: Mapping[str, Mapping[str, Any]]  # path -> {"sha256", "bytes"}
    weights: Mapping[str, Any]  # {"source": "checkpoint" | "random-init", "untrained": bool, ...}
    removed: tuple[int, ...] = ()
    agents: Mapping[str, Any] | None = None  # {"file", "thresholds", "stages"}
    e2cm: Mapping[str, Any] | None = None  # {"dir", "feature", "exits", "thresholds", "costs"}
    gate: Mapping[str, Any] | None = None  # {"file", "inputs", "outputs", "thresholds", ...}
    monolithic: Mapping[str, Any] | None = None
    tensorrt: Mapping[str, Any] | None = None
    fidelity: Mapping[str, Any] | None = None
    formats: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # format -> batch, weight/io types
    preprocessing: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # written by ``edgeskip select``: {"thresholds", "exit_thresholds", "device", "budget", "predicted", ...}
    default_config: Mapping[str, Any] | None = None

    @property
    def untrained(self) -> bool:
        return bool(self.weights.get("untrained"))

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise BundleError(f"the bundle has no stage {name!r}")

    def layer_stages(self) -> list[Stage]:
        return [s for s in self.stages if s.kind == "layer"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "model_name": self.model_name,
            "config": to_dict(self.config),
            "classes": list(self.classes), "dataset": self.dataset, "normalization": self.normalization.to_dict(),
            "target": self.target, "precision": self.precision, "stages": [s.to_dict() for s in self.stages],
            "files": {k: dict(v) for k, v in sorted(self.files.items())}, "weights": dict(self.weights),
            "removed": list(self.removed), "agents": _plain(self.agents), "e2cm": _plain(self.e2cm),
            "gate": _plain(self.gate), "monolithic": _plain(self.monolithic), "tensorrt": _plain(self.tensorrt),
            "fidelity": _plain(self.fidelity), "formats": _plain(self.formats), "preprocessing": dict(self.preprocessing),
            "provenance": dict(self.provenance), "default_config": _plain(self.default_config),
        }

    @property
    def fingerprint(self) -> str:
        """sha256 of the manifest without its ``default_config``: what a profile or a Pareto front is bound to
        (choosing a default configuration does not change the model, so it keeps them valid)."""
        data = self.to_dict()
        data.pop("default_config")
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise BundleError(f"{MANIFEST} must hold a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise BundleError(f"{MANIFEST} is not an edgeskip bundle manifest (format {data.get('format')!r})")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(f"bundle schema version {version!r} is not supported (this edgeskip reads version "
                              f"{SCHEMA_VERSION}); re-export the bundle with this edgeskip")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - {"format", "schema_version"})
        if unknown:
            raise BundleError(f"{MANIFEST}: unknown key(s) {', '.join(unknown)}")
        try:
            stages = tuple(Stage.from_dict(s) for s in _typed(data, "stages", list))
            manifest = cls(
                model_name=str(_typed(data, "model_name", str)),
                config=from_dict(ViTConfig, _typed(data, "config", dict)),
                classes=tuple(str(c) for c in _typed(data, "classes", list)),
                dataset=str(_typed(data, "dataset", str)),
                normalization=Normalization.from_dict(_typed(data, "normalization", dict)),
                target=_typed(data, "target", str), precision=_typed(data, "precision", str),
                stages=stages, files=_files_table(_typed(data, "files", dict)),
                weights=_typed(data, "weights", dict),
                removed=tuple(_typed(data, "removed", list)),
                agents=_optional(data, "agents"), e2cm=_optional(data, "e2cm"), gate=_optional(data, "gate"),
                monolithic=_optional(data, "monolithic"), tensorrt=_optional(data, "tensorrt"),
                fidelity=_optional(data, "fidelity"), formats=_optional(data, "formats") or {}, preprocessing=data.get("preprocessing") or {},
                provenance=data.get("provenance") or {}, default_config=_optional(data, "default_config"),
            )
        except ConfigError as exc:
            raise BundleError(f"{MANIFEST}: {exc}") from None
        manifest._check()
        return manifest

    def referenced_files(self) -> list[str]:
        """Every path the manifest points at (each must be in the files table)."""
        paths = [p for s in self.stages for p in s.files.values()]
        for section in (self.agents, self.gate, self.monolithic):
            if section and section.get("file"):
                paths.append(section["file"])
        if self.e2cm:
            paths += [f"{self.e2cm['dir']}/{name}" for name in ("e2cm.npz", "e2cm.json")]
        return paths

    def _check_default(self, cfg: Mapping[str, Any]) -> None:
        depth = self.config.depth
        layers, exits = cfg.get("thresholds"), cfg.get("exit_thresholds")
        if layers is not None and not _threshold_list(layers, depth):
            raise BundleError(f"{MANIFEST}: default_config needs {depth} layer thresholds in [0, 1] or null, got {layers!r}")
        n_exits = len(self.e2cm["exits"]) if self.e2cm else 0
        if exits is not None and (not n_exits or not _threshold_list(exits, n_exits) or None in exits):
            raise BundleError(f"{MANIFEST}: default_config needs {n_exits} exit thresholds in [0, 1], got {exits!r}")

    def _check(self) -> None:
        cfg = self.config
        if self.target not in TARGETS:
            raise BundleError(f"{MANIFEST}: unknown target {self.target!r} (known: {', '.join(TARGETS)})")
        if len(self.classes) != cfg.num_classes:
            raise BundleError(f"{MANIFEST}: {len(self.classes)} class names for a {cfg.num_classes}-class model")
        if any(isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < cfg.depth for r in self.removed):
            raise BundleError(f"{MANIFEST}: removed layers {list(self.removed)} must be layer indices 0..{cfg.depth - 1}")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise BundleError(f"{MANIFEST}: stage names repeat")
        layers = [s.layer for s in self.stages if s.kind == "layer"]
        expected = [j for j in range(cfg.depth) if j not in self.removed]
        if names[:1] != ["embed"] or "head" not in names or layers != expected:
            raise BundleError(f"{MANIFEST}: stages must be embed, the non-removed layers {expected} in order, "
                              f"then head; got {names}")
        if self.agents is not None:
            t = self.agents.get("thresholds")
            if not isinstance(t, list) or len(t) != cfg.depth or any(
                    v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)) for v in t):
                raise BundleError(f"{MANIFEST}: agents need {cfg.depth} thresholds (null for removed layers)")
        if self.default_config is not None:
            self._check_default(self.default_config)
        for path in self.referenced_files():
            check_relative_path(path)
            if path not in self.files:
                raise BundleError(f"{MANIFEST}: {path} is used but missing from the files table")


def _threshold_list(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(
        v is None or (not isinstance(v, bool) and isinstance(v, (int, float)) and 0.0 <= v <= 1.0) for v in value)


def _plain(section: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if section is None else json.loads(json.dumps(section))


def _typed(data: dict[str, Any], key: str, kind: type) -> Any:
    if key not in data:
        raise BundleError(f"{MANIFEST}: required key {key!r} is missing")
    value = data[key]
    if not isinstance(value, kind):
        raise BundleError(f"{MANIFEST}: {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _optional(data: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise BundleError(f"{MANIFEST}: {key!r} must be an object or null, got {type(value).__name__}")
    return value


def _files_table(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, info in table.items():
        check_relative_path(name)
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str) or not isinstance(info.get("bytes"), int) \
                or isinstance(info.get("bytes"), bool) or info["bytes"] < 0:
            raise BundleError(f"{MANIFEST}: file entry {name!r} needs a sha256 string and a byte count")
        out[name] = {"sha256": info["sha256"], "bytes": info["bytes"]}
    return out


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk: ``Bundle.open(path)`` checks schema, paths and checksums."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True) -> Bundle:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise BundleError(f"bundle {root} does not exist or is not a directory")
        file = root / MANIFEST
        if not file.is_file():
            raise BundleError(f"{root} is not a bundle ({MANIFEST} is missing)")
        try:
            raw = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{file} is not valid JSON: {exc}") from None
        bundle = cls(root, Manifest.from_dict(raw))
        if verify:
            bundle.verify()
        return bundle

    def file(self, name: str) -> Path:
        """The absolute path of a bundle file, refusing anything that resolves outside the bundle."""
        rel = check_relative_path(name)
        root = self.path.resolve()
        target = (self.path / rel).resolve()
        if not target.is_relative_to(root):
            raise BundleError(f"{name} resolves outside the bundle ({target}): refusing a symlink that escapes it")
        return target

    def verify(self) -> None:
        """Every listed file exists inside the bundle with its recorded size and sha256."""
        for name, info in self.manifest.files.items():
            path = self.file(name)
            if not path.is_file():
                raise BundleError(f"{self.path}: {name} is missing")
            size = path.stat().st_size
            if size != info["bytes"]:
                raise BundleError(f"{self.path}: {name} has {size} bytes, the manifest says {info['bytes']} "
                                  "(truncated or replaced after export)")
            if sha256_file(path) != info["sha256"]:
                raise BundleError(f"{self.path}: {name} does not match its sha256 in the manifest (altered after export)")

    def stage_file(self, stage: str, fmt: str = "onnx") -> Path:
        s = self.manifest.stage(stage)
        if fmt not in s.files:
            raise BundleError(f"stage {stage!r} has no {fmt} file in this bundle (it has: {', '.join(s.files) or 'none'})")
        return self.file(s.files[fmt])
