"""Trained models shipped inside the package: ``edgeskip export --model vit9 --pretrained cifar10``.

Each entry is a folder ``<model>-<dataset>/`` holding

    checkpoint/      an edgeskip checkpoint (config.json + model.safetensors, fp16 weights)
    e2cm/            the E²CM calibration (``edgeskip calibrate`` output; ``e2cm/cls`` goes into bundles)
    report.json      the evaluation report: every figure from the recorded run (scripts/build_zoo.py)
    REPORT.md        the same for people, with the commands that reproduce it

Torch-free: this module only finds files; exporting and evaluating load them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from edgeskip.errors import DataError, UnknownNameError

__all__ = ["ZOO_DIR", "ZooEntry", "available", "pretrained"]

ZOO_DIR = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One trained model of the zoo."""

    model: str
    dataset: str
    path: Path

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def e2cm(self) -> Path:
        """The calibration a bundle takes (``edgeskip export --e2cm``)."""
        return self.path / "e2cm" / "cls"

    def report(self) -> dict[str, Any]:
        """The evaluation report of the recorded run (``report.json``)."""
        path = self.path / "report.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"the zoo's report {path} is unreadable: {exc}") from None
        if not isinstance(data, dict):
            raise DataError(f"the zoo's report {path} must hold a JSON object")
        return data


def available() -> list[ZooEntry]:
    """Every complete entry shipped with this installation (checkpoint config and weights, and a report);
    folders being written (``.name.tmp``) are not entries."""
    out = []
    for d in sorted(ZOO_DIR.iterdir()):
        complete = all((d / f).is_file() for f in ("checkpoint/config.json", "checkpoint/model.safetensors",
                                                   "report.json"))
        if d.is_dir() and not d.name.startswith((".", "_")) and "-" in d.name and complete:
            model, _, dataset = d.name.rpartition("-")
            out.append(ZooEntry(model, dataset, d))
    return out


def pretrained(model: str, dataset: str) -> ZooEntry:
    """The zoo's ``model`` trained on ``dataset``; a clear error naming what exists otherwise."""
    for entry in available():
        if (entry.model, entry.dataset) == (model, dataset):
            return entry
    have = ", ".join(f"{e.model} --pretrained {e.dataset}" for e in available()) or "none"
    raise UnknownNameError(f"no pretrained {model} on {dataset!r} in the model zoo; shipped: {have}")
