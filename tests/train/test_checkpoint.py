"""Checkpoint round trip, tamper detection and the no-pickle guarantee."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from edgeskip.errors import CheckpointError
from edgeskip.models import create
from edgeskip.normalization import get_normalization
from edgeskip.fsutil import sha256_file
from edgeskip.train.checkpoint import load_checkpoint, save_checkpoint


def save_tiny(path: Path, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create("vit-tiny")
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    save_checkpoint(
        path, model, model_name="vit-tiny", model_config=model.config, dataset="cifar10",
        normalization=get_normalization("cifar10"), classes=tuple("abcdefghij"),
        metrics={"test_accuracy": 0.5}, epoch=3, optimizer=opt, step=1, **kw,  # type: ignore[arg-type]
    )
    return model


def test_round_trip(tmp_path: Path) -> None:
    model = save_tiny(tmp_path / "ckpt").eval()
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.model_name == "vit-tiny" and ckpt.model_config == model.config
    assert ckpt.classes == tuple("abcdefghij") and ckpt.metrics == {"test_accuracy": 0.5}
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert {"git_commit", "torch_version", "normalization", "train", "weights"} <= meta.keys()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.build_model()(x), model(x), rtol=0, atol=0)
    info, tensors = ckpt.train_state()  # type: ignore[misc]
    assert info["step"] == 1 and any(k.endswith("exp_avg") for k in tensors)
    for f in ("model.safetensors", "train_state.safetensors", "config.json"):  # shared results: readable by all
        assert (tmp_path / "ckpt" / f).stat().st_mode & 0o777 == 0o644


def test_fp16_weights_load_into_the_fp32_model(tmp_path: Path) -> None:
    """The model zoo ships fp16 weights; loading casts them to the model's fp32."""
    model = save_tiny(tmp_path / "full").eval()
    ckpt = load_checkpoint(tmp_path / "full")
    half = ckpt.build_model().half()
    save_checkpoint(tmp_path / "half", half, model_name=ckpt.model_name, model_config=ckpt.model_config,
                    dataset=ckpt.dataset, normalization=ckpt.normalization, classes=ckpt.classes)
    loaded = load_checkpoint(tmp_path / "half").build_model()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=5e-3)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    save_tiny(tmp_path / "ckpt")
    with pytest.raises(FileExistsError):
        save_tiny(tmp_path / "ckpt")


def test_tampered_and_truncated_weights(tmp_path: Path) -> None:
    save_tiny(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="altered or truncated"):
        load_checkpoint(tmp_path / "ckpt").build_model()
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="altered or truncated"):
        load_checkpoint(tmp_path / "ckpt").build_model()
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "ckpt").build_model()


def edit_config(path: Path, **changes: object) -> None:
    file = path / "config.json"
    meta = json.loads(file.read_text())
    for dotted, value in changes.items():
        node = meta
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    file.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model__depth": 5}, "weights disagree with the checkpoint's model config: missing blocks.4"),
        ({"model__width": 128, "model__heads": 4}, r"shape \("),
        ({"model__dept": 3}, "unknown ViTConfig key"),
        ({"schema_version": 99}, "schema version 99 is not supported"),
        ({"format": "something"}, "not an edgeskip checkpoint"),
        ({"classes": ["a"]}, "1 class names for a 10-class model"),
        ({"weights__file": "../model.safetensors"}, "invalid weights file name"),
    ],
)
def test_config_that_disagrees_is_rejected(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    save_tiny(tmp_path / "ckpt")
    edit_config(tmp_path / "ckpt", **changes)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "ckpt").build_model()


def test_broken_json_and_pointer(tmp_path: Path) -> None:
    save_tiny(tmp_path / "run" / "checkpoints" / "epoch-0001")
    (tmp_path / "run" / "latest.json").write_text(json.dumps({"checkpoint": "checkpoints/epoch-0001"}))
    assert load_checkpoint(tmp_path / "run").meta["epoch"] == 3
    (tmp_path / "run" / "latest.json").write_text(json.dumps({"checkpoint": "../elsewhere"}))
    with pytest.raises(CheckpointError, match="inside"):
        load_checkpoint(tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "epoch-0001" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "run" / "checkpoints" / "epoch-0001")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {_Evil.marker}",))

    marker = ""


def test_a_pickle_in_place_of_weights_is_never_unpickled(tmp_path: Path) -> None:
    save_tiny(tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    _Evil.marker = str(marker)
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(pickle.dumps({"embed.cls_token": _Evil()}))
    edit_config(tmp_path / "ckpt", weights__sha256=sha256_file(weights))  # even with a matching checksum
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(tmp_path / "ckpt").build_model()
    torch.save({"embed.cls_token": _Evil()}, weights)  # torch's own pickle-in-a-zip format, the classic carrier
    edit_config(tmp_path / "ckpt", weights__sha256=sha256_file(weights))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(tmp_path / "ckpt").build_model()
    assert not marker.exists()
