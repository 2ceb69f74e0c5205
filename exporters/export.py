"""``edgeskip export``: a checkpoint (or fresh weights) -> a verified, checksummed bundle.

Everything is written into a temporary directory beside ``--out`` and renamed into place
only after every file passed its checks (ONNX checker, fidelity against PyTorch on the
images given), with ``manifest.json`` written last; an interrupted or failed export leaves
the previous bundle (or nothing) and never a partial one that looks whole.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edgeskip._version import __version__
from edgeskip.agents.model import SkipViT
from edgeskip.bundle import MANIFEST, Bundle, sha256_file
from edgeskip.data import load_dataset_for
from edgeskip.data.cifar import CIFAR10_CLASSES
from edgeskip.e2cm import E2CM
from edgeskip.e2cm.means import check_token
from edgeskip.e2cm.costs import feature_size
from edgeskip.errors import CheckpointError, ConfigError, EdgeskipError
from edgeskip.exporters import EXPORTERS
from edgeskip.exporters.fidelity import compare_paths, reference_paths, stage_errors, stage_inputs
from edgeskip.exporters.formats import FP16_TOLERANCE, FP32_TOLERANCE, ExportError, FormatJob, require_within
from edgeskip.exporters.gate import build_gate_graph
from edgeskip.exporters.onnx import OPSET, check_onnx, export_stage, ort_session, run_onnx, to_onnx
from edgeskip.exporters.settings import ExportConfig
from edgeskip.exporters.stages import StageModule, StaticModel, agent_modules, stage_modules
from edgeskip.fsutil import atomic_directory, atomic_write_bytes
from edgeskip.manifest import (
    Agents,
    Exits,
    FileEntry,
    Fidelity,
    FormatInfo,
    Gate,
    GateFidelity,
    Manifest,
    Monolithic,
    Preprocessing,
    Provenance,
    Stage,
    Weights,
)
from edgeskip.models.vit import ViT
from edgeskip.normalization import Normalization, get_normalization, preprocess
from edgeskip.progress import progress_bar
from edgeskip.imaging import RESIZE
from edgeskip.runtimes.gate import GATE_INPUT, GATE_OUTPUTS, exit_threshold_name, layer_threshold_name
from edgeskip.train.checkpoint import load_checkpoint, state_sha256
from edgeskip.variants import model_config

__all__ = ["export_bundle", "ExportResult", "FP32_TOLERANCE", "FP16_TOLERANCE", "UNTRAINED_WARNING"]

log = logging.getLogger(__name__)

UNTRAINED_WARNING = ("WARNING: no --checkpoint given: this bundle holds FRESHLY INITIALISED, UNTRAINED weights. "
                     "Its predictions are meaningless; it is good for checking the toolchain and measuring speed only. "
                     "The manifest records weights.untrained = true.")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: Manifest
    seconds: float


@dataclasses.dataclass(frozen=True)
class _Source:
    model: ViT
    model_name: str
    dataset: str
    normalization: Normalization
    classes: tuple[str, ...]
    thresholds: tuple[float | None, ...] | None
    weights: Weights


def _load_source(cfg: ExportConfig) -> _Source:
    if cfg.checkpoint is not None:  # it carries its own architecture (an adapted model's is not registered)
        ckpt = load_checkpoint(cfg.checkpoint)
        if cfg.model is not None and ckpt.model_name != cfg.model:
            raise CheckpointError(f"--checkpoint {cfg.checkpoint} holds a {ckpt.model_name} model, not {cfg.model}: "
                                  f"pass --model {ckpt.model_name} or the right checkpoint")
        model = ckpt.build_model()
        skip = getattr(model, "skip", None)
        return _Source(model, ckpt.model_name, ckpt.dataset, ckpt.normalization, ckpt.classes,
                       skip.thresholds if skip is not None else None,
                       Weights(source="checkpoint", untrained=False, state_sha256=state_sha256(model),
                               checkpoint_name=ckpt.path.name, checkpoint_sha256=ckpt.meta["weights"]["sha256"],
                               metrics=ckpt.metrics))
    assert cfg.model is not None  # ExportConfig: no checkpoint without a model
    expected = model_config(cfg.model)  # unknown model -> UnknownNameError
    log.warning(UNTRAINED_WARNING)
    torch.manual_seed(cfg.seed)
    model = SkipViT(expected).eval()
    dataset = "digits" if (expected.image_size, expected.in_channels) == (8, 1) else "cifar10"
    classes = CIFAR10_CLASSES if expected.num_classes == 10 and dataset == "cifar10" else tuple(
        str(k) for k in range(expected.num_classes))
    return _Source(model, cfg.model, dataset, get_normalization(dataset), tuple(classes), model.skip.thresholds,
                   Weights(source="random-init", untrained=True, state_sha256=state_sha256(model), seed=cfg.seed))


def _load_e2cm(cfg: ExportConfig, src: _Source) -> Any:
    if cfg.e2cm is None:
        return None
    if cfg.checkpoint is None:
        raise ConfigError("--e2cm needs the --checkpoint it was calibrated on (class means of random weights mean nothing)")
    path = Path(cfg.e2cm)
    if not (path / "e2cm.json").is_file():
        subs = sorted(str(p.parent) for p in path.glob("*/e2cm.json")) if path.is_dir() else []
        hint = f" (it holds {', '.join(subs)}: pass one of those folders)" if subs else ""
        raise ConfigError(f"--e2cm {path} is not an E²CM folder written by 'edgeskip calibrate'{hint}")
    e2cm = E2CM.load(path)
    model_cfg = src.model.config
    if e2cm.num_classes != model_cfg.num_classes or e2cm.means.shape[2] != feature_size(model_cfg, e2cm.feature) \
            or max(e2cm.exits) >= model_cfg.depth - 1:
        raise ConfigError(f"--e2cm {path} was calibrated for another model (class means {e2cm.means.shape})")
    check_token(e2cm, model_cfg)
    with_agents = e2cm.meta.get("thresholds_with_agents")
    if src.thresholds is not None and with_agents is not None:
        e2cm = e2cm.with_thresholds(with_agents)  # searched on the agents' own paths
    return e2cm


def _fidelity_images(cfg: ExportConfig, src: _Source) -> tuple[torch.Tensor, str]:
    n = cfg.fidelity_images
    model_cfg = src.model.config
    if src.dataset == "digits" or cfg.data is not None:
        test = load_dataset_for(src.dataset, cfg.data, model_cfg, src.classes).test
        images = test.images[:n]
        what = f"{src.dataset} test images 0..{len(images) - 1}"
    else:
        rng = np.random.default_rng(cfg.seed)
        shape = (n, model_cfg.image_size, model_cfg.image_size, model_cfg.in_channels)
        images = rng.integers(0, 256, size=shape, dtype=np.uint8)
        what = f"{n} random uint8 images (no --data given)"
    return torch.from_numpy(preprocess(images, src.normalization)), what


def _calibration_inputs(cfg: ExportConfig, src: _Source) -> dict[str, torch.Tensor]:
    """Every stage's input on ``cfg.calibration_images`` training images (a seeded subset, evenly per class),
    as the float chain computes it: what INT8 activation ranges are calibrated on."""
    if cfg.data is None and src.dataset != "digits":
        raise ConfigError(f"--int8 calibrates on training images: pass --data with the {src.dataset} copy")
    train = load_dataset_for(src.dataset, cfg.data, src.model.config, src.classes).train
    rng = np.random.default_rng(cfg.seed)
    per_class = -(-cfg.calibration_images // len(src.classes))
    chosen = np.concatenate([rng.permutation(np.flatnonzero(train.labels == k))[:per_class]
                             for k in range(len(src.classes))])[: cfg.calibration_images]
    images = torch.from_numpy(preprocess(train.images[np.sort(chosen)], src.normalization))
    with torch.no_grad():
        return stage_inputs(src.model, images)


def export_bundle(cfg: ExportConfig, *, progress: bool = False) -> ExportResult:
    """Export ``cfg.model`` for ``cfg.target`` into ``cfg.out_dir``; returns the verified bundle."""
    import time

    start = time.perf_counter()
    cfg = cfg.resolved()
    if cfg.model is None:  # the checkpoint knows its model (ExportConfig: no model without one)
        assert cfg.checkpoint is not None
        cfg = dataclasses.replace(cfg, model=load_checkpoint(cfg.checkpoint).model_name)
    out = Path(cfg.out_dir)
    if out.exists() and not cfg.force:
        raise EdgeskipError(f"{out} already exists: pass --force to replace it (atomically) or choose another --out")
    formats = [EXPORTERS.get(name)() for name in cfg.exporters]  # an unknown or uninstallable format fails first
    src = _load_source(cfg)
    e2cm = _load_e2cm(cfg, src)
    images, images_what = _fidelity_images(cfg, src)
    model, model_cfg = src.model, src.model.config
    removed = tuple(j for j, t in enumerate(src.thresholds or ()) if t is None)
    stages = stage_modules(model, removed)
    agents = agent_modules(model, removed)
    inputs = stage_inputs(model, images)
    steps = len(stages) + len(agents) + 2 + sum(f.steps(len(stages), cfg) for f in formats)
    bar = progress_bar(total=steps, desc=f"export {cfg.model} -> {cfg.target}", unit="file", enabled=progress)
    with atomic_directory(out, replace=cfg.force) as tmp:
        files: dict[str, dict[str, str]] = {s.name: {} for s in stages + agents}
        onnx_models: dict[str, onnx.ModelProto] = {}
        for s in stages + agents:
            rel = f"onnx/{s.name}.onnx"
            onnx_models[s.name] = export_stage(s, tmp / rel)
            files[s.name]["onnx"] = rel
            bar.update()
        sessions = {s.name: ort_session(onnx_models[s.name]) for s in stages + agents}
        onnx_errors = stage_errors(stages + agents, inputs, lambda s, x: run_onnx(sessions[s.name], x))
        require_within(onnx_errors, FP32_TOLERANCE, "ONNX (onnxruntime)")

        monolithic = to_onnx(StaticModel(model, removed), images[:2], GATE_INPUT, "logits")
        (tmp / "onnx/model.onnx").write_bytes(monolithic.SerializeToString())
        monolithic_error = _monolithic_error(model, removed, monolithic, images)
        require_within({"model": monolithic_error}, FP32_TOLERANCE, "monolithic ONNX")
        bar.update()

        agent_params = _agent_parameters(model) if agents else None
        gate = build_gate_graph(
            onnx_models["embed"], {s.layer: onnx_models[s.name] for s in stages if s.layer is not None},
            onnx_models["head"], model_cfg, agents=agent_params, thresholds=src.thresholds if agents else None,
            e2cm=e2cm,
        )
        gate = check_onnx(gate, name="gate graph")
        (tmp / "onnx/gate.onnx").write_bytes(gate.SerializeToString())
        gate_fidelity = GateFidelity.from_dict(_gate_fidelity(model, gate, images, src.thresholds if agents else None,
                                                              e2cm))
        if gate_fidelity.different_decisions or gate_fidelity.max_abs_logit_error > FP32_TOLERANCE:
            raise ExportError(f"the gate graph disagrees with PyTorch: {gate_fidelity}")
        bar.update()

        calibration = _calibration_inputs(cfg, src) if cfg.int8 and cfg.quantization == "static" else None
        job = FormatJob(cfg, tmp, stages, inputs, files, bar.update, calibration)
        results = [f(job) for f in formats]  # in the target's order (tensorrt after onnx-fp16)
        if agent_params is not None:
            np.savez(tmp / "agents.npz", weights=agent_params[0], biases=agent_params[1])
        if e2cm is not None:
            e2cm.save(tmp / "e2cm")
        bar.close()

        manifest = Manifest(
            model_name=src.model_name, config=model_cfg, classes=src.classes, dataset=src.dataset,
            normalization=src.normalization, target=cfg.target, precision=cfg.precision,  # type: ignore[arg-type]
            stages=tuple(_stage_entry(s, files[s.name]) for s in stages) + tuple(_stage_entry(s, files[s.name])
                                                                                  for s in agents),
            files=_files_table(tmp), weights=src.weights,
            removed=removed,
            agents=None if agent_params is None else Agents(
                file="agents.npz", thresholds=tuple(src.thresholds or ()), stages=tuple(s.name for s in agents)),
            e2cm=None if e2cm is None else Exits(
                dir="e2cm", feature=e2cm.feature, exits=e2cm.exits, thresholds=tuple(e2cm.thresholds.tolist()),
                costs=e2cm.costs.to_dict(), budget=e2cm.meta.get("budget")),
            gate=Gate(file="onnx/gate.onnx", inputs=(GATE_INPUT,), outputs=GATE_OUTPUTS,
                      layer_thresholds={str(s.layer): layer_threshold_name(s.layer) for s in agents if s.layer is not None},
                      exit_thresholds=tuple(exit_threshold_name(i) for i in range(len(e2cm.exits))) if e2cm else (),
                      batch="one decision shared by the batch (exact per input at batch 1)"),
            monolithic=Monolithic(file="onnx/model.onnx", inputs=(GATE_INPUT,), outputs=("logits",)),
            tensorrt=next((r.tensorrt for r in results if r.tensorrt is not None), None),
            fidelity=Fidelity(images=images_what, tolerance_fp32=FP32_TOLERANCE, onnx=onnx_errors,
                              monolithic=monolithic_error, gate=gate_fidelity,
                              formats={k: v for r in results for k, v in r.fidelity.items()}),
            formats={"onnx": FormatInfo(batch="dynamic", weights="float32", io="float32", opset=OPSET),
                     **{k: v for r in results for k, v in r.formats.items()}},
            preprocessing=Preprocessing(input="uint8 HWC/NHWC or float NCHW", layout="NCHW", scale=1 / 255,
                                        image_size=model_cfg.image_size, channels=model_cfg.in_channels,
                                        resize=RESIZE, normalization=src.normalization),
            provenance=Provenance(edgeskip_version=__version__, torch_version=torch.__version__,
                                  onnx_version=onnx.__version__, opset=OPSET,
                                  created_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")),
        )
        atomic_write_bytes(tmp / MANIFEST, manifest.to_bytes())
        Bundle.open(tmp)  # the bundle must load and verify before it takes the final name
    return ExportResult(out, Bundle.open(out).manifest, time.perf_counter() - start)


def _stage_entry(s: StageModule, files: dict[str, str]) -> Stage:
    return Stage(name=s.name, kind=s.kind, layer=s.layer, inputs=(s.input,), outputs=(s.output,),  # type: ignore[arg-type]
                 files=dict(files))


def _files_table(root: Path) -> dict[str, FileEntry]:
    return {p.relative_to(root).as_posix(): FileEntry(sha256=sha256_file(p), bytes=p.stat().st_size)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _agent_parameters(model: ViT) -> tuple[np.ndarray, np.ndarray]:
    agents = model.agents  # type: ignore[attr-defined]
    weights = torch.cat([a.weight for a in agents]).detach().float().numpy()
    biases = torch.cat([a.bias for a in agents]).detach().float().numpy()
    return np.ascontiguousarray(weights), np.ascontiguousarray(biases)


@torch.no_grad()
def _monolithic_error(model: ViT, removed: tuple[int, ...], monolithic: onnx.ModelProto, images: torch.Tensor) -> float:
    want = StaticModel(model, removed)(images).double().numpy()
    got = run_onnx(ort_session(monolithic), images.numpy())
    return float(np.abs(got - want).max())


def _gate_fidelity(model: ViT, gate: onnx.ModelProto, images: torch.Tensor,
                   thresholds: tuple[float | None, ...] | None, e2cm: Any) -> dict[str, Any]:
    """Each image alone through gate.onnx (onnxruntime) against the PyTorch + numpy rule."""
    session = ort_session(gate)
    runs = [session.run(None, {GATE_INPUT: images[i:i + 1].numpy()}) for i in range(len(images))]
    ref = reference_paths(model, images, thresholds=thresholds, e2cm=e2cm)
    return compare_paths(ref, [r[0] for r in runs], [r[1] for r in runs], [int(r[2]) for r in runs])
