"""Hostile bundles and hostile files: each is refused with its reason before any backend parses a byte
of it, and nothing is ever unpickled.

Trust model (README, SECURITY): nothing in a bundle is used until its checksum matches the manifest;
the manifest is trusted only as far as its schema.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest

from edgeskip.bundle import (
    MANIFEST,
    MAX_FILE_BYTES,
    MAX_MANIFEST_BYTES,
    Bundle,
    BundleError,
)
from edgeskip.errors import DataError
from edgeskip.runtimes import Runtime


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, root)
    return root


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every model a backend is asked to parse (onnxruntime sessions, onnx protobufs)."""
    seen: list[str] = []
    real_session, real_load = onnxruntime.InferenceSession, onnx.load_from_string

    def session(source: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append("onnxruntime")
        return real_session(source, *args, **kwargs)

    def load(data: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append("onnx")
        return real_load(data, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    monkeypatch.setattr(onnx, "load_from_string", load)
    return seen


def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / MANIFEST).read_text())  # type: ignore[no-any-return]


def _write_manifest(root: Path, doc: dict[str, Any]) -> None:
    (root / MANIFEST).write_text(json.dumps(doc))


def _rehash(root: Path, name: str) -> None:
    """Make the manifest agree with the file as it now is (an attacker who can edit both)."""
    doc = _manifest(root)
    data = (root / name).read_bytes()
    doc["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _write_manifest(root, doc)


# -- one function per hostile bundle: damage the copy, return the reason the refusal must give ------------

def absolute_path(root: Path) -> str:
    doc = _manifest(root)
    doc["stages"][0]["files"]["onnx"] = "/etc/passwd"
    doc["files"]["/etc/passwd"] = doc["files"].pop("onnx/embed.onnx")
    _write_manifest(root, doc)
    return "outside the bundle"


def dot_dot(root: Path) -> str:
    doc = _manifest(root)
    doc["stages"][1]["files"]["onnx"] = "onnx/../../elsewhere/layer_00.onnx"
    _write_manifest(root, doc)
    return "outside the bundle"


def unlisted_file(root: Path) -> str:
    doc = _manifest(root)
    doc["stages"][1]["files"]["onnx"] = "onnx/extra.onnx"
    shutil.copy(root / "onnx" / "layer_00.onnx", root / "onnx" / "extra.onnx")
    _write_manifest(root, doc)
    return "missing from the files table"


def symlink_out(root: Path) -> str:
    """Same bytes, but living outside the bundle: the checksum matches, the symlink is still refused."""
    f = root / "onnx" / "head.onnx"
    outside = root.parent / "outside-head.onnx"
    shutil.move(f, outside)
    os.symlink(outside, f)
    return "symlink"


def symlinked_folder(root: Path) -> str:
    shutil.move(root / "onnx", root.parent / "onnx-elsewhere")
    os.symlink(root.parent / "onnx-elsewhere", root / "onnx")
    return "symlink"


def symlink_inside(root: Path) -> str:
    f = root / "onnx" / "layer_01.onnx"
    f.unlink()
    os.symlink("layer_00.onnx", f)
    return "symlink"


def fifo(root: Path) -> str:
    f = root / "agents.npz"
    f.unlink()
    os.mkfifo(f)  # reading it would block forever
    return "not a regular file"


def swapped(root: Path) -> str:
    a, b = root / "onnx" / "layer_00.onnx", root / "onnx" / "layer_01.onnx"
    tmp = a.with_suffix(".tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    return "sha256"


def truncated(root: Path) -> str:
    f = root / "onnx" / "layer_02.onnx"
    f.write_bytes(f.read_bytes()[:1000])
    return "truncated"


def padded(root: Path) -> str:
    f = root / "onnx" / "layer_02.onnx"
    f.write_bytes(f.read_bytes() + b"\0" * 64)
    return "padded"


def oversized_sparse(root: Path) -> str:
    """A 64 GiB (sparse) file in place of a layer: refused from its size, never read."""
    f = root / "onnx" / "layer_03.onnx"
    with f.open("r+b") as fh:
        fh.truncate(64 << 30)
    return "padded"


def oversized_claim(root: Path) -> str:
    doc = _manifest(root)
    doc["files"]["onnx/layer_03.onnx"]["bytes"] = MAX_FILE_BYTES + 1
    _write_manifest(root, doc)
    return "more than any bundle file may"


def oversized_manifest(root: Path) -> str:
    text = (root / MANIFEST).read_text()
    (root / MANIFEST).write_text(text[:-2] + " " * MAX_MANIFEST_BYTES + text[-2:])
    return "more than the"


def other_model(root: Path) -> str:
    """embed.onnx replaced by another valid ONNX model with other shapes (a layer)."""
    shutil.copy(root / "onnx" / "layer_00.onnx", root / "onnx" / "embed.onnx")
    return "has .* bytes|sha256"


def other_model_same_size(root: Path) -> str:
    """A valid model with different weights and exactly the same size: only the checksum tells."""
    model = onnx.load(str(root / "onnx" / "layer_00.onnx"))
    for init in model.graph.initializer:
        if init.raw_data:
            init.raw_data = bytes(len(init.raw_data))  # zero weights, same length
    (root / "onnx" / "layer_00.onnx").write_bytes(model.SerializeToString())
    return "sha256"


HOSTILE: list[Callable[[Path], str]] = [
    absolute_path, dot_dot, unlisted_file, symlink_out, symlinked_folder, symlink_inside, fifo, swapped, truncated,
    padded, oversized_sparse, oversized_claim, oversized_manifest, other_model, other_model_same_size,
]


@pytest.mark.parametrize("damage", HOSTILE, ids=lambda f: f.__name__)
def test_a_hostile_bundle_is_refused_before_any_backend_parses_it(bundle: Path, parses: list[str],
                                                                 damage: Callable[[Path], str]) -> None:
    reason = damage(bundle)
    with pytest.raises(BundleError, match=reason):
        Runtime(bundle)
    assert parses == []  # refused by edgeskip's own checks, before onnxruntime or onnx saw a byte
    with pytest.raises(BundleError, match=reason):
        Bundle.open(bundle)


def test_a_file_swapped_after_the_bundle_was_verified_is_refused(bundle: Path, parses: list[str]) -> None:
    """Runtime reads each file once and checks those very bytes, so a swap between check and use is caught."""
    opened = Bundle.open(bundle)  # verified now
    shutil.copy(bundle / "onnx" / "layer_00.onnx", bundle / "onnx" / "embed.onnx")
    with pytest.raises(BundleError, match="embed.onnx"):
        Runtime(opened)
    assert parses == []
    with pytest.raises(BundleError, match="embed.onnx"):
        Runtime(bundle, verify=False)  # skipping the up-front check still checks what is loaded


def test_another_model_with_matching_checksums_is_refused_for_its_shapes(bundle: Path) -> None:
    """The manifest edited to match a swapped model: checksums pass, the model's inputs and outputs do
    not match the stage the manifest describes, so the runtime refuses it before running anything."""
    shutil.copy(bundle / "onnx" / "layer_00.onnx", bundle / "onnx" / "embed.onnx")
    _rehash(bundle, "onnx/embed.onnx")
    Bundle.open(bundle)  # consistent checksums
    with pytest.raises(BundleError, match="embed.onnx.*(input|output).*the manifest says"):
        Runtime(bundle)


class _Payload:
    """Unpickling this creates a file: proof that something ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


def test_a_pickled_object_in_the_agent_weights_is_never_unpickled(bundle: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    np.savez(buf, weights=np.array([_Payload(marker)], dtype=object), biases=np.zeros(4, np.float32))
    (bundle / "agents.npz").write_bytes(buf.getvalue())
    _rehash(bundle, "agents.npz")  # even with consistent checksums
    with pytest.raises(BundleError, match="agent parameters"):
        Runtime(bundle)
    assert not marker.exists()


def test_a_malicious_cifar_pickle_is_refused(tmp_path: Path) -> None:
    from edgeskip.data.safe_pickle import safe_loads

    marker = tmp_path / "pwned"
    with pytest.raises(DataError, match="refusing to unpickle"):
        safe_loads(_malicious_pickle(marker))
    assert not marker.exists()


def test_no_code_path_calls_an_unrestricted_unpickler(repo_root: Path) -> None:
    """pickle.load(s) and np.load with allow_pickle=True appear nowhere in the package, and torch.load only with
    weights_only=True (PyTorch's restricted unpickler: tensors and plain containers, never code), for a user's
    timm .pth weights."""
    bad = ("pickle.load(", "pickle.loads(", "allow_pickle=True", "dill.", "joblib.load")
    hits = []
    for folder in ("edgeskip", "runtimes", "devices", "exporters"):
        for path in (repo_root / folder).rglob("*.py"):
            text = path.read_text()
            hits += [f"{path.relative_to(repo_root)}: {needle}" for needle in bad if needle in text]
            calls = text.split("torch.load(")[1:]
            hits += [f"{path.relative_to(repo_root)}: torch.load without weights_only=True" for call in calls
                     if "weights_only=True" not in call.split(")")[0]]
    assert hits == []


@pytest.mark.slow
def test_another_tflite_model_with_matching_checksums_is_refused_for_its_shapes(digits_tflite_bundle: Path,
                                                                                 tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(digits_tflite_bundle, root)
    files = {s["name"]: s["files"].get("tflite") for s in _manifest(root)["stages"]}
    shutil.copy(root / files["layer_00"], root / files["embed"])
    _rehash(root, files["embed"])
    with pytest.raises(BundleError, match="embed.*input has shape .* the manifest says"):
        Runtime(root, backend="tflite")
