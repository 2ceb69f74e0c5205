"""The model registry, parameter counts and the per-layer seams."""

from __future__ import annotations

import pytest
import torch

from edgeskip.config import ViTConfig, from_dict, to_dict
from edgeskip.errors import ConfigError, UnknownNameError
from edgeskip.models import create, list_models
from edgeskip.variants import model_config

# Exact counts (the thesis gives "about 6M / 9M / 14M" for vit7/vit10/vit16).
EXPECTED_PARAMS = {
    "vit7": 6_268_810,
    "vit9": 2_697_610,
    "vit10": 8_934_538,
    "vit16": 14_265_994,
    "vit-tiny": 142_026,
    "vit-digits": 203_082,
    "vit-digits-wide": 1_788_874,
}


def test_every_registered_model_has_an_expected_count() -> None:
    assert set(list_models()) == set(EXPECTED_PARAMS)
    assert list_models()[:4] == ["vit7", "vit9", "vit10", "vit16"]


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_parameter_count(name: str) -> None:
    model = create(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == EXPECTED_PARAMS[name] == model.config.param_count()


def test_thesis_shapes() -> None:
    for name, depth in (("vit7", 7), ("vit10", 10), ("vit16", 16)):
        cfg = model_config(name)
        assert (cfg.depth, cfg.width, cfg.heads, cfg.mlp_hidden, cfg.patch_size) == (depth, 384, 12, 384, 4)
    vit9 = model_config("vit9")
    assert (vit9.depth, vit9.width, vit9.heads, vit9.head_dim, vit9.mlp_hidden) == (9, 192, 12, 16, 384)
    assert model_config("vit9", image_size=64).patch_size == 8
    assert model_config("vit9", image_size=64).num_tokens == vit9.num_tokens


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_layer_by_layer_equals_whole_forward(name: str) -> None:
    torch.manual_seed(0)
    model = create(name).eval()
    cfg = model.config
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        whole = model(x)
        tokens = model.embed(x)
        assert tokens.shape == (3, cfg.num_tokens, cfg.width)
        for i in range(model.depth):
            tokens = model.forward_layer(i, tokens)
        by_layer = model.head(tokens)
    assert whole.shape == (3, cfg.num_classes)
    torch.testing.assert_close(by_layer, whole, rtol=0, atol=0)


def test_drop_path_only_in_training() -> None:
    torch.manual_seed(0)
    model = create("vit-tiny", drop_path=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    assert model.blocks[0].drop_path.p == 0.0 and model.blocks[-1].drop_path.p == pytest.approx(0.5)


def test_forward_layer_rejects_out_of_range() -> None:
    model = create("vit-tiny")
    with pytest.raises(IndexError, match="outside a 4-layer model"):
        model.forward_layer(4, torch.zeros(1, 65, 64))


def test_unknown_model_lists_the_registered_ones() -> None:
    with pytest.raises(UnknownNameError, match="unknown model 'vit11'; available: vit7, vit9"):
        create("vit11")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"width": 100}, "not divisible by heads"),
        ({"image_size": 30}, "cannot scale its patch"),
        ({"depth": 0}, "depth must be a positive integer"),
        ({"num_classes": 1}, "num_classes"),
        ({"drop_path": 1.5}, "drop_path"),
        ({"colour": "red"}, "unknown model override"),
    ],
)
def test_bad_overrides_are_clear(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        model_config("vit9", **overrides)


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = model_config("vit10")
    assert from_dict(ViTConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown ViTConfig key"):
        from_dict(ViTConfig, {**to_dict(cfg), "dept": 3})
    with pytest.raises(ConfigError, match="expects a JSON object"):
        from_dict(ViTConfig, [1, 2])  # type: ignore[arg-type]


def test_attention_matches_torch_sdpa() -> None:
    import torch.nn.functional as F

    torch.manual_seed(0)
    attn = create("vit9").blocks[0].attn.eval()
    x = torch.randn(2, 65, 192)
    b, n, d = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.heads, d // attn.heads).permute(2, 0, 3, 1, 4)
    reference = attn.proj(F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, n, d))
    with torch.no_grad():
        torch.testing.assert_close(attn(x), reference, rtol=1e-5, atol=1e-6)
