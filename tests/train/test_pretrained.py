"""Training from a user's pretrained model on a user's image folder: a new head, agents, a frozen backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from edgeskip.config import ViTConfig
from edgeskip.data import load_dataset, load_dataset_for, load_digits
from edgeskip.errors import ConfigError, DataError
from edgeskip.models.adapters import load_state_file, to_timm_state_dict
from edgeskip.models.vit import ViT
from edgeskip.train.checkpoint import load_checkpoint
from edgeskip.train.config import TrainConfig
from edgeskip.train.run import train


def _folder(root: Path, classes: int = 3, per_class: int = 12, size: tuple[int, int] = (20, 18)) -> Path:
    digits = load_digits().train
    for c in range(classes):
        for i, k in enumerate(np.flatnonzero(digits.labels == c)[:per_class]):
            split = "test" if i % 4 == 0 else "train"
            file = root / split / f"part_{c}" / f"{i}.png"
            file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(digits.images[k, :, :, 0]).resize(size).convert("RGB").save(file)
    return root


def _timm_weights(path: Path, classes: int = 10) -> Path:
    cfg = ViTConfig("timm-vit", depth=3, width=48, heads=3, mlp_hidden=96, patch_size=4, image_size=16,
                    num_classes=classes, drop_path=0.0, distilled=True, head_tokens="cls+dist")
    torch.manual_seed(0)
    save_file(to_timm_state_dict(ViT(cfg)), str(path))
    return path


def test_agents_on_a_frozen_pretrained_backbone_with_a_new_head(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "parts")
    weights = _timm_weights(tmp_path / "deit.safetensors")
    cfg = TrainConfig(model="timm:deit_tiny_distilled_patch4_16", weights=str(weights), data=str(folder), agents=True,
                      freeze_backbone=True, epochs=2, batch_size=8, out=str(tmp_path / "run"), progress=False,
                      augment="none")
    assert cfg.dataset == "folder"  # the default for a pretrained model
    result = train(cfg)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.model_name == "timm:deit_tiny_distilled_patch4_16" and ckpt.dataset == "folder"
    assert ckpt.classes == ("part_0", "part_1", "part_2") and ckpt.model_config.num_classes == 3
    assert ckpt.model_config.image_size == 16 and ckpt.model_config.distilled
    trained = ckpt.build_model().state_dict()
    original = load_state_file(weights)
    # the backbone is exactly as loaded; the new head and the agents learned
    assert torch.equal(trained["blocks.1.attn.qkv.weight"], original["blocks.1.attn.qkv.weight"])
    assert torch.equal(trained["embed.dist_token"], original["dist_token"])
    assert trained["head.fc.weight"].shape == (3, 48)
    assert any(k.startswith("agents.") for k in trained)
    # every later command loads the folder at the model's size, with the model's classes
    data = load_dataset_for(ckpt.dataset, str(folder), ckpt.model_config, ckpt.classes)
    assert data.test.image_shape == (16, 16, 3) and len(data.test) == 9


def test_a_dataset_that_does_not_fit_the_model_is_one_clear_error(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "parts")
    cfg = ViTConfig("vit", depth=1, width=16, heads=2, mlp_hidden=16, patch_size=4, image_size=16, num_classes=3)
    with pytest.raises(DataError, match="classes of .* differ from the model's"):
        load_dataset_for("folder", str(folder), cfg, ("bolt", "nut", "washer"))
    with pytest.raises(DataError, match="channel"):
        load_dataset("digits", channels=3)
    with pytest.raises(DataError, match="needs --data"):
        load_dataset("folder")
    grown = load_dataset("digits", image_size=12)  # any size: fitted as the runtime fits its inputs
    assert grown.train.image_shape == (12, 12, 1)


def test_pretrained_options_that_contradict_each_other(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--weights and --heads belong to a timm model"):
        TrainConfig(model="vit9", weights="w.safetensors")
    with pytest.raises(ConfigError, match="--freeze-backbone"):
        TrainConfig(model="hf:folder", freeze_backbone=True)
    with pytest.raises(ConfigError, match="--image-size"):
        TrainConfig(model="hf:folder", image_size=64)
    with pytest.raises(ConfigError, match="both give starting weights"):
        TrainConfig(model="hf:folder", agents=True, init="ckpt")
    assert TrainConfig(model="vit9").dataset == "cifar10"


def test_bad_input_on_the_command_line_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeskip.cli import main

    folder = _folder(tmp_path / "parts")
    weights = _timm_weights(tmp_path / "deit.safetensors")
    state = load_state_file(weights)
    save_file({**state, "fc_norm.weight": torch.ones(48), "fc_norm.bias": torch.zeros(48)},
              str(tmp_path / "pooled.safetensors"))
    save_file({**state, "blocks.1.mlp.fc1.weight": torch.zeros(80, 48)}, str(tmp_path / "odd.safetensors"))
    _folder(tmp_path / "one", classes=1)
    _folder(tmp_path / "broken")
    (tmp_path / "broken" / "train" / "part_1" / "bad.png").write_bytes(b"not a png")
    _folder(tmp_path / "differ")
    (tmp_path / "differ" / "test" / "part_9").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "differ" / "test" / "part_9" / "x.png")
    timm = ["train", "--model", "timm:deit_tiny_distilled_patch4_16", "--out", str(tmp_path / "run"), "--weights"]
    cases = [
        (timm + [str(tmp_path / "pooled.safetensors"), "--data", str(folder)], "global average pooling"),
        (timm + [str(tmp_path / "odd.safetensors"), "--data", str(folder)], "do not fit the architecture"),
        (timm + [str(tmp_path / "none.pth"), "--data", str(folder)], "weights file"),
        (timm + [str(weights), "--data", str(tmp_path / "one")], "needs at least two"),
        (timm + [str(weights), "--data", str(tmp_path / "broken")], "cannot decode image"),
        (timm + [str(weights), "--data", str(tmp_path / "differ")], "classes differ"),
        (["train", "--model", f"hf:{tmp_path}", "--data", str(folder)], "not a Hugging Face model folder"),
        (["train", "--model", "timm:deit_tiny_patch16_224", "--data", str(folder), "--freeze-backbone"],
         "--freeze-backbone"),
    ]
    try:
        import timm  # noqa: F401
    except Exception:  # not importable here: a name without weights says how to give them
        cases.append((["train", "--model", "timm:deit_tiny_patch16_224", "--data", str(folder)], "--weights FILE"))
    for args, message in cases:
        assert main([*args, "--no-progress"]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)


def test_a_hugging_face_folder_trains_with_its_classes_and_normalisation(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    transformers = pytest.importorskip("transformers", reason="a Hugging Face model needs transformers")
    folder = _folder(tmp_path / "parts")
    labels = {0: "part_0", 1: "part_1", 2: "part_2"}
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=4,
        num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()}))
    hf.save_pretrained(tmp_path / "my-vit")
    caplog.set_level("INFO", logger="edgeskip")
    result = train(TrainConfig(model=f"hf:{tmp_path / 'my-vit'}", data=str(folder), agents=True, epochs=1,
                               batch_size=8, out=str(tmp_path / "run"), progress=False, augment="none"))
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.model_name == "hf:my-vit" and ckpt.normalization.mean == (0.5, 0.5, 0.5)  # not the folder's path
    # the folder's classes are the model's own names: its head is kept, not replaced
    assert ckpt.classes == ("part_0", "part_1", "part_2") and "new 3-class head" not in caplog.text
    assert "starting from transformers ViTForImageClassification" in caplog.text
