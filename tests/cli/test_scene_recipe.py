"""The digit-scenes recipe: trunk pretraining, loading the trunk into every task preset (the
deformable layers start as the pretrained plain ones), fine-tuning and scoring, with the
offsets-zeroed control."""

from __future__ import annotations

import pytest
import torch

from torchdcn.cli.scene_pretrain import load_trunk, pretrain_trunk
from torchdcn.cli.scene_recipe import SCENE_MODELS, SceneRecipe, build_scene_model
from torchdcn.cli.scene_train import evaluate_scenes, train_scene_model
from torchdcn.data import generate_digit_scenes

pytest.importorskip("pycocotools")


needs_data = pytest.mark.needs_mnist5k
TINY = {"pretrain_steps": 2, "steps": 3, "warmup_steps": 1, "batch_size": 2, "base_channels": 8}
V2 = {"stages": [3, 4, 5], "modulated": True}
V1 = {"stages": [4, 5], "last_n": 6}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    generate_digit_scenes(out, {"train": 4, "val": 2, "test_heldout": 2}, seed=3)
    return out


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    return pretrain_trunk(SceneRecipe(**TINY), 0, tmp_path_factory.mktemp("trunks"))


@pytest.mark.parametrize(
    "bad",
    [
        {"model": "yolo"},
        {"steps": 0},
        {"base_channels": True},
        {"offset_lr_mult": -1.0},
        {"pretrain_steps": -1},
    ],
)
def test_recipe_refuses_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SceneRecipe(**bad)


@needs_data
def test_trunk_is_cached(trunk, tmp_path):
    again = pretrain_trunk(SceneRecipe(**TINY), 0, trunk.parent)
    assert again == trunk
    other = SceneRecipe(**{**TINY, "pretrain_steps": 3})
    assert other.trunk_key() != SceneRecipe(**TINY).trunk_key()


@needs_data
@pytest.mark.parametrize("model", SCENE_MODELS)
def test_deformable_presets_start_as_the_pretrained_trunk(trunk, model):
    """Every preset at base width 8 loads the trunk; with zero-initialised offsets the v1
    backbone computes exactly what the plain one does (the papers' starting point), and so does
    v2 once its 0.5 masks are compensated (half of it without)."""
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    feats = {}
    for name, deform, compensate in (
        ("plain", None, False), ("v1", V1, False), ("v2", V2, True), ("v2 raw", V2, False)
    ):  # fmt: skip
        torch.manual_seed(0)
        net = build_scene_model(SceneRecipe(**TINY, model=model, deform=deform))
        missing = load_trunk(net.backbone, trunk, compensate)
        assert all("conv_offset" in k for k in missing)
        assert bool(missing) == (deform is not None)
        feats[name] = net.backbone.eval()(x)
    for level in feats["plain"]:
        torch.testing.assert_close(feats["v1"][level], feats["plain"][level])
        torch.testing.assert_close(feats["v2"][level], feats["plain"][level])
    assert not torch.allclose(feats["v2 raw"]["conv5"], feats["plain"]["conv5"])
    state = torch.load(trunk, weights_only=True)
    torch.testing.assert_close(net.backbone.conv1.weight, state["conv1.weight"])


@needs_data
def test_load_trunk_refuses_another_width(trunk):
    net = build_scene_model(SceneRecipe(**{**TINY, "base_channels": 16}))
    with pytest.raises(ValueError, match="shape"):
        load_trunk(net.backbone, trunk)


@needs_data
def test_train_and_score_with_the_zeroed_control(scenes, trunk):
    recipe = SceneRecipe(**TINY, deform=V2, roi_pool="mdeform", offset_warmup_steps=2)
    model, info = train_scene_model(recipe, 0, scenes, trunk)
    assert info["steps"] == 3 and info["train_seconds"] > 0 and not model.training
    scores = evaluate_scenes(model, scenes, "val")
    assert {"AP", "AP50", "mAP@0.7", "APs", "APm", "APl"} <= set(scores)
    assert all(-1.0 <= v <= 1.0 for v in scores.values())
    zeroed = evaluate_scenes(model, scenes, "val", zero_offsets=True)
    assert set(zeroed) == set(scores)
    # the offsets stayed frozen for 2 of 3 steps, then moved: the last step changed them
    offsets = [m.conv_offset.weight for m in model.backbone.deformable_layers().values()]
    assert any(o.abs().sum() > 0 for o in offsets)
