"""Ed25519 signatures over a bundle's ``manifest.json`` (torch-free; needs ``cryptography``).

The manifest pins every other file of a bundle by size and sha256, so a valid signature over its
exact bytes vouches for the whole bundle. The signature lives beside it as ``manifest.sig``
(written by :func:`edgeskip.bundle.sign`, checked by ``Bundle.open(..., trusted_keys=...)``)::

    {"format": "edgeskip.signature", "schema_version": 1, "algorithm": "ed25519",
     "key_id": "<16 hex>", "public_key": "ed25519:<base64>", "manifest_sha256": "<64 hex>",
     "signature": "<base64 of the 64-byte ed25519 signature over manifest.json's bytes>"}

Trust comes only from the caller's ``trusted_keys``: the key named in the signature file is
compared with them byte for byte (its self-declared ``key_id`` is never trusted), then the
signature is checked with that key. ``manifest_sha256`` only makes the error clearer when the
manifest was edited after signing. Keys are written as PEM (private: PKCS8, unencrypted, mode
0600; public: SubjectPublicKeyInfo) and a public key can also be given in the compact text form
``ed25519:<base64 of the 32 raw bytes>`` (:meth:`PublicKey.to_text`).

The ``cryptography`` package is imported only by the functions that need it; without it they raise
:class:`~edgeskip.errors.BackendUnavailableError`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Union

from edgeskip.errors import BackendUnavailableError
from edgeskip.manifest import MANIFEST, BundleError
from edgeskip.fsutil import atomic_write_bytes, remove_stale

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "FORMAT", "SCHEMA_VERSION", "ALGORITHM", "INSTALL", "SignatureError", "PublicKey", "PrivateKey",
    "KeyLike", "generate_key", "load_private_key", "load_public_key", "sign_manifest", "verify_manifest",
]

FORMAT = "edgeskip.signature"
SCHEMA_VERSION = 1
ALGORITHM = "ed25519"
INSTALL = "pip install 'edgeskip[sign]' (or pip install cryptography)"
MAX_KEY_BYTES = 64 << 10
MAX_SIGNATURE_BYTES = 64 << 10
RAW_KEY_BYTES, RAW_SIGNATURE_BYTES = 32, 64
TEXT_PREFIX = "ed25519:"
SIGN_HINT = "re-sign with `edgeskip sign BUNDLE --key K`"
_FIELDS = {"format": str, "schema_version": int, "algorithm": str, "key_id": str, "public_key": str,
           "manifest_sha256": str, "signature": str}
_HEX64 = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger(__name__)


class SignatureError(BundleError):
    """A signature is missing, malformed, made by an untrusted key, or does not match the manifest;
    or a key file is missing, malformed or not an ed25519 key."""


def _crypto() -> SimpleNamespace:
    """The parts of ``cryptography`` this module uses, imported on first need."""
    try:
        from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise BackendUnavailableError(f"signing and verifying bundles needs the cryptography package: "
                                      f"{INSTALL}") from None
    return SimpleNamespace(ed25519=ed25519, serialization=serialization, InvalidSignature=InvalidSignature,
                           UnsupportedAlgorithm=UnsupportedAlgorithm)


@dataclasses.dataclass(frozen=True)
class PublicKey:
    """An ed25519 public key: its 32 raw bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != RAW_KEY_BYTES:
            raise SignatureError(f"an ed25519 public key has {RAW_KEY_BYTES} raw bytes, not {_describe(self.raw)}")

    @property
    def key_id(self) -> str:
        """The first 16 hex digits of the sha256 of the raw key: a short name for logs and messages."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def to_text(self) -> str:
        """The compact form ``ed25519:<base64 of the raw bytes>``, which :func:`load_public_key` reads."""
        return TEXT_PREFIX + base64.b64encode(self.raw).decode("ascii")

    def to_pem(self) -> bytes:
        """The key as a PEM SubjectPublicKeyInfo block."""
        c = _crypto()
        key = c.ed25519.Ed25519PublicKey.from_public_bytes(self.raw)
        pem: bytes = key.public_bytes(c.serialization.Encoding.PEM, c.serialization.PublicFormat.SubjectPublicKeyInfo)
        return pem

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's ed25519 signature over ``data``."""
        c = _crypto()
        try:
            c.ed25519.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (c.InvalidSignature, ValueError):
            return False
        return True

    def __str__(self) -> str:
        return f"ed25519 key {self.key_id}"


@dataclasses.dataclass(frozen=True)
class PrivateKey:
    """An ed25519 private key (from :func:`load_private_key`) and its public half."""

    key: Ed25519PrivateKey = dataclasses.field(repr=False)
    public_key: PublicKey

    def sign(self, data: bytes) -> bytes:
        """The 64-byte ed25519 signature over ``data``."""
        return self.key.sign(data)


KeyLike = Union[PublicKey, bytes, bytearray, str, os.PathLike[str]]
"""What :func:`load_public_key` accepts."""


def _describe(value: Any) -> str:
    """A short, safe description of a value for an error message (never the whole of a long one)."""
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else f"a {len(value)}-character string"
    return f"a {type(value).__name__}"


def _read_file(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the key file ``path`` (a symlink to one is followed), refusing a FIFO, device or directory
    (never blocking on one) and a file over ``limit`` bytes before reading any of it."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SignatureError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SignatureError(f"{path}: the {what} is not a regular file")
        if st.st_size > limit:
            raise SignatureError(f"{path}: the {what} has {st.st_size} bytes, more than the {limit} it may have")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise SignatureError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if len(data) > limit:  # grew after the size check
        raise SignatureError(f"{path}: the {what} has more than the {limit} bytes it may have")
    return data


def _exists(path: Path, what: str) -> SignatureError:
    return SignatureError(f"{path} already exists; edgeskip never overwrites a {what} key: "
                          f"remove it or choose another path")


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` with mode 0600 from its first byte, atomically, never replacing
    an existing file (a temp file made 0600 by mkstemp, then hard-linked to ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o600)  # mkstemp already makes 0600; say so rather than rely on it
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if path exists: no window in which another file is overwritten
        except FileExistsError:
            raise _exists(path, "private") from None
        except OSError:  # a filesystem without hard links
            if os.path.lexists(path):
                raise _exists(path, "private") from None
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def generate_key(private_path: str | os.PathLike[str],
                 public_path: str | os.PathLike[str] | None = None) -> PublicKey:
    """Make a new ed25519 key pair: the private key as unencrypted PKCS8 PEM (mode 0600) at ``private_path``,
    the public key as PEM at ``public_path`` (default: ``private_path`` + ``.pub``). Refuses to overwrite
    either file. Returns the public key."""
    private, public = Path(private_path), Path(public_path if public_path is not None else f"{private_path}.pub")
    c = _crypto()
    for path, what in ((private, "private"), (public, "public")):
        if os.path.lexists(path):
            raise _exists(path, what)
    key = c.ed25519.Ed25519PrivateKey.generate()
    s = c.serialization
    _write_private(private, key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    pub = PublicKey(key.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw))
    try:
        atomic_write_bytes(public, pub.to_pem())
    except BaseException:
        private.unlink(missing_ok=True)  # never used: leave no half pair behind
        raise
    log.info("generated %s: private key %s, public key %s", pub, private, public)
    return pub


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Read an unencrypted PEM (PKCS8) ed25519 private key, as :func:`generate_key` writes it."""
    path = Path(path)
    c = _crypto()
    data = _read_file(path, MAX_KEY_BYTES, "private key file")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("%s can be read by other users; run `chmod 600 %s`", path, path)
    try:
        key = c.serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted
        raise SignatureError(f"{path}: the private key is encrypted; edgeskip reads unencrypted PKCS8 PEM keys "
                             f"(make one with `edgeskip keygen`)") from None
    except (ValueError, c.UnsupportedAlgorithm):
        raise SignatureError(f"{path}: not a PEM private key (make one with `edgeskip keygen`)") from None
    if not isinstance(key, c.ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{path}: a {type(key).__name__}, not an ed25519 private key")
    s = c.serialization
    return PrivateKey(key, PublicKey(key.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)))


def _from_text(text: str, given: str) -> PublicKey:
    """The key in the compact form ``ed25519:<base64>``."""
    try:
        raw = base64.b64decode(text[len(TEXT_PREFIX):].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{given}: not valid base64 after {TEXT_PREFIX!r}") from None
    if len(raw) != RAW_KEY_BYTES:
        raise SignatureError(f"{given}: decodes to {len(raw)} bytes; an ed25519 public key has {RAW_KEY_BYTES}")
    return PublicKey(raw)


def _from_pem(pem: bytes, given: str) -> PublicKey:
    """The key in a PEM SubjectPublicKeyInfo block."""
    if b"PRIVATE KEY-----" in pem:
        raise SignatureError(f"{given}: this is a private key; trust its public key (the .pub file) instead")
    c = _crypto()
    try:
        key = c.serialization.load_pem_public_key(pem)
    except (ValueError, c.UnsupportedAlgorithm):
        raise SignatureError(f"{given}: not a valid PEM public key") from None
    if not isinstance(key, c.ed25519.Ed25519PublicKey):
        raise SignatureError(f"{given}: a {type(key).__name__}, not an ed25519 public key")
    s = c.serialization
    return PublicKey(key.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw))


def _from_encoded(data: bytes, given: str) -> PublicKey | None:
    """The key in PEM or compact text form, or None when ``data`` is neither."""
    stripped = data.strip()
    if stripped.startswith(TEXT_PREFIX.encode()):
        try:
            return _from_text(stripped.decode("ascii"), given)
        except UnicodeDecodeError:
            raise SignatureError(f"{given}: not valid base64 after {TEXT_PREFIX!r}") from None
    if stripped.startswith(b"-----BEGIN "):
        return _from_pem(stripped, given)
    return None


_FORMS = f"a PEM public key file, PEM text, {RAW_KEY_BYTES} raw bytes or {TEXT_PREFIX}<base64>"


def _from_file(path: str | os.PathLike[str]) -> PublicKey:
    """The key in a file holding it as PEM or compact text."""
    if isinstance(path, str) and not os.path.exists(path):
        raise SignatureError(f"not an ed25519 public key: {_describe(path)} is neither {TEXT_PREFIX}<base64>, "
                             f"PEM text nor an existing file")
    found = _from_encoded(_read_file(Path(path), MAX_KEY_BYTES, "public key file"), str(path))
    if found is None:
        raise SignatureError(f"{path}: holds neither a PEM public key nor {TEXT_PREFIX}<base64>")
    return found


def load_public_key(key: KeyLike) -> PublicKey:
    """An ed25519 public key from: a :class:`PublicKey`, the path of a file holding it (PEM or compact
    text), PEM bytes or text, its 32 raw bytes, or the compact text ``ed25519:<base64>``."""
    found: PublicKey | None = None
    if isinstance(key, PublicKey):
        return key
    if isinstance(key, (bytes, bytearray)):
        data = bytes(key)
        found = PublicKey(data) if len(data) == RAW_KEY_BYTES else _from_encoded(data, "public key")
    elif isinstance(key, str) and key.lstrip().startswith((TEXT_PREFIX, "-----BEGIN ")):
        found = _from_encoded(key.encode("utf-8", "replace"), "public key")
    elif isinstance(key, (str, os.PathLike)):
        return _from_file(key)
    if found is None:
        raise SignatureError(f"not an ed25519 public key: {_describe(key)} (expected {_FORMS})")
    return found


def _private(private_key: PrivateKey | str | os.PathLike[str]) -> PrivateKey:
    return private_key if isinstance(private_key, PrivateKey) else load_private_key(private_key)


def sign_manifest(manifest_bytes: bytes, private_key: PrivateKey | str | os.PathLike[str]) -> bytes:
    """The contents of a signature file for ``manifest_bytes`` signed with ``private_key`` (a
    :class:`PrivateKey` or the path of its PEM file)."""
    key = _private(private_key)
    doc = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "algorithm": ALGORITHM,
        "key_id": key.public_key.key_id, "public_key": key.public_key.to_text(),
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "signature": base64.b64encode(key.sign(bytes(manifest_bytes))).decode("ascii"),
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _parse(signature_bytes: bytes, where: str) -> dict[str, Any]:
    """The schema-checked fields of a signature file."""
    if len(signature_bytes) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{where}: {len(signature_bytes)} bytes, more than the {MAX_SIGNATURE_BYTES} "
                             f"a signature file may have; {SIGN_HINT}")
    try:
        doc = json.loads(bytes(signature_bytes).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise SignatureError(f"{where}: not valid JSON (nested too deeply); {SIGN_HINT}") from None
    except ValueError as exc:  # bad syntax, not UTF-8, a duplicate key
        raise SignatureError(f"{where}: not valid JSON ({exc}); {SIGN_HINT}") from None
    if not isinstance(doc, dict):
        raise SignatureError(f"{where}: a JSON {type(doc).__name__}, not an object; {SIGN_HINT}")
    unknown, missing = sorted(set(doc) - set(_FIELDS)), sorted(set(_FIELDS) - set(doc))
    if unknown or missing:
        what = "; ".join(p for p in (unknown and f"unknown field(s) {', '.join(unknown)}",
                                     missing and f"missing field(s) {', '.join(missing)}") if p)
        raise SignatureError(f"{where}: {what}; {SIGN_HINT}")
    for name, kind in _FIELDS.items():
        if not isinstance(doc[name], kind) or isinstance(doc[name], bool):
            raise SignatureError(f"{where}: field {name!r} must be a {kind.__name__}, not {_describe(doc[name])}; "
                                 f"{SIGN_HINT}")
    for name, expected in (("format", FORMAT), ("schema_version", SCHEMA_VERSION), ("algorithm", ALGORITHM)):
        if doc[name] != expected:
            raise SignatureError(f"{where}: field {name!r} is {_describe(doc[name])}; edgeskip reads {expected!r} "
                                 f"only; {SIGN_HINT}")
    if not _HEX64.fullmatch(doc["manifest_sha256"]):
        raise SignatureError(f"{where}: field 'manifest_sha256' is not 64 lowercase hex digits; {SIGN_HINT}")
    return doc


def _signer(doc: dict[str, Any], where: str) -> tuple[PublicKey, bytes]:
    """The public key a parsed signature file names and its raw signature."""
    if not doc["public_key"].startswith(TEXT_PREFIX):
        raise SignatureError(f"{where}: field 'public_key' must be {TEXT_PREFIX}<base64>; {SIGN_HINT}")
    try:
        key = _from_text(doc["public_key"], f"{where}: field 'public_key'")
    except SignatureError as exc:
        raise SignatureError(f"{exc}; {SIGN_HINT}") from None
    if doc["key_id"] != key.key_id:
        raise SignatureError(f"{where}: field 'key_id' {_describe(doc['key_id'])} is not the id of its public key "
                             f"({key.key_id}); {SIGN_HINT}")
    try:
        sig = base64.b64decode(doc["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{where}: field 'signature' is not valid base64; {SIGN_HINT}") from None
    if len(sig) != RAW_SIGNATURE_BYTES:
        raise SignatureError(f"{where}: field 'signature' decodes to {len(sig)} bytes; an ed25519 signature has "
                             f"{RAW_SIGNATURE_BYTES}; {SIGN_HINT}")
    return key, sig


def _trusted(trusted_keys: Iterable[KeyLike]) -> list[PublicKey]:
    if isinstance(trusted_keys, (str, bytes, bytearray, PublicKey, os.PathLike)):
        trusted_keys = [trusted_keys]  # one key given where a list was meant
    keys = [load_public_key(k) for k in trusted_keys]
    if not keys:
        raise SignatureError("no trusted keys given: pass the public key(s) whose signatures you accept")
    return keys


def verify_manifest(manifest_bytes: bytes, signature_bytes: bytes, trusted_keys: Iterable[KeyLike], *,
                    where: str = "manifest.sig") -> PublicKey:
    """Check that ``signature_bytes`` (a signature file's contents) is a valid ed25519 signature over the
    exact ``manifest_bytes`` by one of ``trusted_keys`` (anything :func:`load_public_key` accepts); returns
    that key. Every failure is a :class:`SignatureError` whose message begins with ``where``."""
    keys = _trusted(trusted_keys)
    c = _crypto()  # no backend: refuse before judging any signature
    doc = _parse(signature_bytes, where)
    key, sig = _signer(doc, where)
    if key.raw not in {k.raw for k in keys}:
        ids = ", ".join(k.key_id for k in keys)
        raise SignatureError(f"{where}: the bundle was signed by key {key.key_id}, which is not among the trusted "
                             f"keys {ids}; trust {key.to_text()} if you expect that signer, or {SIGN_HINT} "
                             f"using a trusted key")
    if hashlib.sha256(manifest_bytes).hexdigest() != doc["manifest_sha256"]:
        raise SignatureError(f"{where}: {MANIFEST} changed after it was signed (its sha256 differs); if the change "
                             f"is intended, {SIGN_HINT}")
    try:
        c.ed25519.Ed25519PublicKey.from_public_bytes(key.raw).verify(sig, bytes(manifest_bytes))
    except (c.InvalidSignature, ValueError):
        raise SignatureError(f"{where}: the signature does not match {MANIFEST} (the signature file was altered); "
                             f"{SIGN_HINT}") from None
    log.info("%s: %s is signed by trusted %s", where, MANIFEST, key)
    return key
