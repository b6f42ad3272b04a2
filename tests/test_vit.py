"""The Vision Transformer family: shapes, patch-size checks, attention maps, position embeddings, learning.

The registry-wide contract (gradients, config round trip, save/load, reset_head) is checked for
``vit`` in test_models.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_one_line_error, quick_train, run_dirs, write_yaml

import layerwise
from layerwise import FAMILIES, ModelError
from layerwise.data.spec import DataSpec
from layerwise.models import build_model
from layerwise.models.vit import resolve_patch_size

TINY = {"family": "vit", "width": 32, "heads": 4, "layers": 2, "mlp_ratio": 2}


def _spec(shape: tuple[int, int, int], classes: int = 3) -> DataSpec:
    return DataSpec(kind="image", input_shape=shape, target="class", num_classes=classes)


def _build(shape: tuple[int, int, int], **overrides):
    torch.manual_seed(0)
    config = FAMILIES.get("vit").Config.model_validate({**TINY, **overrides})
    return build_model(config, _spec(shape))


@pytest.mark.parametrize("shape, patch, pooling, tokens", [
    ((1, 8, 8), 2, "cls", 17),
    ((1, 8, 8), 4, "mean", 4),
    ((3, 12, 10), 2, "cls", 31),
    ((3, 16, 8), 4, "mean", 8),
])
def test_shapes(shape, patch, pooling, tokens):
    model = _build(shape, patch_size=patch, pooling=pooling)
    x = torch.randn(5, *shape)
    assert model.forward_features(x).shape == (5, 32)
    assert model(x).shape == (5, 3)
    assert model.embed(x).shape == (5, tokens, 32)
    assert (model.cls_token is not None) == (pooling == "cls")


@pytest.mark.parametrize("height, width, expected", [(8, 8, 4), (12, 10, 2), (28, 28, 4), (7, 5, 1)])
def test_auto_patch_size_divides_both_sides(height, width, expected):
    assert resolve_patch_size("auto", height, width) == expected
    assert _build((1, height, width)).patch_size == expected


def test_patch_size_that_does_not_divide_is_refused_at_build():
    with pytest.raises(ModelError) as info:
        _build((3, 12, 10), patch_size=3)
    message = str(info.value)
    assert "\n" not in message
    assert message == "model.patch_size: 3 does not divide the image size 12x10; valid choices: 1, 2 or 'auto'"


def test_width_not_divisible_by_heads_is_refused():
    with pytest.raises(ModelError, match=r"model.width: 30 must be divisible by model.heads \(4\)"):
        _build((1, 8, 8), width=30)


def test_bad_patch_size_through_the_cli(run_cli, tmp_path):
    cfg = {"data": {"name": "digits"}, "model": {**TINY, "patch_size": 3}, "train": quick_train(epochs=1)}
    write_yaml(tmp_path / "bad.yaml", cfg)
    code, _, err = run_cli("train", "bad.yaml", "--runs-dir", "runs")
    assert_one_line_error(code, err, "model.patch_size", "3", "8x8", "valid choices: 1, 2, 4, 8")
    assert not run_dirs(tmp_path / "runs")


@pytest.mark.parametrize("pooling, tokens", [("cls", 17), ("mean", 16)])
def test_attention_maps_are_probabilities_and_match_forward(pooling, tokens):
    model = _build((1, 8, 8), patch_size=2, pooling=pooling).eval()
    x = torch.randn(3, 1, 8, 8)
    maps = model.attention_maps(x)
    assert len(maps) == 2
    for att in maps:
        assert att.shape == (3, 4, tokens, tokens)  # (B, heads, T, T)
        assert (att >= 0).all()
        assert torch.allclose(att.sum(-1), torch.ones(3, 4, tokens), atol=1e-5)
    # the explicit path computes the same tokens as the fused scaled_dot_product_attention one
    with torch.no_grad():
        h = model.embed(x)
        for block in model.blocks:
            h, _ = block.forward_explicit(h)
        assert torch.allclose(model.pool(h), model.forward_features(x), atol=1e-5)


def _shuffle_patches(x: torch.Tensor, patch: int, order: torch.Tensor) -> torch.Tensor:
    """Move whole ``patch`` x ``patch`` tiles of ``x`` (B, C, H, W) to new places on the grid."""
    B, C, H, W = x.shape
    gh, gw = H // patch, W // patch
    tiles = x.reshape(B, C, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C, patch, patch)
    tiles = tiles[:, order]
    return tiles.reshape(B, gh, gw, C, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


def test_position_embeddings_make_the_model_sensitive_to_patch_order():
    model = _build((1, 8, 8), patch_size=2, pooling="mean").eval()
    x = torch.randn(4, 1, 8, 8)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    shuffled = _shuffle_patches(x, 2, order)
    assert not torch.equal(shuffled, x)
    with torch.no_grad():
        assert not torch.allclose(model(shuffled), model(x), atol=1e-4)
        # without position embeddings, attention and mean pooling see a set: the order is lost
        model.pos_embed.zero_()
        assert torch.allclose(model(shuffled), model(x), atol=1e-5)


def test_a_tiny_vit_learns_digits(tmp_path):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    # 4x4 patches: 4 tokens + CLS learn in a few seconds (2x2 patches need many more epochs)
    cfg = {"name": "vit-digits", "data": {"name": "digits", "limit": 500},
           "model": {**TINY, "patch_size": 4},
           "train": quick_train(epochs=10, lr=0.005, scheduler={"name": "warmup_cosine", "warmup_fraction": 0.1})}
    run = layerwise.train(cfg, runs_dir=tmp_path, quiet=True)
    assert run.config.model.family == "vit"
    assert run.evaluate()["accuracy"] > 0.6  # chance is 0.1; about 0.89 with seed 0
