"""Pretrained ViTs adapted into edgeskip's ViT: the same logits as the original, then export and the runtime."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from edgeskip.models.adapters import (
    AdapterError, from_hf, from_timm, load_state_file, resolve_model, to_hf, to_timm_state_dict,
    with_new_head,
)

transformers = pytest.importorskip("transformers", reason="adapting a Hugging Face model needs transformers")


def _hf(cls: str = "ViTForImageClassification", **overrides: object) -> object:
    config = transformers.DeiTConfig if cls.startswith("DeiT") else transformers.ViTConfig
    cfg = config(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96, image_size=32,
                 patch_size=8, num_labels=4, id2label={i: f"defect_{i}" for i in range(4)}, **overrides)
    torch.manual_seed(0)
    return getattr(transformers, cls)(cfg).eval()


@pytest.mark.parametrize("cls", ["ViTForImageClassification", "DeiTForImageClassification",
                                 "DeiTForImageClassificationWithTeacher"])
def test_a_hugging_face_model_keeps_its_logits(cls: str) -> None:
    hf = _hf(cls)
    adapted = from_hf(hf)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        want = hf(pixel_values=x).logits
        assert (adapted.model(x) - want).abs().max().item() <= 1e-5 and adapted.max_abs_diff <= 1e-5
        tokens = adapted.model.embed(x)  # one layer at a time, as edgeskip runs, skips and exports it
        for j in range(3):
            tokens = adapted.model.forward_layer(j, tokens)
        assert (adapted.model.head(tokens) - want).abs().max().item() <= 1e-5
    assert adapted.classes == ("defect_0", "defect_1", "defect_2", "defect_3")
    cfg = adapted.model.config
    assert cfg.distilled == cls.startswith("DeiT") and cfg.num_tokens == 16 + 1 + cfg.distilled
    assert cfg.head_tokens == ("cls+dist" if cls.endswith("Teacher") else "cls")
    assert cfg.param_count() == sum(p.numel() for p in adapted.model.parameters())
    back = to_hf(adapted.model, adapted.classes)  # and back: the same class, the same weights
    assert type(back) is type(hf) and back.config.id2label == hf.config.id2label
    assert all(torch.equal(back.state_dict()[k], v) for k, v in hf.state_dict().items())


def test_a_hugging_face_folder_brings_its_normalisation(tmp_path: Path) -> None:
    hf = _hf()
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    loaded = from_hf(tmp_path / "hf")
    assert loaded.normalization.mean == (0.485, 0.456, 0.406) and loaded.max_abs_diff <= 1e-5
    assert loaded.name == "hf:hf" and from_hf(hf).normalization.mean == (0.5, 0.5, 0.5)  # ViTImageProcessor's
    teacher = _hf("DeiTForImageClassificationWithTeacher")
    teacher.save_pretrained(tmp_path / "deit")
    assert resolve_model(f"hf:{tmp_path / 'deit'}").model.config.head_tokens == "cls+dist"


def test_what_does_not_map_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="activation 'relu' is not supported"):
        from_hf(_hf(hidden_act="relu"))
    with pytest.raises(AdapterError, match="not a Hugging Face model folder"):
        from_hf(tmp_path)
    with pytest.raises(AdapterError, match="is not supported"):
        from_hf(torch.nn.Linear(2, 2))
    swin = transformers.SwinForImageClassification(transformers.SwinConfig(
        embed_dim=16, depths=[1, 1], num_heads=[1, 2], image_size=32, patch_size=4, window_size=4))
    with pytest.raises(AdapterError, match=r"SwinForImageClassification is not supported \(windowed attention"):
        from_hf(swin)
    with pytest.raises(AdapterError, match="names no pretrained model"):
        resolve_model("vit9")


# -- timm -----------------------------------------------------------------------------------------------------
# timm cannot be imported on these machines (its layers import torchvision, which has no working CPU build
# here), so the state-dict path is checked against a functional forward written from timm's VisionTransformer
# source (timm 1.0: _pos_embed, Block.forward, forward_head, VisionTransformerDistilled.forward_head); the
# comparison with timm's own modules runs wherever timm imports.


def _timm_state(depth: int = 3, width: int = 48, mlp: int = 96, patch: int = 8, size: int = 32, classes: int = 5,
                distilled: bool = False, layer_scale: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    prefix = 1 + distilled
    s = {"cls_token": r(1, 1, width), "pos_embed": r(1, (size // patch) ** 2 + prefix, width),
         "patch_embed.proj.weight": r(width, 3, patch, patch), "patch_embed.proj.bias": r(width),
         "norm.weight": 1 + r(width), "norm.bias": r(width), "head.weight": r(classes, width), "head.bias": r(classes)}
    if distilled:
        s |= {"dist_token": r(1, 1, width), "head_dist.weight": r(classes, width), "head_dist.bias": r(classes)}
    for j in range(depth):
        b = f"blocks.{j}"
        s |= {f"{b}.norm1.weight": 1 + r(width), f"{b}.norm1.bias": r(width), f"{b}.attn.qkv.weight": r(3 * width, width),
              f"{b}.attn.qkv.bias": r(3 * width), f"{b}.attn.proj.weight": r(width, width), f"{b}.attn.proj.bias": r(width),
              f"{b}.norm2.weight": 1 + r(width), f"{b}.norm2.bias": r(width), f"{b}.mlp.fc1.weight": r(mlp, width),
              f"{b}.mlp.fc1.bias": r(mlp), f"{b}.mlp.fc2.weight": r(width, mlp), f"{b}.mlp.fc2.bias": r(width)}
        if layer_scale:
            s |= {f"{b}.ls1.gamma": r(width), f"{b}.ls2.gamma": r(width)}
    return s


def _timm_forward(s: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """timm's VisionTransformer(Distilled) forward in eval mode, on its state dict."""
    w = s["cls_token"].shape[-1]
    p = s["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    prefix = [s["cls_token"]] + ([s["dist_token"]] if "dist_token" in s else [])
    t = torch.cat([q.expand(len(x), -1, -1) for q in prefix] + [t], dim=1) + s["pos_embed"]
    depth = len({k.split(".")[1] for k in s if k.startswith("blocks.")})
    for j in range(depth):
        b = f"blocks.{j}."
        h = F.layer_norm(t, (w,), s[b + "norm1.weight"], s[b + "norm1.bias"], eps=1e-6)
        n = t.shape[1]
        qkv = F.linear(h, s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"]).reshape(len(x), n, 3, heads, w // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(len(x), n, w)
        a = F.linear(a, s[b + "attn.proj.weight"], s[b + "attn.proj.bias"])
        t = t + (a * s[b + "ls1.gamma"] if b + "ls1.gamma" in s else a)
        h = F.layer_norm(t, (w,), s[b + "norm2.weight"], s[b + "norm2.bias"], eps=1e-6)
        m = F.linear(F.gelu(F.linear(h, s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"])), s[b + "mlp.fc2.weight"],
                     s[b + "mlp.fc2.bias"])
        t = t + (m * s[b + "ls2.gamma"] if b + "ls2.gamma" in s else m)
    t = F.layer_norm(t, (w,), s["norm.weight"], s["norm.bias"], eps=1e-6)
    logits = F.linear(t[:, 0], s["head.weight"], s["head.bias"])
    if "head_dist.weight" in s:
        logits = (logits + F.linear(t[:, 1], s["head_dist.weight"], s["head_dist.bias"])) / 2
    return logits


@pytest.mark.parametrize("distilled,layer_scale,suffix", [(False, False, ".safetensors"), (True, False, ".pth"),
                                                          (False, True, ".pth")])
def test_a_timm_state_dict_keeps_its_logits(tmp_path: Path, distilled: bool, layer_scale: bool, suffix: str) -> None:
    state = _timm_state(distilled=distilled, layer_scale=layer_scale)
    file = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(file))
    else:  # a training checkpoint, as timm's train.py writes it, from a DDP run
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, file)
    adapted = from_timm("deit_small_patch8_32" if distilled else "vit_tiny_patch8_32", weights=file, heads=4)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (adapted.model(x) - _timm_forward(state, x, heads=4)).abs().max().item()
    assert diff <= 1e-5 and adapted.max_abs_diff is None  # no original object to compare with
    cfg = adapted.model.config
    assert (cfg.depth, cfg.width, cfg.heads, cfg.mlp_hidden, cfg.patch_size, cfg.image_size, cfg.num_classes) == (
        3, 48, 4, 96, 8, 32, 5)
    assert (cfg.distilled, cfg.layer_scale) == (distilled, layer_scale)
    assert cfg.param_count() == sum(p.numel() for p in adapted.model.parameters())
    assert adapted.normalization.mean == ((0.485, 0.456, 0.406) if distilled else (0.5, 0.5, 0.5))
    back = to_timm_state_dict(adapted.model)  # and back to timm's names: the same tensors
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_timm_heads_come_from_the_name(tmp_path: Path) -> None:
    save_file(_timm_state(width=192, mlp=384), str(tmp_path / "w.safetensors"))
    with pytest.raises(AdapterError, match="pass heads=N"):
        from_timm("my_vit", weights=tmp_path / "w.safetensors")
    adapted = from_timm("vit_tiny_patch8_32", weights=tmp_path / "w.safetensors")  # timm's tiny: 3 heads
    assert adapted.model.config.heads == 3 and adapted.name == "timm:vit_tiny_patch8_32"


def test_timm_weights_that_do_not_fit_are_one_clear_error(tmp_path: Path) -> None:
    def adapt(state: dict[str, torch.Tensor], name: str = "vit_small_patch8_32") -> object:
        save_file(state, str(tmp_path / "w.safetensors"))
        return from_timm(name, weights=tmp_path / "w.safetensors", heads=4)

    with pytest.raises(AdapterError, match="global average pooling"):
        adapt({**_timm_state(), "fc_norm.weight": torch.ones(48), "fc_norm.bias": torch.zeros(48)})
    with pytest.raises(AdapterError, match="register tokens"):
        adapt({**_timm_state(), "reg_token": torch.zeros(1, 4, 48)})
    no_cls_pos = _timm_state()
    no_cls_pos["pos_embed"] = no_cls_pos["pos_embed"][:, 1:]
    with pytest.raises(AdapterError, match="no_embed_class"):
        adapt(no_cls_pos)
    odd = _timm_state()
    odd["blocks.1.mlp.fc1.weight"] = torch.zeros(80, 48)
    with pytest.raises(AdapterError, match="do not fit the architecture"):
        adapt(odd)
    with pytest.raises(AdapterError, match="lack head.weight"):
        adapt({k: v for k, v in _timm_state().items() if not k.startswith("head.")})
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(AdapterError, match="not a readable weights file"):
        load_state_file(tmp_path / "junk.pth")
    with pytest.raises(AdapterError, match="not found"):
        load_state_file(tmp_path / "none.safetensors")


def _timm() -> object:
    try:
        import timm
    except Exception as exc:  # ImportError, or torchvision's C++ ops failing to load (as on these machines)
        pytest.skip(f"timm is not importable here ({type(exc).__name__}): its import needs a working torchvision")
    return timm


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
                                  "deit3_small_patch16_224"])
def test_real_timm_models_keep_their_logits(tmp_path: Path, name: str) -> None:
    timm = _timm()
    torch.manual_seed(0)
    original = timm.create_model(name, pretrained=False, img_size=64, num_classes=7).eval()  # type: ignore[attr-defined]
    if name.startswith("deit3"):  # no_embed_class: refused in one line
        with pytest.raises(AdapterError, match="no_embed_class"):
            from_timm(original)
        return
    adapted = from_timm(original)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (adapted.model(x) - original(x)).abs().max().item() <= 1e-5
    save_file(original.state_dict(), str(tmp_path / "w.safetensors"))
    from_file = from_timm(name, weights=tmp_path / "w.safetensors")
    with torch.no_grad():
        assert (from_file.model(x) - original(x)).abs().max().item() <= 1e-5


# -- after adapting ---------------------------------------------------------------------------------------------


def test_a_new_head_keeps_the_backbone() -> None:
    adapted = from_hf(_hf("DeiTForImageClassificationWithTeacher"))
    fresh = with_new_head(adapted.model, 9)
    assert fresh.config.num_classes == 9 and fresh.head.fc.out_features == 9 and fresh.head.fc_dist is not None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.embed(x), adapted.model.embed(x))
        assert torch.equal(fresh.blocks[2](fresh.embed(x)), adapted.model.blocks[2](adapted.model.embed(x)))
    assert math.isclose(float(fresh.head.fc.bias.detach().abs().sum()), 0.0)


@pytest.mark.parametrize("cls", ["ViTForImageClassification", "DeiTForImageClassificationWithTeacher"])
def test_an_adapted_model_exports_and_runs_torch_free(tmp_path: Path, cls: str) -> None:
    from edgeskip.exporters.export import export_bundle
    from edgeskip.exporters.settings import ExportConfig
    from edgeskip.normalization import preprocess
    from edgeskip.runtimes import Runtime
    from edgeskip.train.checkpoint import save_checkpoint

    hf = _hf(cls)
    adapted = from_hf(hf)
    save_checkpoint(tmp_path / "ckpt", adapted.model, model_name=adapted.name, model_config=adapted.model.config,
                    dataset="defects", normalization=adapted.normalization, classes=adapted.classes)
    export_bundle(ExportConfig(model=adapted.name, checkpoint=str(tmp_path / "ckpt"), out=str(tmp_path / "b"),
                               fidelity_images=4))
    rt = Runtime(tmp_path / "b")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        want = hf(pixel_values=torch.from_numpy(preprocess(images, adapted.normalization))).logits.numpy()
    out = rt(images)
    assert np.abs(out.logits - want).max() <= 1e-4 and out.class_names == [adapted.classes[i] for i in want.argmax(1)]


class _Explodes:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('ran')",))


def test_a_malicious_pth_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"cls_token": torch.zeros(1, 1, 4)}, "payload": _Explodes()}, tmp_path / "evil.pth")
    with pytest.raises(AdapterError, match="not a readable weights file"):
        load_state_file(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()
