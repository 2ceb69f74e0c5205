"""edgeskip.signing: real ed25519 keys and signatures over a bundle manifest (no mocks of cryptography)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeskip import signing
from edgeskip.bundle import SIGNATURE, Bundle, BundleError, Manifest, sign
from edgeskip.errors import BackendUnavailableError, EdgeskipError
from edgeskip.runtimes import Runtime
from edgeskip.signing import (
    PublicKey, SignatureError, generate_key, load_private_key, load_public_key, sign_manifest, verify_manifest,
)

pytest.importorskip("cryptography")

MANIFEST = b'{"format": "edgeskip.bundle", "schema_version": 1, "files": {}}\n'
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes, symlinks and FIFOs")


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, PublicKey]:
    """A fresh key pair: the private key's path and the public key."""
    return tmp_path / "keys" / "signer", generate_key(tmp_path / "keys" / "signer")


@pytest.fixture
def other(tmp_path: Path) -> tuple[Path, PublicKey]:
    return tmp_path / "keys" / "other", generate_key(tmp_path / "keys" / "other")


def _doc(signature: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(signature)
    return doc


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


# ----------------------------------------------------------------------------------------- keys

@posix_only
def test_generate_key_private_mode_0600_and_public_pem(key: tuple[Path, PublicKey]) -> None:
    private, pub = key
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    public_file = Path(f"{private}.pub")
    assert public_file.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert load_public_key(public_file) == pub
    assert load_private_key(private).public_key == pub
    assert sorted(p.name for p in private.parent.iterdir()) == ["signer", "signer.pub"]  # no temp files left


@posix_only
def test_private_key_is_never_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with umask 0, the key bytes only ever sit in a 0600 file (checked when it is linked into place)."""
    modes: list[int] = []
    real_link = os.link

    def spy(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        assert b"PRIVATE KEY" in Path(src).read_bytes()
        modes.append(stat.S_IMODE(os.stat(src).st_mode))
        real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", spy)
    old = os.umask(0)
    try:
        generate_key(tmp_path / "k", tmp_path / "pub" / "k.pem")
    finally:
        os.umask(old)
    assert modes == [0o600]
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "pub" / "k.pem").is_file()


def test_generate_key_refuses_to_overwrite(key: tuple[Path, PublicKey], tmp_path: Path) -> None:
    private, _ = key
    before = private.read_bytes()
    with pytest.raises(SignatureError, match="already exists.*never overwrites a private key"):
        generate_key(private, tmp_path / "elsewhere.pub")
    assert private.read_bytes() == before
    assert not (tmp_path / "elsewhere.pub").exists()
    Path(f"{private}.pub").rename(tmp_path / "moved.pub")
    (tmp_path / "taken.pub").write_text("someone's key")
    with pytest.raises(EdgeskipError, match="never overwrites a public key"):
        generate_key(tmp_path / "new", tmp_path / "taken.pub")
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "taken.pub").read_text() == "someone's key"


def test_public_key_text_and_id(key: tuple[Path, PublicKey]) -> None:
    _, pub = key
    assert len(pub.raw) == 32
    assert pub.key_id == hashlib.sha256(pub.raw).hexdigest()[:16]
    assert pub.to_text() == "ed25519:" + base64.b64encode(pub.raw).decode()
    assert pub.key_id in str(pub)
    with pytest.raises(SignatureError, match="32 raw bytes"):
        PublicKey(b"\0" * 31)


def test_every_public_key_form_gives_the_same_key(key: tuple[Path, PublicKey], tmp_path: Path) -> None:
    _, pub = key
    pem_path = Path(f"{key[0]}.pub")
    pem = pem_path.read_bytes()
    text_file = tmp_path / "trusted.txt"
    text_file.write_text(pub.to_text() + "\n")
    forms: list[Any] = [pub, pem_path, str(pem_path), pem, pem.decode(), pub.raw, bytearray(pub.raw),
                        pub.to_text(), pub.to_text().encode(), f"  {pub.to_text()}\n", text_file]
    assert all(load_public_key(f) == pub for f in forms)


def _ec_public_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("garbage, message", [
    (b"", "0 bytes"),
    (b"\1" * 31, "31 bytes"),
    (b"\1" * 33, "33 bytes"),
    ("ed25519:!!not base64!!", "not valid base64"),
    ("ed25519:" + base64.b64encode(b"\1" * 31).decode(), "decodes to 31 bytes"),
    ("no/such/key.pub", "neither ed25519:<base64>, PEM text nor an existing file"),
    ("", "neither"),
    ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a valid PEM public key"),
    (42, "a int"),
    (None, "a NoneType"),
    ("ec", "not an ed25519 public key"),
    ("private", "this is a private key"),
])
def test_garbage_public_keys_refused(garbage: Any, message: str, key: tuple[Path, PublicKey]) -> None:
    if garbage == "ec":
        garbage = _ec_public_pem()
    elif garbage == "private":
        garbage = key[0]
    with pytest.raises(SignatureError, match=message):
        load_public_key(garbage)


def test_public_key_file_with_garbage_refused(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text("hello")
    with pytest.raises(SignatureError, match="holds neither a PEM public key"):
        load_public_key(tmp_path / "k.pub")
    with pytest.raises(SignatureError, match="not a regular file"):
        load_public_key(tmp_path)


def test_bad_private_keys_refused(key: tuple[Path, PublicKey], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    with pytest.raises(SignatureError, match="not a PEM private key"):
        load_private_key(Path(f"{key[0]}.pub"))
    with pytest.raises(SignatureError, match="no such private key file"):
        load_private_key(tmp_path / "absent")
    encrypted = tmp_path / "encrypted"
    encrypted.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(SignatureError, match="encrypted"):
        load_private_key(encrypted)


# ------------------------------------------------------------------------------------ signatures

def test_sign_and_verify(key: tuple[Path, PublicKey], other: tuple[Path, PublicKey]) -> None:
    private, pub = key
    sig = sign_manifest(MANIFEST, private)
    doc = _doc(sig)
    assert doc["format"] == "edgeskip.signature" and doc["schema_version"] == 1 and doc["algorithm"] == "ed25519"
    assert doc["key_id"] == pub.key_id and doc["public_key"] == pub.to_text()
    assert doc["manifest_sha256"] == hashlib.sha256(MANIFEST).hexdigest()
    assert pub.verify(base64.b64decode(doc["signature"]), MANIFEST)
    assert verify_manifest(MANIFEST, sig, [other[1], pub]) == pub
    assert verify_manifest(MANIFEST, sig, pub.to_text()) == pub  # a single key is accepted too
    assert sign_manifest(MANIFEST, load_private_key(private)) == sig  # ed25519 is deterministic


def test_tampered_manifest_refused(key: tuple[Path, PublicKey]) -> None:
    sig = sign_manifest(MANIFEST, key[0])
    tampered = bytearray(MANIFEST)
    tampered[10] ^= 1
    with pytest.raises(SignatureError, match="manifest.json changed after it was signed"):
        verify_manifest(bytes(tampered), sig, [key[1]])


def test_tampered_manifest_refused_even_with_matching_sha(key: tuple[Path, PublicKey]) -> None:
    """Rewriting the (unauthenticated) manifest_sha256 does not help: the ed25519 check still fails."""
    tampered = MANIFEST.replace(b'"files": {}', b'"files": []')
    doc = _doc(sign_manifest(MANIFEST, key[0]))
    doc["manifest_sha256"] = hashlib.sha256(tampered).hexdigest()
    with pytest.raises(SignatureError, match="signature does not match manifest.json"):
        verify_manifest(tampered, _dump(doc), [key[1]])


def test_forged_signature_refused(key: tuple[Path, PublicKey]) -> None:
    doc = _doc(sign_manifest(MANIFEST, key[0]))
    raw = bytearray(base64.b64decode(doc["signature"]))
    raw[0] ^= 1
    doc["signature"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SignatureError, match="signature does not match.*edgeskip sign BUNDLE --key K"):
        verify_manifest(MANIFEST, _dump(doc), [key[1]])


def test_other_key_refused_unless_trusted(key: tuple[Path, PublicKey], other: tuple[Path, PublicKey]) -> None:
    sig = sign_manifest(MANIFEST, other[0])
    with pytest.raises(SignatureError, match=f"signed by key {other[1].key_id}, which is not among the trusted "
                                             f"keys {key[1].key_id}"):
        verify_manifest(MANIFEST, sig, [key[1]])
    assert verify_manifest(MANIFEST, sig, [key[1], other[1]]) == other[1]


def test_spoofed_key_id_does_not_buy_trust(key: tuple[Path, PublicKey], other: tuple[Path, PublicKey]) -> None:
    """Trust is decided on the raw key bytes: claiming a trusted key's id is refused."""
    doc = _doc(sign_manifest(MANIFEST, other[0]))
    doc["key_id"] = key[1].key_id
    with pytest.raises(SignatureError, match="'key_id'"):
        verify_manifest(MANIFEST, _dump(doc), [key[1]])
    doc = _doc(sign_manifest(MANIFEST, other[0]))
    doc["public_key"], doc["key_id"] = key[1].to_text(), key[1].key_id  # claims the trusted key, other's signature
    with pytest.raises(SignatureError, match="signature does not match"):
        verify_manifest(MANIFEST, _dump(doc), [key[1]])


def _mutations() -> list[tuple[str, Any, str]]:
    """(name, how to change the signature file, what the error must say)."""
    return [
        ("bad json", b'{"format": ', "not valid JSON"),
        ("not utf-8", b"\xff\xfe", "not valid JSON"),
        ("deep", b"[" * 60_000, "not valid JSON"),
        ("array", b"[]", "not an object"),
        ("duplicate", "duplicate", "appears twice"),
        ("algorithm", {"algorithm": "rsa"}, "'algorithm'"),
        ("format", {"format": "other"}, "'format'"),
        ("version", {"schema_version": 2}, "'schema_version'"),
        ("bool version", {"schema_version": True}, "'schema_version' must be a int"),
        ("string version", {"schema_version": "1"}, "'schema_version' must be a int"),
        ("unknown field", {"comment": "hi"}, "unknown field.*comment"),
        ("missing field", {"signature": None}, "missing field.*signature"),
        ("wrong type", {"signature": 7}, "'signature' must be a str"),
        ("truncated", "truncated", "'signature' decodes to 32 bytes"),
        ("non-base64", {"signature": "not*base64*at*all"}, "'signature' is not valid base64"),
        ("sha", {"manifest_sha256": "ABC"}, "'manifest_sha256'"),
        ("public key form", {"public_key": "AAAA"}, "'public_key' must be ed25519:<base64>"),
        ("public key bytes", {"public_key": "ed25519:AAAA"}, "'public_key'.*decodes to 3 bytes"),
        ("oversized", b" " * (65 << 10), "more than the 65536"),
    ]


@pytest.mark.parametrize("name, change, message", _mutations(), ids=[m[0] for m in _mutations()])
def test_malformed_signature_file_refused(name: str, change: Any, message: str,
                                          key: tuple[Path, PublicKey]) -> None:
    sig = sign_manifest(MANIFEST, key[0])
    doc = _doc(sig)
    if isinstance(change, bytes):
        bad = change
    elif change == "duplicate":
        bad = sig.replace(b'"format"', b'"algorithm": "ed25519", "format"', 1)
    elif change == "truncated":
        doc["signature"] = base64.b64encode(base64.b64decode(doc["signature"])[:32]).decode()
        bad = _dump(doc)
    else:
        doc.update(change)
        bad = _dump({k: v for k, v in doc.items() if v is not None})
    with pytest.raises(SignatureError, match=message) as info:
        verify_manifest(MANIFEST, bad, [key[1]])
    assert "edgeskip sign BUNDLE --key K" in str(info.value)


def test_no_trusted_keys_refused(key: tuple[Path, PublicKey]) -> None:
    with pytest.raises(SignatureError, match="no trusted keys"):
        verify_manifest(MANIFEST, sign_manifest(MANIFEST, key[0]), [])


# -------------------------------------------------------------------------------------- bundles

@pytest.fixture
def real_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "real"))


def test_a_signed_bundle_opens_and_runs_with_its_key(real_bundle: Path, key: tuple[Path, PublicKey],
                                                     other: tuple[Path, PublicKey]) -> None:
    out = sign(real_bundle, load_private_key(key[0]))
    assert out == real_bundle / SIGNATURE and out.is_file()
    opened = Bundle.open(real_bundle, trusted_keys=[Path(f"{key[0]}.pub")])
    assert opened.signer == key[1]
    rt = Runtime(real_bundle, trusted_keys=[key[1].to_text(), other[1]])
    assert len(rt(np.zeros((2, 32, 32, 3), np.uint8))) == 2
    Runtime(opened, trusted_keys=[key[1]])  # an opened Bundle is checked against its own parsed bytes
    assert Bundle.open(real_bundle).signer is None  # without keys nothing is claimed


def test_a_tampered_manifest_is_refused_before_it_is_parsed(real_bundle: Path, key: tuple[Path, PublicKey],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    sign(real_bundle, key[0])
    raw = json.loads((real_bundle / "manifest.json").read_text())
    raw["agents"]["thresholds"] = [0.0] * 4  # a plausible edit: run every layer
    (real_bundle / "manifest.json").write_text(json.dumps(raw))
    parsed: list[Any] = []
    monkeypatch.setattr(Manifest, "from_dict", classmethod(lambda cls, data, where="": parsed.append(data)))
    with pytest.raises(SignatureError, match="changed after it was signed"):
        Runtime(real_bundle, trusted_keys=[key[1]])
    assert not parsed  # refused on the signature, before the manifest was parsed


def test_a_signature_by_another_key_or_none_is_refused(real_bundle: Path, key: tuple[Path, PublicKey],
                                                       other: tuple[Path, PublicKey]) -> None:
    with pytest.raises(SignatureError, match="is not signed.*edgeskip sign"):
        Runtime(real_bundle, trusted_keys=[key[1]])
    sign(real_bundle, other[0])
    with pytest.raises(SignatureError, match=f"signed by key {other[1].key_id}, which is not among the trusted"):
        Runtime(real_bundle, trusted_keys=[key[1]])
    with pytest.raises(SignatureError, match="no trusted keys"):
        Bundle.open(real_bundle, trusted_keys=[])


def test_select_removes_the_stale_signature_and_a_new_one_holds(real_bundle: Path, key: tuple[Path, PublicKey],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A default configuration changes the manifest: its old signature goes (with a warning), and signing again
    makes the bundle trusted again."""
    from edgeskip.front import ParetoPoint, Selection
    from edgeskip.search.select import record_selection

    sign(real_bundle, key[0])
    point = ParetoPoint(genes=(3, 3, 3, 3), thresholds=(0.5,) * 4, accuracy=0.1, executed_layers=2.0, latency_ms=1.0,
                        energy_mj=0.5)
    with caplog.at_level("WARNING"):
        record_selection(real_bundle, Selection(point, 2.0, "ms", "cpu", 1, 1, "estimate", 10))
    assert "sign it again" in caplog.text and not (real_bundle / SIGNATURE).exists()
    with pytest.raises(SignatureError, match="is not signed"):
        Runtime(real_bundle, trusted_keys=[key[1]])
    sign(real_bundle, key[0])
    rt = Runtime(real_bundle, trusted_keys=[key[1]])
    assert rt.policy.name == "default" and rt.plan.layer_thresholds == (0.5,) * 4


def test_only_a_bundle_whose_files_match_is_signed(real_bundle: Path, key: tuple[Path, PublicKey]) -> None:
    layer = real_bundle / "onnx" / "layer_01.onnx"
    layer.write_bytes(layer.read_bytes()[:-1] + b"x")
    with pytest.raises(BundleError, match="sha256"):
        sign(real_bundle, key[0])
    assert not (real_bundle / SIGNATURE).exists()


@posix_only
def test_symlinked_or_special_signatures_are_refused(real_bundle: Path, key: tuple[Path, PublicKey],
                                                     tmp_path: Path) -> None:
    """A link to a perfectly valid signature is still refused: a bundle holds plain files only."""
    sign(real_bundle, key[0])
    (real_bundle / SIGNATURE).rename(tmp_path / "valid.sig")
    (real_bundle / SIGNATURE).symlink_to(tmp_path / "valid.sig")
    with pytest.raises(SignatureError, match="symlink"):
        Bundle.open(real_bundle, trusted_keys=[key[1]])
    (real_bundle / SIGNATURE).unlink()
    os.mkfifo(real_bundle / SIGNATURE)  # would block a plain open()
    with pytest.raises(SignatureError, match="not a regular file"):
        Bundle.open(real_bundle, trusted_keys=[key[1]])
    (real_bundle / SIGNATURE).unlink()
    with open(real_bundle / SIGNATURE, "wb") as f:
        f.truncate(1 << 30)  # sparse: refused on its size, never read
    with pytest.raises(SignatureError, match="1073741824 bytes, more than the 65536"):
        Bundle.open(real_bundle, trusted_keys=[key[1]])


def test_cli_keygen_sign_verify(real_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeskip.cli import main

    assert main(["keygen", "--out", str(tmp_path / "k" / "signer")]) == 0
    assert (tmp_path / "k" / "signer").stat().st_mode & 0o777 == 0o600
    assert main(["keygen", "--out", str(tmp_path / "k" / "signer")]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err
    assert main(["verify", str(real_bundle), "--trusted-key", str(tmp_path / "k" / "signer.pub")]) == 2
    assert "is not signed" in capsys.readouterr().err
    assert main(["sign", str(real_bundle), "--key", str(tmp_path / "k" / "signer")]) == 0
    assert main(["verify", str(real_bundle), "--trusted-key", str(tmp_path / "k" / "signer.pub")]) == 0
    assert "signed by trusted key" in capsys.readouterr().out
    assert main(["sign", str(real_bundle), "--key", str(tmp_path / "nothing")]) == 2
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------------------ no cryptography

def test_without_cryptography(monkeypatch: pytest.MonkeyPatch, key: tuple[Path, PublicKey], real_bundle: Path,
                              tmp_path: Path) -> None:
    sig = sign_manifest(MANIFEST, key[0])
    pem = Path(f"{key[0]}.pub").read_bytes()
    signed = sign(real_bundle, key[0]).read_bytes()
    for name in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)
    calls = [
        lambda: generate_key(tmp_path / "new"),
        lambda: load_private_key(key[0]),
        lambda: sign_manifest(MANIFEST, key[0]),
        lambda: sign(real_bundle, key[0]),
        lambda: Runtime(real_bundle, trusted_keys=[key[1]]),
        lambda: verify_manifest(MANIFEST, sig, [key[1]]),
        lambda: load_public_key(pem),
        lambda: key[1].to_pem(),
    ]
    for call in calls:
        with pytest.raises(BackendUnavailableError, match=r"pip install 'edgeskip\[sign\]'.*pip install cryptography"):
            call()
    assert not (tmp_path / "new").exists() and (real_bundle / SIGNATURE).read_bytes() == signed
    assert load_public_key(key[1].to_text()) == key[1]  # the compact and raw forms need no backend


def test_module_imports_without_cryptography() -> None:
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'cryptography' or name.startswith('cryptography.'):\n"
        "            raise ImportError('hidden')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import edgeskip.signing as s\n"
        "assert 'cryptography' not in sys.modules\n"
        "try:\n"
        "    s.verify_manifest(b'{}', b'{}', [bytes(32)])\n"
        "except s.BackendUnavailableError as exc:\n"
        "    print('unavailable:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "unavailable:" in out.stdout and "pip install 'edgeskip[sign]'" in out.stdout


def test_public_api_is_exported() -> None:
    for name in signing.__all__:
        assert hasattr(signing, name), name
