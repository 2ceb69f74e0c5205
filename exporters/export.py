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
from tqdm.auto import tqdm

from edgeskip._version import __version__
from edgeskip.bundle import (
    MANIFEST,
    SCHEMA_VERSION,
    Bundle,
    Manifest,
    Stage,
    sha256_file,
)
from edgeskip.errors import CheckpointError, ConfigError, EdgeskipError
from edgeskip.exporters.fidelity import (
    compare_paths,
    reference_paths,
    stage_errors,
    stage_inputs,
)
from edgeskip.exporters.gate import build_gate_graph
from edgeskip.exporters.onnx import (
    ExportError,
    export_stage,
    ort_session,
    run_onnx,
    to_onnx,
)
from edgeskip.exporters.settings import ExportConfig, parse_batch_sizes
from edgeskip.exporters.stages import (
    StageModule,
    StaticModel,
    agent_modules,
    stage_modules,
)
from edgeskip.fsutil import atomic_directory, atomic_write_json
from edgeskip.models.vit import ViT
from edgeskip.train.checkpoint import state_sha256
from edgeskip.normalization import Normalization, get_normalization, preprocess
from edgeskip.runtimes.gate import GATE_INPUT, GATE_OUTPUTS, exit_threshold_name, layer_threshold_name

__all__ = ["export_bundle", "ExportResult", "FP32_TOLERANCE", "FP16_TOLERANCE", "UNTRAINED_WARNING"]

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
# fp16 weights: errors relative to the output's scale (max |torch|); measured well below this.
FP16_TOLERANCE = 1e-2
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
    weights: dict[str, Any]


def _load_source(cfg: ExportConfig) -> _Source:
    from edgeskip.variants import model_config

    expected = model_config(cfg.model)  # unknown model -> UnknownNameError
    if cfg.checkpoint is not None:
        from edgeskip.train.checkpoint import load_checkpoint

        ckpt = load_checkpoint(cfg.checkpoint)
        if ckpt.model_name != cfg.model:
            raise CheckpointError(f"--checkpoint {cfg.checkpoint} holds a {ckpt.model_name} model, not {cfg.model}: "
                                  f"pass --model {ckpt.model_name} or the right checkpoint")
        model = ckpt.build_model()
        skip = getattr(model, "skip", None)
        return _Source(model, cfg.model, ckpt.dataset, ckpt.normalization, ckpt.classes,
                       skip.thresholds if skip is not None else None,
                       {"source": "checkpoint", "untrained": False, "checkpoint": str(ckpt.path),
                        "checkpoint_sha256": ckpt.meta["weights"]["sha256"], "metrics": ckpt.metrics})
    from edgeskip.agents.model import SkipViT
    from edgeskip.data.cifar import CIFAR10_CLASSES

    log.warning(UNTRAINED_WARNING)
    torch.manual_seed(cfg.seed)
    model = SkipViT(expected).eval()
    dataset = "digits" if (expected.image_size, expected.in_channels) == (8, 1) else "cifar10"
    classes = CIFAR10_CLASSES if expected.num_classes == 10 and dataset == "cifar10" else tuple(
        str(k) for k in range(expected.num_classes))
    return _Source(model, cfg.model, dataset, get_normalization(dataset), tuple(classes), model.skip.thresholds,
                   {"source": "random-init", "untrained": True, "seed": cfg.seed})


def _load_e2cm(cfg: ExportConfig, src: _Source) -> Any:
    if cfg.e2cm is None:
        return None
    if cfg.checkpoint is None:
        raise ConfigError("--e2cm needs the --checkpoint it was calibrated on (class means of random weights mean nothing)")
    from edgeskip.e2cm import E2CM
    from edgeskip.e2cm.costs import feature_size

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
    with_agents = e2cm.meta.get("thresholds_with_agents")
    if src.thresholds is not None and with_agents is not None:
        e2cm = e2cm.with_thresholds(with_agents)  # searched on the agents' own paths
    return e2cm


def _fidelity_images(cfg: ExportConfig, src: _Source) -> tuple[torch.Tensor, str]:
    n = cfg.fidelity_images
    model_cfg = src.model.config
    if src.dataset == "digits" or cfg.data is not None:
        from edgeskip.data import load_dataset

        test = load_dataset(src.dataset, cfg.data).test
        images = test.images[:n]
        what = f"{src.dataset} test images 0..{len(images) - 1}"
    else:
        rng = np.random.default_rng(cfg.seed)
        shape = (n, model_cfg.image_size, model_cfg.image_size, model_cfg.in_channels)
        images = rng.integers(0, 256, size=shape, dtype=np.uint8)
        what = f"{n} random uint8 images (no --data given)"
    return torch.from_numpy(preprocess(images, src.normalization)), what


def export_bundle(cfg: ExportConfig, *, progress: bool = False) -> ExportResult:
    """Export ``cfg.model`` for ``cfg.target`` into ``cfg.out_dir``; returns the verified bundle."""
    import time

    start = time.perf_counter()
    cfg = cfg.resolved()
    out = Path(cfg.out_dir)
    if out.exists() and not cfg.force:
        raise EdgeskipError(f"{out} already exists: pass --force to replace it (atomically) or choose another --out")
    batch_sizes = parse_batch_sizes(cfg.batch_sizes)
    src = _load_source(cfg)
    e2cm = _load_e2cm(cfg, src)
    images, images_what = _fidelity_images(cfg, src)
    model, model_cfg = src.model, src.model.config
    removed = tuple(j for j, t in enumerate(src.thresholds or ()) if t is None)
    stages = stage_modules(model, removed)
    agents = agent_modules(model, removed)
    inputs = stage_inputs(model, images)
    steps = len(stages) + len(agents) + 2 + (len(stages) * 2 if "tflite" in cfg.formats else 0) \
        + (len(stages) if "onnx-fp16" in cfg.formats else 0)
    bar = tqdm(total=steps, desc=f"export {cfg.model} -> {cfg.target}", unit="file", disable=not progress)
    fidelity: dict[str, Any] = {"images": images_what, "tolerance_fp32": FP32_TOLERANCE}
    with atomic_directory(out, replace=cfg.force) as tmp:
        files: dict[str, dict[str, str]] = {s.name: {} for s in stages + agents}
        onnx_models: dict[str, onnx.ModelProto] = {}
        for s in stages + agents:
            rel = f"onnx/{s.name}.onnx"
            onnx_models[s.name] = export_stage(s, tmp / rel)
            files[s.name]["onnx"] = rel
            bar.update()
        sessions = {s.name: ort_session(onnx_models[s.name]) for s in stages + agents}
        fidelity["onnx"] = stage_errors(stages + agents, inputs, lambda s, x: run_onnx(sessions[s.name], x))
        _require(fidelity["onnx"], FP32_TOLERANCE, "ONNX (onnxruntime)")

        monolithic = to_onnx(StaticModel(model, removed), images[:2], GATE_INPUT, "logits")
        (tmp / "onnx/model.onnx").write_bytes(monolithic.SerializeToString())
        fidelity["monolithic"] = _monolithic_error(model, removed, monolithic, images)
        _require({"model": fidelity["monolithic"]}, FP32_TOLERANCE, "monolithic ONNX")
        bar.update()

        agent_params = _agent_parameters(model) if agents else None
        gate = build_gate_graph(
            onnx_models["embed"], {s.layer: onnx_models[s.name] for s in stages if s.layer is not None},
            onnx_models["head"], model_cfg, agents=agent_params, thresholds=src.thresholds if agents else None,
            e2cm=e2cm,
        )
        from edgeskip.exporters.onnx import check_onnx

        gate = check_onnx(gate, name="gate graph")
        (tmp / "onnx/gate.onnx").write_bytes(gate.SerializeToString())
        fidelity["gate"] = _gate_fidelity(model, gate, images, src.thresholds if agents else None, e2cm)
        if fidelity["gate"]["different_decisions"] or fidelity["gate"]["max_abs_logit_error"] > FP32_TOLERANCE:
            raise ExportError(f"the gate graph disagrees with PyTorch: {fidelity['gate']}")
        bar.update()

        if "onnx-fp16" in cfg.formats:  # engines are built for embed, layers, head; agents run on the host
            fp16 = {}
            for s in stages:
                rel = f"onnx/fp16/{s.name}.onnx"
                fp16[s.name] = ort_session(export_stage(s, tmp / rel, half=True))
                files[s.name]["onnx-fp16"] = rel
                bar.update()
            errors = stage_errors(stages, inputs, lambda s, x: run_onnx(fp16[s.name], x.astype(np.float16)))
            _require(_relative(errors, stages, inputs), FP16_TOLERANCE, "fp16 ONNX (relative to the output scale)")
            fidelity["onnx-fp16"] = errors
        if "tflite" in cfg.formats:
            fidelity.update(_export_tflite(stages, inputs, tmp, files, bar))
        if agent_params is not None:
            np.savez(tmp / "agents.npz", weights=agent_params[0], biases=agent_params[1])
        if e2cm is not None:
            e2cm.save(tmp / "e2cm")
        tensorrt = _tensorrt_section(cfg, tmp, stages, files, batch_sizes) if cfg.target == "jetson" else None
        bar.close()

        manifest = Manifest(
            model_name=src.model_name, config=model_cfg, classes=src.classes, dataset=src.dataset,
            normalization=src.normalization, target=cfg.target, precision=cfg.precision,
            stages=tuple(_stage_entry(s, files[s.name]) for s in stages + agents if s.kind != "agent")
            + tuple(_stage_entry(s, files[s.name]) for s in agents),
            files=_files_table(tmp), weights={**src.weights, "state_sha256": state_sha256(model)}, removed=removed,
            agents=None if agent_params is None else {
                "file": "agents.npz", "thresholds": list(src.thresholds or ()),
                "stages": [s.name for s in agents], "rule": "run layer j when sigmoid(w_j . cls + b_j) >= threshold_j",
            },
            e2cm=None if e2cm is None else {
                "dir": "e2cm", "feature": e2cm.feature, "exits": list(e2cm.exits), "thresholds": e2cm.thresholds.tolist(),
                "costs": e2cm.costs.to_dict(), "budget": e2cm.meta.get("budget"),
            },
            gate={
                "file": "onnx/gate.onnx", "inputs": [GATE_INPUT], "outputs": list(GATE_OUTPUTS),
                "layer_thresholds": {str(s.layer): layer_threshold_name(s.layer) for s in agents if s.layer is not None},
                "exit_thresholds": [exit_threshold_name(i) for i in range(len(e2cm.exits))] if e2cm else [],
                "batch": "one decision shared by the batch (exact per input at batch 1)",
            },
            monolithic={"file": "onnx/model.onnx", "inputs": [GATE_INPUT], "outputs": ["logits"]},
            tensorrt=tensorrt, fidelity=fidelity, formats=_formats(cfg),
            preprocessing={
                "input": "uint8 HWC/NHWC or float NCHW", "layout": "NCHW", "scale": 1 / 255,
                "image_size": model_cfg.image_size, "channels": model_cfg.in_channels, "resize": "bilinear",
                "normalization": src.normalization.to_dict(),
            },
            provenance={"edgeskip_version": __version__, "torch_version": torch.__version__,
                        "onnx_version": onnx.__version__, "opset": 17, "schema_version": SCHEMA_VERSION,
                        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
        )
        atomic_write_json(tmp / MANIFEST, manifest.to_dict())
        Bundle.open(tmp)  # the bundle must load and verify before it takes the final name
    return ExportResult(out, Bundle.open(out).manifest, time.perf_counter() - start)


def _formats(cfg: ExportConfig) -> dict[str, dict[str, Any]]:
    """What each file format in the bundle holds (batch axis, weight and compute types)."""
    out = {"onnx": {"batch": "dynamic", "weights": "float32", "io": "float32", "opset": 17}}
    if "onnx-fp16" in cfg.formats:
        out["onnx-fp16"] = {"batch": "dynamic", "weights": "float16", "io": "float16", "opset": 17,
                            "use": "TensorRT >= 11 (strongly typed) fp16 engines"}
    if "tflite" in cfg.formats:
        # litert-torch 0.10 cannot export a dynamic batch, and resizing a fixed one is unsafe
        # (a head resized from batch 1 silently returned one row): the per-layer loop runs batch 1.
        out["tflite"] = {"batch": 1, "weights": "float32", "io": "float32"}
        out["tflite-fp16"] = {"batch": 1, "weights": "float16 (dequantised to float32 at load)", "io": "float32"}
    return out


def _require(errors: dict[str, float], tolerance: float, what: str) -> None:
    bad = {k: v for k, v in errors.items() if not v <= tolerance}
    if bad:
        raise ExportError(f"{what} differs from PyTorch by more than {tolerance:g}: {bad}")


@torch.no_grad()
def _relative(errors: dict[str, float], stages: list[StageModule], inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Errors divided by each stage's output scale (max |torch output|): the fp16 measure."""
    scale = {s.name: float(s.module(inputs[s.name]).abs().max()) for s in stages}
    return {k: v / max(scale[k], 1e-12) for k, v in errors.items()}


def _stage_entry(s: StageModule, files: dict[str, str]) -> Stage:
    return Stage(s.name, s.kind, s.layer, (s.input,), (s.output,), dict(files))


def _files_table(root: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
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


def _export_tflite(stages: list[StageModule], inputs: dict[str, torch.Tensor], tmp: Path,
                   files: dict[str, dict[str, str]], bar: Any) -> dict[str, Any]:
    from edgeskip.exporters.tflite import convert_stage
    from edgeskip.runtimes.tflite_interpreter import run_tflite

    out: dict[str, Any] = {}
    for precision, fmt in (("fp32", "tflite"), ("fp16", "tflite-fp16")):
        for s in stages:
            rel = f"tflite/{s.name}.{precision}.tflite"
            convert_stage(s, tmp / rel, precision)
            files[s.name][fmt] = rel
            bar.update()
        paths = {s.name: tmp / files[s.name][fmt] for s in stages}

        def run_rows(s: StageModule, x: np.ndarray) -> np.ndarray:  # the files hold batch 1
            return np.concatenate([run_tflite(paths[s.name], x[i:i + 1]) for i in range(len(x))])  # noqa: B023

        errors = stage_errors(stages, inputs, run_rows)
        if precision == "fp32":
            _require(errors, FP32_TOLERANCE, "TFLite fp32 (LiteRT interpreter)")
        else:
            _require(_relative(errors, stages, inputs), FP16_TOLERANCE, "TFLite fp16 (relative to the output scale)")
        out[fmt] = errors
    return out


def _tensorrt_section(cfg: ExportConfig, tmp: Path, stages: list[StageModule], files: dict[str, dict[str, str]],
                      batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    from edgeskip.exporters.tensorrt import (
        EngineJob,
        require_tensorrt_compatible,
        trtexec_script,
    )

    for rel in [f for s in stages for f in files[s.name].values()] + ["onnx/gate.onnx"]:  # agents run on the host
        require_tensorrt_compatible(onnx.load(tmp / rel), rel)
    jobs = [EngineJob(s.name, files[s.name]["onnx"], files[s.name]["onnx-fp16"], s.input.name,
                      tuple(int(d) for d in s.input.shape[1:])) for s in stages]
    script = tmp / "tensorrt" / "build_engines.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(trtexec_script(jobs, batch_sizes, cfg.precision))
    script.chmod(0o755)
    return {"precision": cfg.precision, "batch_sizes": list(batch_sizes), "script": "tensorrt/build_engines.sh",
            "opset": 17, "engines": [],
            "note": "engines are built on the device: 'edgeskip build-engines BUNDLE' or tensorrt/build_engines.sh"}
