"""A distilled DeiT whose agents and E²CM cls feature read the mean of CLS and distillation tokens: the torch
model, the exported stages, the gate graph and the torch-free Runtime make the same decisions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeskip.agents.model import SkipViT
from edgeskip.config import ViTConfig
from edgeskip.data.dataset import ImageDataset
from edgeskip.e2cm.means import check_token
from edgeskip.errors import ConfigError
from edgeskip.normalization import get_normalization, preprocess
from edgeskip.policy import SkipConfig
from edgeskip.rule import decision_input
from edgeskip.train.e2cm_calibration import calibrate

NORM = get_normalization("cifar10")
CFG = ViTConfig("timm-vit", depth=4, width=32, heads=2, mlp_hidden=64, patch_size=8, image_size=32, num_classes=3,
                drop_path=0.0, distilled=True, head_tokens="cls+dist", decision_token="cls+dist")


def _model() -> SkipViT:
    torch.manual_seed(0)
    model = SkipViT(CFG, SkipConfig.uniform(CFG.depth, 0.5)).eval()
    with torch.no_grad():
        model.embed.dist_token.normal_(std=0.5)  # tokens 0 and 1 far apart: the two readings disagree
        for agent in model.agents:
            agent.weight.normal_(std=1.0)
            agent.bias.zero_()
    return model


def _images(n: int = 48) -> ImageDataset:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    imgs = np.clip((labels[:, None, None, None] * 60 + 40) + rng.integers(-50, 50, (n, 32, 32, 3)), 0, 255)
    return ImageDataset(imgs.astype(np.uint8), labels.astype(np.int64), ("a", "b", "c"))


def test_decision_input_in_numpy_and_torch() -> None:
    t = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    assert np.array_equal(decision_input(t), t[:, 0])
    assert np.array_equal(decision_input(t, "cls+dist"), (t[:, 0] + t[:, 1]) / 2)
    assert torch.equal(decision_input(torch.from_numpy(t), "cls+dist"), torch.from_numpy((t[:, 0] + t[:, 1]) / 2))
    with pytest.raises(ConfigError, match="needs the distillation token"):
        dataclasses.replace(CFG, distilled=False, head_tokens="cls")


def test_the_token_reaches_every_backend(tmp_path: Path) -> None:
    from edgeskip.bundle import Bundle
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig
    from edgeskip.runtimes import Runtime
    from edgeskip.train.checkpoint import save_checkpoint

    model, data = _model(), _images()
    x = torch.from_numpy(preprocess(data.images, NORM))
    with torch.no_grad():  # not vacuous: reading CLS alone would decide otherwise (after a layer: before the first,
        tokens = model.blocks[0](model.embed(x))  # both tokens are the same for every input)
        mean_reads = [bool(v) for v in model.decide(1, tokens)]
        cls_reads = [bool(v) for v in torch.sigmoid(model.agent_logits(1, tokens[:, 0])) >= 0.5]
    assert mean_reads != cls_reads
    cal = calibrate(model, data, NORM, features=("cls",), path="agents")["cls"]
    assert cal.e2cm.token == "cls+dist"
    e2cm = cal.e2cm.with_thresholds([0.5, 0.5, 0.5])
    e2cm.save(tmp_path / "e2cm")
    save_checkpoint(tmp_path / "ckpt", model, model_name="timm:deit_test", model_config=CFG, dataset="folder",
                    normalization=NORM, classes=data.classes)
    export_bundle(ExportConfig(checkpoint=str(tmp_path / "ckpt"), e2cm=str(tmp_path / "e2cm"), out=str(tmp_path / "b"),
                               fidelity_images=8))
    fid = Bundle.open(tmp_path / "b").manifest.fidelity
    assert fid is not None and fid.gate.same_decisions == fid.gate.images  # the gate graph decides as torch does
    with torch.no_grad():
        want = model(x, sample=False)
    runs = {}
    for graph in ("stages", "gate"):
        for policy in ("agent", "agent+e2cm"):
            with Runtime(tmp_path / "b", graph=graph, policy=policy) as rt:
                rows = [rt(img) for img in data.images[:12]]
            runs[graph, policy] = (np.concatenate([r.executed for r in rows]),
                                   np.concatenate([r.exit_layer for r in rows]))
    assert np.array_equal(runs["stages", "agent"][0], want.executed[:12].numpy())  # numpy agents as torch's
    for policy in ("agent", "agent+e2cm"):  # the ONNX graph as the numpy loop, exits included
        assert all(np.array_equal(a, b) for a, b in zip(runs["stages", policy], runs["gate", policy], strict=True))
    assert (runs["stages", "agent+e2cm"][1] >= 0).any()  # some inputs left at an exit
    # exits calibrated on the other token are refused, at export and in a bundle
    other = dataclasses.replace(e2cm, token="cls")
    with pytest.raises(ConfigError, match="calibrate again"):
        check_token(other, CFG)
    other.save(tmp_path / "e2cm-cls")
    with pytest.raises(ConfigError, match="calibrate again"):
        export_bundle(ExportConfig(checkpoint=str(tmp_path / "ckpt"), e2cm=str(tmp_path / "e2cm-cls"),
                                   out=str(tmp_path / "b2"), fidelity_images=4))


@pytest.mark.slow
def test_a_distilled_deit_exports_to_tflite_and_jetson_onnx(tmp_path: Path) -> None:
    """The two-token head and the mean-token agents through LiteRT (run here) and the Jetson bundle's fp16 ONNX."""
    pytest.importorskip("litert_torch", reason="the tflite exporter needs litert-torch")
    from edgeskip.bundle import Bundle
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig
    from edgeskip.runtimes import Runtime
    from edgeskip.train.checkpoint import save_checkpoint

    model, data = _model(), _images(8)
    save_checkpoint(tmp_path / "ckpt", model, model_name="timm:deit_test", model_config=CFG, dataset="folder",
                    normalization=NORM, classes=data.classes)
    with torch.no_grad():
        want = model(torch.from_numpy(preprocess(data.images, NORM)), sample=False)
    for target, backend in (("tflite", "tflite"), ("jetson", "onnxruntime")):
        out = tmp_path / target
        export_bundle(ExportConfig(checkpoint=str(tmp_path / "ckpt"), target=target, out=str(out), fidelity_images=4))
        fid = Bundle.open(out).manifest.fidelity
        assert fid is not None and max(max(v.values()) for v in fid.formats.values()) < 1e-2  # fp16 included
        with Runtime(out, backend=backend, policy="agent") as rt:
            got = [rt(img) for img in data.images]
        assert np.array_equal(np.concatenate([g.executed for g in got]), want.executed.numpy()), target
        logits = np.concatenate([g.logits for g in got])
        assert np.abs(logits - want.logits.numpy()).max() < 1e-4, target
