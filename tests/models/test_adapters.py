"""A Hugging Face ViT adapted into edgeskip's ViT: the same logits, then the whole export and runtime chain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeskip.models.adapters import AdapterError, from_hf

transformers = pytest.importorskip("transformers", reason="adapting a Hugging Face model needs transformers")


def _hf(**overrides: object) -> object:
    cfg = transformers.ViTConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                                 image_size=32, patch_size=8, num_labels=4,
                                 id2label={i: f"defect_{i}" for i in range(4)}, **overrides)
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(cfg).eval()


def test_the_adapted_model_gives_the_original_logits(tmp_path: Path) -> None:
    hf = _hf()
    adapted = from_hf(hf)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        diff = (adapted.model(x) - hf(pixel_values=x).logits).abs().max().item()
    assert diff <= 1e-5 and adapted.max_abs_diff <= 1e-5
    assert adapted.classes == ("defect_0", "defect_1", "defect_2", "defect_3")
    assert adapted.model.config.depth == 3 and adapted.model.config.layer_norm_eps == 1e-12
    # one layer at a time, as edgeskip runs, skips and exports it
    with torch.no_grad():
        tokens = adapted.model.embed(x)
        for j in range(3):
            tokens = adapted.model.forward_layer(j, tokens)
        assert (adapted.model.head(tokens) - hf(pixel_values=x).logits).abs().max().item() <= 1e-5
    # from a local save_pretrained folder, with its image processor's normalisation
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    loaded = from_hf(tmp_path / "hf")
    assert loaded.normalization.mean == (0.485, 0.456, 0.406) and loaded.max_abs_diff <= 1e-5
    assert from_hf(hf).normalization.mean == (0.5, 0.5, 0.5)  # ViTImageProcessor's default


def test_what_does_not_map_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="activation 'relu' is not supported"):
        from_hf(_hf(hidden_act="relu"))
    with pytest.raises(AdapterError, match="not a Hugging Face model folder"):
        from_hf(tmp_path)
    deit = transformers.DeiTForImageClassification(transformers.DeiTConfig(
        hidden_size=48, num_hidden_layers=1, num_attention_heads=4, intermediate_size=96, image_size=32, patch_size=8))
    with pytest.raises(AdapterError, match="distillation token"):
        from_hf(deit)
    with pytest.raises(AdapterError, match="is not supported"):
        from_hf(torch.nn.Linear(2, 2))


def test_an_adapted_model_exports_and_runs_torch_free(tmp_path: Path) -> None:
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig
    from edgeskip.normalization import preprocess
    from edgeskip.runtimes import Runtime
    from edgeskip.train.checkpoint import save_checkpoint

    hf = _hf()
    adapted = from_hf(hf)
    save_checkpoint(tmp_path / "ckpt", adapted.model, model_name="hf-vit", model_config=adapted.model.config,
                    dataset="defects", normalization=adapted.normalization, classes=adapted.classes)
    export_bundle(ExportConfig(model="hf-vit", checkpoint=str(tmp_path / "ckpt"), out=str(tmp_path / "b"),
                               fidelity_images=4))
    rt = Runtime(tmp_path / "b")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        want = hf(pixel_values=torch.from_numpy(preprocess(images, adapted.normalization))).logits.numpy()
    out = rt(images)
    assert np.abs(out.logits - want).max() <= 1e-4 and out.class_names == [adapted.classes[i] for i in want.argmax(1)]
