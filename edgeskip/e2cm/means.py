"""E²CM exits as data: class means, normalisers, thresholds, costs; the exit rule in numpy.

At exit ``i`` (after layer ``exits[i]``) an input's feature ``x`` is compared with every
class mean: ``d_k = ||x - c_k||_2 / mu_k``, ``p = softmax(-d)``; the input leaves when
``max p > T_i`` (strictly) and is labelled ``argmax p`` (the rule itself: :mod:`edgeskip.rule`).
A threshold of 1.0 can never fire (a softmax never exceeds 1), so such an exit is *disabled*:
its check is not computed and costs nothing. Torch-free: this is the code the on-device runtime runs.

On disk (a folder): ``e2cm.npz`` (means, normalisers, thresholds, exits; loaded with
``allow_pickle=False``) and ``e2cm.json`` (feature, costs, provenance, sha256 of the npz).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeskip.config import DECISION_TOKENS
from edgeskip.e2cm.costs import FEATURES, MacCosts
from edgeskip.errors import ConfigError, DataError
from edgeskip.fsutil import atomic_directory, loads_json
from edgeskip.rule import decision_input, exit_leaves, exit_top

__all__ = ["E2CM", "FORMAT", "SCHEMA_VERSION", "check_thresholds", "check_token", "exit_features"]

FORMAT = "edgeskip.e2cm"
SCHEMA_VERSION = 1
NPZ, JSON = "e2cm.npz", "e2cm.json"


def exit_features(tokens: npt.NDArray[Any], feature: str, token: str = "cls") -> npt.NDArray[np.float32]:
    """(B, N, D) layer output -> (B, F) feature: all tokens flattened, the CLS token (``token``: what
    :func:`~edgeskip.rule.decision_input` reads), or the token mean."""
    if tokens.ndim != 3:
        raise DataError(f"expected layer output of shape (B, tokens, width), got {tokens.shape}")
    if feature == "tokens":
        out = tokens.reshape(tokens.shape[0], -1)
    elif feature == "cls":
        out = decision_input(tokens, token)
    elif feature == "mean":
        out = tokens.mean(axis=1)
    else:
        raise ConfigError(f"unknown E²CM feature {feature!r}; choose one of {', '.join(FEATURES)}")
    return np.ascontiguousarray(out, dtype=np.float32)


def check_token(e2cm: E2CM, config: Any) -> None:
    """The ``cls`` feature of ``e2cm`` reads the token the model's agents read (``config.decision_token``)."""
    want = getattr(config, "decision_token", "cls")
    if e2cm.feature == "cls" and e2cm.token != want:
        raise ConfigError(f"these E²CM exits read the {e2cm.token!r} token; the model's agents read {want!r}: "
                          "calibrate again on this checkpoint")


def check_thresholds(thresholds: Sequence[float] | npt.NDArray[Any], n_exits: int) -> npt.NDArray[np.float64]:
    """Thresholds as a float64 array, each in [0, 1] (1 disables the exit)."""
    t = np.asarray(thresholds, dtype=np.float64) if not isinstance(thresholds, np.ndarray) else thresholds.astype(np.float64)
    if t.shape != (n_exits,):
        raise ConfigError(f"expected {n_exits} threshold(s), one per exit, got shape {t.shape}")
    bad = [i for i, v in enumerate(t) if not math.isfinite(v) or not 0.0 <= v <= 1.0]
    if bad:
        raise ConfigError(f"threshold(s) of exit(s) {bad} must be finite and in [0, 1] (1 disables the exit), "
                          f"got {[t[i] for i in bad]}")
    return t


@dataclasses.dataclass(frozen=True, eq=False)
class E2CM:
    """Calibrated exits of one model: what an exporter bundles and the runtime evaluates."""

    feature: str
    means: npt.NDArray[np.floating[Any]]  # (J, K, F) float32 or float16
    normalisers: npt.NDArray[np.float32]  # (J, K)
    thresholds: npt.NDArray[np.float64]  # (J,) in [0, 1]; 1 = disabled
    costs: MacCosts
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    token: str = "cls"  # what the cls feature reads (the model's ViTConfig.decision_token)

    def __post_init__(self) -> None:
        if self.feature not in FEATURES:
            raise ConfigError(f"unknown E²CM feature {self.feature!r}; choose one of {', '.join(FEATURES)}")
        if self.token not in DECISION_TOKENS:
            raise ConfigError(f"unknown E²CM token {self.token!r}; choose one of {', '.join(DECISION_TOKENS)}")
        j = len(self.costs.exits)
        if self.means.ndim != 3 or self.means.shape[0] != j:
            raise ConfigError(f"class means must have shape ({j}, classes, features), got {self.means.shape}")
        if self.means.dtype not in (np.float32, np.float16):
            raise ConfigError(f"class means must be float32 or float16, got {self.means.dtype}")
        if self.normalisers.shape != self.means.shape[:2]:
            raise ConfigError(f"normalisers must have shape {self.means.shape[:2]}, got {self.normalisers.shape}")
        if not np.isfinite(self.means).all() or not (np.isfinite(self.normalisers).all() and (self.normalisers > 0).all()):
            raise ConfigError("class means must be finite and normalisers finite and > 0")
        object.__setattr__(self, "thresholds", check_thresholds(self.thresholds, j))

    @property
    def exits(self) -> tuple[int, ...]:
        return self.costs.exits

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the stored class means and normalisers."""
        return int(self.means.nbytes + self.normalisers.nbytes)

    def with_thresholds(self, thresholds: Sequence[float] | npt.NDArray[Any]) -> E2CM:
        return dataclasses.replace(self, thresholds=check_thresholds(thresholds, len(self.exits)))

    def astype(self, dtype: str) -> E2CM:
        """The same exits with class means stored as ``float32`` or ``float16``."""
        if dtype not in ("float32", "float16"):
            raise ConfigError(f"class means are stored as float32 or float16, got {dtype!r}")
        return dataclasses.replace(self, means=self.means.astype(dtype), meta={**self.meta, "means_dtype": dtype})

    @functools.cached_property
    def _prepared(self) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
        """Per exit, converted once: float32 means (K, F), float64 ``|c_k|^2`` and ``1 / mu_k``."""
        out = []
        for i in range(len(self.exits)):
            c = self.means[i].astype(np.float64)
            out.append((np.ascontiguousarray(self.means[i], dtype=np.float32), (c * c).sum(-1),
                        1.0 / self.normalisers[i].astype(np.float64)))
        return out

    def _distances(self, index: int, tokens: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """(B, K) normalised distances ``sqrt(|x|^2 - 2 x.c_k + |c_k|^2) / mu_k``.

        The two products over the feature run in float32 (a float64 product reads twice the
        bytes of means: 2x slower for the all-tokens feature here); the (B, K) rest runs in
        float64, which keeps decisions at a threshold exact (float32 flipped one in the tests).
        """
        means, c_sq, inv_mu = self._prepared[index]
        x = exit_features(tokens, self.feature, self.token)
        d = (x @ means.T).astype(np.float64)
        d *= -2.0
        d += c_sq
        d += (x[:, None, :] @ x[:, :, None])[:, 0]  # |x|^2, the fastest form measured here
        np.maximum(d, 0.0, out=d)
        np.sqrt(d, out=d)
        d *= inv_mu
        return d

    def distances(self, index: int, tokens: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """(B, K) normalised distances ``||x - c_k|| / mu_k`` at exit ``index`` (float64)."""
        return self._distances(index, tokens)

    def probabilities(self, index: int, tokens: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """(B, K) exit probabilities at exit ``index`` for the (B, N, D) output of its layer."""
        z = -self._distances(index, tokens)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    def check(self, index: int, tokens: npt.NDArray[Any]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Exit rule at exit ``index``: (leaves, label, top probability) per input."""
        top, label = exit_top(self._distances(index, tokens))
        return exit_leaves(top, float(self.thresholds[index])), label, top

    # -- persistence ---------------------------------------------------------------------------

    def to_json(self, npz_sha256: str) -> dict[str, Any]:
        return {
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "feature": self.feature, "token": self.token,
            "exits": list(self.exits), "num_classes": self.num_classes, "means_dtype": str(self.means.dtype),
            "thresholds": self.thresholds.tolist(), "costs": self.costs.to_dict(), "meta": self.meta,
            "npz_sha256": npz_sha256,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path/e2cm.npz`` and ``path/e2cm.json`` atomically (replacing an older copy whole)."""
        buf = io.BytesIO()
        np.savez(buf, means=self.means, normalisers=self.normalisers.astype(np.float32),
                 thresholds=self.thresholds, exits=np.asarray(self.exits, dtype=np.int64))
        data = buf.getvalue()
        with atomic_directory(path, replace=True) as tmp:
            (tmp / NPZ).write_bytes(data)
            (tmp / JSON).write_text(json.dumps(self.to_json(hashlib.sha256(data).hexdigest()), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> E2CM:
        """Read a saved folder, verifying its schema and checksum."""
        path = Path(path)
        try:
            info, data = (path / JSON).read_bytes(), (path / NPZ).read_bytes()
        except FileNotFoundError as exc:
            raise DataError(f"{path}: not an E²CM folder ({Path(exc.filename).name} is missing)") from None
        return cls.from_bytes(info, data, str(path))

    @classmethod
    def from_bytes(cls, info_bytes: bytes, data: bytes, where: str = "E²CM") -> E2CM:
        """Parse the contents of ``e2cm.json`` and ``e2cm.npz`` (checked against each other); any defect is
        a :class:`DataError` naming ``where``."""
        try:
            info = loads_json(info_bytes)
        except ValueError as exc:
            raise DataError(f"{where}/{JSON}: invalid JSON ({exc})") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("schema_version") != SCHEMA_VERSION:
            raise DataError(f"{where}/{JSON}: not an {FORMAT} schema {SCHEMA_VERSION} file")
        if hashlib.sha256(data).hexdigest() != info.get("npz_sha256"):
            raise DataError(f"{where}/{NPZ}: checksum mismatch (changed or truncated after it was written)")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                means, normalisers, thresholds = npz["means"], npz["normalisers"], npz["thresholds"]
                exits = tuple(int(e) for e in npz["exits"])
            costs = MacCosts.from_dict(info.get("costs"))
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise DataError(f"{where}/{NPZ}: unreadable ({exc})") from None
        if exits != costs.exits or list(exits) != info.get("exits"):
            raise DataError(f"{where}: exits disagree between {NPZ} and {JSON}")
        try:
            return cls(feature=str(info.get("feature")), means=means, normalisers=normalisers, thresholds=thresholds,
                       costs=costs, meta=dict(info.get("meta") or {}), token=str(info.get("token", "cls")))
        except (ConfigError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: {exc}") from None
