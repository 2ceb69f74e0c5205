"""The bundle on disk: what ``edgeskip export`` writes and the on-device runtime reads (torch-free).

A bundle is a directory described by ``manifest.json`` (its typed contract: :mod:`edgeskip.manifest`)::

    manifest.json         schema version, model config, preprocessing, stages, files + sha256
    manifest.sig          optional: an ed25519 signature of manifest.json's bytes (edgeskip sign)
    onnx/embed.onnx       one ONNX file per stage (embed, layer_00..layer_NN, head, agent_NN)
    onnx/model.onnx       the monolithic static model (reference and benchmarks)
    onnx/gate.onnx        the whole dynamic network with an ONNX ``If`` per layer
    tflite/...            per-stage .tflite (``--target tflite``), fp32 and fp16 weights
    tensorrt/...          engine build script (``--target jetson``); engines are built on the device
    agents.npz            agent weights (L, D) and biases (L,)
    e2cm/                 class means, normalisers, thresholds (when calibrated)

Every file is listed in the manifest's ``files`` table with its size and sha256. Trust:
nothing in a bundle is used until its checksum matches the manifest, and the manifest is
trusted only as far as its schema, or, given ``trusted_keys``, as far as a signature by one
of them, checked over its exact bytes before they are parsed. Loading checks the schema
(types, ranges, sizes), rejects any path that leaves the bundle (absolute, ``..``) and any
symlink or special file inside it, and verifies every size and checksum before a backend
parses anything; :meth:`Bundle.read` hands a backend the very bytes it has just checked, so
a file swapped after the check is refused too. After export a bundle changes only through
:func:`update_manifest` (engines, a default configuration), and is signed by :func:`sign`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgeskip.fsutil import atomic_write_bytes, loads_json, sha256_file
from edgeskip.manifest import (
    FORMAT,
    LIMITS,
    MANIFEST,
    MAX_FILE_BYTES,
    MAX_FILES,
    SCHEMA_VERSION,
    STAGE_KINDS,
    TARGETS,
    BundleError,
    FileEntry,
    Manifest,
    Stage,
    TensorSpec,
    agent_name,
    check_relative_path,
    stage_name,
)
from edgeskip.signing import (
    MAX_SIGNATURE_BYTES,
    KeyLike,
    PrivateKey,
    PublicKey,
    SignatureError,
    sign_manifest,
    verify_manifest,
)

__all__ = [
    "FORMAT", "SCHEMA_VERSION", "MANIFEST", "SIGNATURE", "LIMITS", "MAX_FILES", "MAX_FILE_BYTES",
    "MAX_MANIFEST_BYTES", "STAGE_KINDS", "TARGETS", "BundleError", "SignatureError", "TensorSpec", "Stage",
    "Manifest", "Bundle", "sha256_file", "stage_name", "agent_name", "check_relative_path", "sign", "update_manifest",
]

log = logging.getLogger(__name__)

SIGNATURE = "manifest.sig"  # beside the manifest: an ed25519 signature of its bytes (edgeskip.signing)
MAX_MANIFEST_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A checked bundle on disk: ``Bundle.open(path)`` checks the signature (given trusted keys), the schema,
    paths and checksums."""

    path: Path
    manifest: Manifest
    manifest_bytes: bytes = dataclasses.field(repr=False)  # exactly what was parsed (and, if signed, verified)
    signer: PublicKey | None = None  # the trusted key whose signature was checked, if keys were given

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True, trusted_keys: Iterable[KeyLike] | None = None) -> Bundle:
        """Open and check a bundle; ``verify=False`` skips hashing every file up front (files are still
        checked as :meth:`read` hands them out). With ``trusted_keys``, the manifest's bytes must carry a valid
        signature (``manifest.sig``) by one of them, checked before anything is parsed."""
        root = Path(path).expanduser()
        if not root.is_dir():
            raise BundleError(f"bundle {root} does not exist or is not a directory")
        if not (root / MANIFEST).exists() and not (root / MANIFEST).is_symlink():
            raise BundleError(f"{root} is not a bundle ({MANIFEST} is missing)")
        raw = _read_regular(root, MANIFEST, MAX_MANIFEST_BYTES)
        signer = check_signature(root, raw, trusted_keys) if trusted_keys is not None else None
        bundle = cls(root, Manifest.from_dict(_parse_manifest(raw)), raw, signer)
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
            _check_size(self.path, name, st.st_size, info.bytes)
        for name, info in self.manifest.files.items():
            h = hashlib.sha256()
            with _open_regular(self.path, name, info.bytes) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _check_digest(self.path, name, h.hexdigest(), info.sha256)

    def read(self, name: str) -> bytes:
        """The bytes of a listed file, checked against the manifest's size and sha256 as they are read:
        what a backend parses is exactly what was verified."""
        info = self.manifest.files.get(name)
        if info is None:
            raise BundleError(f"{self.path}: {name} is not listed in the manifest's files table")
        self.file(name)  # no symlink on the way
        data = _read_regular(self.path, name, info.bytes)
        _check_size(self.path, name, len(data), info.bytes)
        _check_digest(self.path, name, hashlib.sha256(data).hexdigest(), info.sha256)
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


def check_signature(root: Path, manifest_bytes: bytes, trusted_keys: Iterable[KeyLike]) -> PublicKey:
    """The trusted key whose signature in ``root/manifest.sig`` covers ``manifest_bytes``; else a SignatureError
    saying what is wrong (unsigned, another key, changed after signing, malformed)."""
    if not (root / SIGNATURE).exists() and not (root / SIGNATURE).is_symlink():
        raise SignatureError(f"{root} is not signed ({SIGNATURE} is missing) and trusted keys were given: sign it with "
                             f"'edgeskip sign {root} --key KEY'")
    try:
        signature = _read_regular(root, SIGNATURE, MAX_SIGNATURE_BYTES)
    except BundleError as exc:
        raise SignatureError(str(exc)) from None
    return verify_manifest(manifest_bytes, signature, trusted_keys, where=f"{root}/{SIGNATURE}")


def sign(bundle: str | Path | Bundle, private_key: PrivateKey | str | os.PathLike[str]) -> Path:
    """Sign the bundle's manifest (which pins every file by size and sha256) with an ed25519 key: writes
    ``manifest.sig`` atomically, after checking every file, and returns its path."""
    root = bundle.path if isinstance(bundle, Bundle) else Path(bundle)
    with _locked(root):
        checked = Bundle.open(root)  # only a bundle whose files match its manifest is signed
        out = root / SIGNATURE
        atomic_write_bytes(out, sign_manifest(checked.manifest_bytes, private_key))
    return out


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
            files[name] = FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
        try:
            updated = dataclasses.replace(current, files=files, **changes)
        except TypeError as exc:
            raise BundleError(f"cannot update the manifest: {exc}") from None
        data = updated.to_bytes()
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
def _locked(root: Path) -> Iterator[None]:
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
