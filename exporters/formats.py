"""What a format exporter is given and what it returns: one signature for every format a bundle can hold.

``edgeskip export`` always writes the per-stage ONNX files, the monolithic model and the gate graph;
every further format is a :class:`FormatExporter` registered by name in :data:`edgeskip.exporters.EXPORTERS`
(``onnx-fp16``, ``tflite``, ``tensorrt``) and run for the targets that ask for it
(:data:`edgeskip.exporters.settings.TARGETS`), in that order, each given the same :class:`FormatJob`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgeskip.errors import EdgeskipError
from edgeskip.manifest import FormatInfo, TensorRT

if TYPE_CHECKING:
    import torch

    from edgeskip.exporters.settings import ExportConfig
    from edgeskip.exporters.stages import StageModule

__all__ = ["FP16_TOLERANCE", "FP32_TOLERANCE", "ExportError", "FormatExporter", "FormatJob", "FormatResult",
           "relative_errors", "require_within"]

FP32_TOLERANCE = 1e-4
# fp16 weights: errors relative to the output's scale (max |torch|); measured well below this.
FP16_TOLERANCE = 1e-2


class ExportError(EdgeskipError):
    """An export produced a model that fails its own checks (ONNX checker, fidelity)."""


@dataclasses.dataclass
class FormatJob:
    """The export in progress: settings, the temporary bundle folder, the stages with their real inputs, and
    each stage's files so far (stage -> format -> path in the bundle), which an exporter adds to."""

    cfg: ExportConfig
    tmp: Path
    stages: list[StageModule]  # embed, the non-removed layers, head (agents run on the host)
    inputs: dict[str, torch.Tensor]  # each stage's real input on the fidelity images
    files: dict[str, dict[str, str]]
    step: Callable[[], Any]  # one progress step per file written
    calibration: dict[str, torch.Tensor] | None = None  # each stage's input on calibration images (INT8)


@dataclasses.dataclass(frozen=True)
class FormatResult:
    """What a format adds to the manifest: its formats, its fidelity per format and stage, a TensorRT section."""

    formats: dict[str, FormatInfo]
    fidelity: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    tensorrt: TensorRT | None = None


class FormatExporter(Protocol):
    """Writes one format's files for every stage into the bundle and checks them against PyTorch."""

    name: str

    def steps(self, stages: int, cfg: ExportConfig) -> int:
        """Files it writes for ``stages`` stages under ``cfg`` (the progress bar's share)."""

    def __call__(self, job: FormatJob) -> FormatResult:
        """Write, check, and say what the manifest records."""


def require_within(errors: dict[str, float], tolerance: float, what: str) -> None:
    """Every stage's error at most ``tolerance``, else an ExportError naming the stages that are not."""
    bad = {k: v for k, v in errors.items() if not v <= tolerance}
    if bad:
        raise ExportError(f"{what} differs from PyTorch by more than {tolerance:g}: {bad}")


def relative_errors(errors: dict[str, float], stages: list[StageModule], inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Errors divided by each stage's output scale (max |torch output|): the measure for fp16 weights."""
    import torch  # an exporter runs with torch; this module is imported by the CLI's settings too

    with torch.no_grad():
        scale = {s.name: float(s.module(inputs[s.name]).abs().max()) for s in stages}
    return {k: v / max(scale[k], 1e-12) for k, v in errors.items()}
