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

Every file is listed in the manifest's ``files`` table with its size and sha256. Trust:
nothing in a bundle is used until its checksum matches the manifest, and the manifest is
trusted only as far as its schema. Loading checks the schema (types, ranges, sizes), rejects
any path that leaves the bundle (absolute, ``..``) and any symlink or special file inside it,
and verifies every size and checksum before a backend parses anything; :meth:`Bundle.read`
hands a backend the very bytes it has just checked, so a file swapped after the check is
refused too.
"""

from __future__ import annotations

import dataclasses
import contextlib
import errno
import fcntl
import hashlib
import logging
import json
import math
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from edgeskip.config import ViTConfig, from_dict, to_dict
from edgeskip.errors import ConfigError, EdgeskipError
from edgeskip.fsutil import atomic_write_bytes, loads_json
from edgeskip.normalization import Normalization

__all__ = [
    "FORMAT", "SCHEMA_VERSION", "MANIFEST", "BundleError", "TensorSpec", "Stage", "Manifest", "Bundle",
    "sha256_file", "stage_name", "agent_name", "check_relative_path", "update_manifest",
]

FORMAT = "edgeskip.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # beside the manifest: an ed25519 signature of its bytes (edgeskip.signing)
TARGETS = ("cpu", "onnx", "tflite", "jetson")
STAGE_KINDS = ("embed", "layer", "head", "agent")
# Schema limits: a manifest may not make the runtime read, allocate or loop beyond these.
MAX_MANIFEST_BYTES = 16 << 20
MAX_FILE_BYTES = 4 << 30  # ONNX and TFLite files are at most 2 GiB (protobuf / flatbuffer offsets)
MAX_FILES = 10_000
LIMITS = {"depth": 1024, "width": 1 << 16, "heads": 1024, "mlp_hidden": 1 << 18, "image_size": 8192,
          "patch_size": 8192, "in_channels": 64, "num_classes": 100_000}


log = logging.getLogger(__name__)


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
        if not isinstance(data, dict) or not isinstance(data.get("shape"), list) \
                or not isinstance(data.get("name"), str) or not isinstance(data.get("dtype"), str):
            raise BundleError(f"malformed tensor spec {str(data)[:200]}: needs a name, a shape list and a dtype")
        spec = cls(data["name"], tuple(data["shape"]), data["dtype"])
        if any(not (isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 1)) for d in spec.shape):
            raise BundleError(f"tensor {spec.name!r}: shape entries must be positive integers or axis names, got {spec.shape}")
        return spec

    def check_shape(self, shape: Sequence[Any], where: str, kind: str) -> None:
        """A model's input/output ``shape`` (ints, or names / None for symbolic axes) fits this spec: the same
        rank, and every size fixed on both sides equal; otherwise a BundleError (a different model)."""
        if len(shape) != len(self.shape) or any(isinstance(want, int) and isinstance(have, int) and want != have
                                                for want, have in zip(self.shape, shape)):
            raise BundleError(f"{where}: {kind} has shape {list(shape)}, the manifest says {self.name!r} is "
                              f"{list(self.shape)} (a different model)")


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
        for key, limit in LIMITS.items():
            if getattr(cfg, key) > limit:
                raise BundleError(f"{MANIFEST}: config.{key} = {getattr(cfg, key)} is beyond this runtime's limit {limit}")
        if len(self.files) > MAX_FILES:
            raise BundleError(f"{MANIFEST}: {len(self.files)} files listed (at most {MAX_FILES})")
        if self.target not in TARGETS:
            raise BundleError(f"{MANIFEST}: unknown target {self.target!r} (known: {', '.join(TARGETS)})")
        if len(self.classes) != cfg.num_classes:
            raise BundleError(f"{MANIFEST}: {len(self.classes)} class names for a {cfg.num_classes}-class model")
        if any(isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < cfg.depth for r in self.removed) \
                or len(set(self.removed)) != len(self.removed):
            raise BundleError(f"{MANIFEST}: removed layers {list(self.removed)} must be distinct layer indices "
                              f"0..{cfg.depth - 1}")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise BundleError(f"{MANIFEST}: stage names repeat")
        layers = [s.layer for s in self.stages if s.kind == "layer"]
        expected = [j for j in range(cfg.depth) if j not in self.removed]
        if names[:1] != ["embed"] or "head" not in names or layers != expected:
            raise BundleError(f"{MANIFEST}: stages must be embed, the non-removed layers {expected} in order, "
                              f"then head; got {names}")
        if self.agents is not None:
            _need_file(self.agents, "agents")
            t = self.agents.get("thresholds")
            if not isinstance(t, list) or len(t) != cfg.depth or any(
                    v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
                    for v in t):
                raise BundleError(f"{MANIFEST}: agents need {cfg.depth} thresholds (null for removed layers)")
        if self.e2cm is not None:
            self._check_e2cm(self.e2cm)
        for section, key in ((self.gate, "gate"), (self.monolithic, "monolithic")):
            if section is not None:
                _need_file(section, key)
        self._check_io()
        if self.tensorrt is not None:
            self._check_engines(self.tensorrt.get("engines") or [])
        if self.default_config is not None:
            self._check_default(self.default_config)
        for path in self.referenced_files():
            check_relative_path(path)
            if path not in self.files:
                raise BundleError(f"{MANIFEST}: {path} is used but missing from the files table")


    def _check_e2cm(self, section: Mapping[str, Any]) -> None:
        depth = self.config.depth
        where = f"{MANIFEST}: e2cm"
        if not isinstance(section.get("dir"), str):
            raise BundleError(f"{where} needs a 'dir' path")
        check_relative_path(section["dir"])
        exits, thresholds = section.get("exits"), section.get("thresholds")
        if not isinstance(exits, list) or any(isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < depth
                                              for e in exits) or len(set(exits)) != len(exits):
            raise BundleError(f"{where}: 'exits' must be distinct layer indices 0..{depth - 1}, got {exits!r}")
        if not isinstance(thresholds, list) or len(thresholds) != len(exits) or any(
                isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) for t in thresholds):
            raise BundleError(f"{where}: one finite threshold per exit needed, got {thresholds!r}")
        if not isinstance(section.get("feature"), str):
            raise BundleError(f"{where} needs a 'feature' name")

    def _check_engines(self, engines: Any) -> None:
        """TensorRT engines recorded by ``edgeskip build-engines``: stage, precision, batch, listed file."""
        for r in engines if isinstance(engines, list) else [engines]:
            ok = isinstance(r, dict) and isinstance(r.get("stage"), str) and isinstance(r.get("precision"), str) \
                and isinstance(r.get("batch"), int) and not isinstance(r.get("batch"), bool) and r["batch"] >= 1 \
                and isinstance(r.get("file"), str) and r["file"] in self.files
            if not ok:
                raise BundleError(f"{MANIFEST}: malformed TensorRT engine record {str(r)[:200]} (needs stage, "
                                  "precision, batch >= 1 and a file listed in the files table)")

    def _check_io(self) -> None:
        """Preprocessing and per-format settings the runtime reads must have the right types."""
        cfg, pre = self.config, self.preprocessing
        if not isinstance(pre, Mapping):
            raise BundleError(f"{MANIFEST}: 'preprocessing' must be an object")
        for key, want in (("image_size", cfg.image_size), ("channels", cfg.in_channels)):
            if key in pre and (isinstance(pre[key], bool) or pre[key] != want):
                raise BundleError(f"{MANIFEST}: preprocessing.{key} = {pre[key]!r} disagrees with the model config ({want})")
        if not isinstance(pre.get("layout", "NCHW"), str):
            raise BundleError(f"{MANIFEST}: preprocessing.layout must be a string")
        for fmt, info in self.formats.items():
            batch = info.get("batch", 1) if isinstance(info, Mapping) else None
            if not isinstance(info, Mapping) or not (batch == "dynamic" or (
                    isinstance(batch, int) and not isinstance(batch, bool) and 1 <= batch <= 65536)):
                raise BundleError(f"{MANIFEST}: formats.{fmt} must be an object with a batch of 'dynamic' or 1..65536")
        if not isinstance(self.provenance, Mapping):
            raise BundleError(f"{MANIFEST}: 'provenance' must be an object")


def _need_file(section: Mapping[str, Any], key: str) -> None:
    if not isinstance(section.get("file"), str):
        raise BundleError(f"{MANIFEST}: the {key} section needs a 'file' path")


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
        if info["bytes"] > MAX_FILE_BYTES:
            raise BundleError(f"{MANIFEST}: {name} is said to hold {info['bytes']} bytes, more than any bundle file may "
                              f"({MAX_FILE_BYTES})")
        if len(info["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in info["sha256"]):
            raise BundleError(f"{MANIFEST}: file entry {name!r}: sha256 must be 64 lowercase hex digits")
        out[name] = {"sha256": info["sha256"], "bytes": info["bytes"]}
    return out


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk: ``Bundle.open(path)`` checks schema, paths and checksums."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True) -> Bundle:
        """Open and check a bundle; ``verify=False`` skips hashing every file up front (files are still
        checked as :meth:`read` hands them out)."""
        root = Path(path).expanduser()
        if not root.is_dir():
            raise BundleError(f"bundle {root} does not exist or is not a directory")
        if not (root / MANIFEST).exists() and not (root / MANIFEST).is_symlink():
            raise BundleError(f"{root} is not a bundle ({MANIFEST} is missing)")
        bundle = cls(root, Manifest.from_dict(_parse_manifest(_read_regular(root, MANIFEST, MAX_MANIFEST_BYTES))))
        if verify:
            bundle.verify()
        return bundle

    def file(self, name: str) -> Path:
        """The path of a bundle file, refusing a name that leaves the bundle and any symlink on the way
        (a bundle holds plain files only; it may itself be reached through a symlink)."""
        rel = check_relative_path(name)
        here = self.path
        for part in rel.parts:
            here = here / part
            try:
                mode = here.lstat().st_mode
            except FileNotFoundError:
                break  # a missing file is reported by whoever needs it
            except OSError as exc:
                raise BundleError(f"{self.path}: cannot inspect {name}: {exc.strerror}") from None
            if stat.S_ISLNK(mode):
                raise BundleError(f"{self.path}: {name} goes through a symlink ({here.relative_to(self.path)}); "
                                  "a bundle holds plain files only")
        return self.path / rel

    def verify(self) -> None:
        """Every listed file exists inside the bundle as a plain file with its recorded size and sha256
        (sizes of all first, so a truncated or padded file is refused before anything is hashed)."""
        for name, info in self.manifest.files.items():
            self.file(name)
            try:
                st = (self.path / name).lstat()
            except FileNotFoundError:
                raise BundleError(f"{self.path}: {name} is missing") from None
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"{self.path}: {name} is not a regular file")
            _check_size(self.path, name, st.st_size, info["bytes"])
        for name, info in self.manifest.files.items():
            h = hashlib.sha256()
            with _open_regular(self.path, name, info["bytes"]) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _check_digest(self.path, name, h.hexdigest(), info["sha256"])

    def read(self, name: str) -> bytes:
        """The bytes of a listed file, checked against the manifest's size and sha256 as they are read:
        what a backend parses is exactly what was verified."""
        info = self.manifest.files.get(name)
        if info is None:
            raise BundleError(f"{self.path}: {name} is not listed in the manifest's files table")
        self.file(name)  # no symlink on the way
        data = _read_regular(self.path, name, info["bytes"])
        _check_size(self.path, name, len(data), info["bytes"])
        _check_digest(self.path, name, hashlib.sha256(data).hexdigest(), info["sha256"])
        return data

    def stage_file(self, stage: str, fmt: str = "onnx") -> Path:
        return self.file(self._stage_name(stage, fmt))

    def read_stage(self, stage: str, fmt: str = "onnx") -> bytes:
        """The verified bytes of a stage's file in format ``fmt``."""
        return self.read(self._stage_name(stage, fmt))

    def _stage_name(self, stage: str, fmt: str) -> str:
        s = self.manifest.stage(stage)
        if fmt not in s.files:
            raise BundleError(f"stage {stage!r} has no {fmt} file in this bundle (it has: {', '.join(s.files) or 'none'})")
        return s.files[fmt]


def _check_size(root: Path, name: str, size: int, recorded: int) -> None:
    if size != recorded:
        raise BundleError(f"{root}: {name} has {size} bytes, the manifest says {recorded} "
                          f"({'truncated' if size < recorded else 'padded'} or replaced after export)")


def _check_digest(root: Path, name: str, digest: str, recorded: str) -> None:
    if digest != recorded:
        raise BundleError(f"{root}: {name} does not match its sha256 in the manifest (altered after export)")


def _open_regular(root: Path, name: str, limit: int) -> Any:
    """Open a bundle file for reading, never following a final symlink, never blocking on a FIFO or
    device, and refusing one larger than ``limit`` bytes before reading any of it."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(root / name, flags)
    except FileNotFoundError:
        raise BundleError(f"{root}: {name} is missing") from None
    except OSError as exc:
        reason = "it is a symlink; a bundle holds plain files only" if exc.errno == errno.ELOOP else exc.strerror
        raise BundleError(f"{root}: cannot read {name}: {reason}") from None
    f = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
        f.close()
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{root}: {name} is not a regular file")
        raise BundleError(f"{root}: {name} has {st.st_size} bytes, more than the {limit} it may have")
    return f


def _read_regular(root: Path, name: str, limit: int) -> bytes:
    """The whole of a bundle file opened by :func:`_open_regular` (one byte past ``limit`` reveals growth)."""
    with _open_regular(root, name, limit) as f:
        try:
            return f.read(limit + 1)  # type: ignore[no-any-return]
        except OSError as exc:
            raise BundleError(f"{root}: cannot read {name}: {exc.strerror}") from None


def _parse_manifest(raw: bytes) -> Any:
    try:
        return loads_json(raw)
    except ValueError as exc:
        raise BundleError(f"{MANIFEST} is not valid JSON: {exc}") from None


def update_manifest(bundle: Bundle, *, add_files: Sequence[str] = (), **changes: Any) -> Bundle:
    """Change a bundle after export, the one way anything does (engines, a default configuration): manifest
    fields replaced by ``changes``, files already written into the bundle added to the files table by their
    size and sha256 (``add_files``), the result checked as a loader checks it and written atomically under a
    lock on the bundle. What a profile or a Pareto front is bound to (:attr:`Manifest.fingerprint`) changes
    only when the model's files do. A signature of the previous manifest no longer holds and is removed
    (sign the bundle again). Returns the bundle as it now is."""
    with _locked(bundle.path):
        current = Bundle.open(bundle.path, verify=False).manifest
        files = dict(current.files)
        for name in add_files:
            path = bundle.file(name)
            if not path.is_file() or path.is_symlink():
                raise BundleError(f"{bundle.path}: {name} must be a plain file inside the bundle before it is recorded")
            files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        try:
            updated = dataclasses.replace(current, files=files, **changes) if add_files or changes else current
        except TypeError as exc:
            raise BundleError(f"cannot update the manifest: {exc}") from None
        data = json.dumps(updated.to_dict(), indent=2, sort_keys=True).encode() + b"\n"
        Manifest.from_dict(_parse_manifest(data))  # what is written must load
        try:
            atomic_write_bytes(bundle.path / MANIFEST, data)
        except OSError as exc:
            raise BundleError(f"cannot write {bundle.path / MANIFEST}: {exc.strerror or exc} (a read-only bundle?); "
                              "nothing was changed") from None
        signature = bundle.path / SIGNATURE
        if signature.exists() or signature.is_symlink():
            signature.unlink()
            log.warning("%s changed, so its signature no longer holds and was removed: sign it again with "
                        "'edgeskip sign %s --key KEY'", bundle.path / MANIFEST, bundle.path)
    return Bundle.open(bundle.path, verify=False)


@contextlib.contextmanager
def _locked(root: Path) -> Any:
    """An exclusive lock on the bundle folder while its manifest is read, changed and written."""
    try:
        fd = os.open(root, os.O_RDONLY)
    except OSError as exc:
        raise BundleError(f"cannot open bundle {root}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
