"""``torchdcn train --freeze-at N --backbone-norm {frozen,train}``: without
``--pretrained-backbone`` the detectors' and DeepLab's backbone trains whole (a random stem with
frozen identity BatchNorm would never learn), with it Detectron's frozen BatchNorm, stem and
conv2; the resolved values go into the checkpoint so ``eval`` rebuilds the same network, and
checkpoints of earlier versions (no such keys) rebuild as they were trained."""

from __future__ import annotations

import pytest
import torch
from cli_args import settings as _settings

from torchdcn import cli
from torchdcn.cli.presets import MODELS, model_from_checkpoint
from torchdcn.models.backbones import resnet18
from torchdcn.nn import FrozenBatchNorm2d

PRESETS = ["faster_rcnn", "mask_rcnn", "rpn_detector", "rfcn", "deeplab"]


def _frozen(model):
    return {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "r18.pth"
    torch.save(resnet18().state_dict(), path)
    return str(path)


@pytest.mark.parametrize("name", PRESETS)
def test_defaults_follow_the_weights(name, weights):
    base = ["train", "--model", name, "--backbone", "resnet18"]
    scratch = MODELS[name].model_config({**_settings(base), "num_classes": 2})
    assert (scratch["frozen_bn"], scratch["freeze_at"]) == (False, 0)
    s = _settings([*base, "--pretrained-backbone", weights])
    pretrained = MODELS[name].model_config({**s, "num_classes": 2})
    assert (pretrained["frozen_bn"], pretrained["freeze_at"]) == (True, 2)
    model = MODELS[name].build(**scratch)
    assert _frozen(model) == set()
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())


def test_flags_override_the_rule(weights):
    base = ["train", "--model", "faster_rcnn", "--backbone", "resnet18"]
    s = _settings([*base, "--freeze-at", "1", "--backbone-norm", "frozen"])
    config = MODELS["faster_rcnn"].model_config({**s, "num_classes": 2})
    assert (config["frozen_bn"], config["freeze_at"]) == (True, 1)
    model = MODELS["faster_rcnn"].build(**config)
    assert _frozen(model) == {"conv1"} and isinstance(model.backbone.bn1, FrozenBatchNorm2d)
    s = _settings([*base, "--pretrained-backbone", weights, "--backbone-norm", "train"])
    config = MODELS["faster_rcnn"].model_config({**s, "num_classes": 2})
    assert (config["frozen_bn"], config["freeze_at"]) == (False, 2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "faster_rcnn", "--freeze-at", "6"], "--freeze-at 6: freeze_at must be"),
        (["--model", "deeplab", "--freeze-at", "-1"], "--freeze-at must be >= 0"),
        (["--model", "rfcn", "--backbone-norm", "sync"], "invalid choice: 'sync'"),
        (["--freeze-at", "1"], "--freeze-at only applies to detectors or segmenters"),
    ],
)
def test_bad_values_exit_2_with_one_line(tmp_path, capsys, argv, message):
    code = cli.main(["train", *argv, "--data-root", str(tmp_path / "nodata")])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err.strip().splitlines()[-1], err


def test_a_checkpoint_of_an_earlier_version_rebuilds_frozen(tmp_path):
    from torchdcn.engine.checkpoint import save_checkpoint

    # earlier versions stored no frozen_bn / freeze_at and built with (True, 2)
    config = {"backbone": "resnet18", "deform": None, "base_channels": 8, "num_classes": 2}
    torch.manual_seed(0)
    old = MODELS["faster_rcnn"].build(**config, frozen_bn=True, freeze_at=2)
    path = tmp_path / "old.pt"
    run_info = {"model": "faster_rcnn", "model_config": config}
    save_checkpoint(path, {"model": old.state_dict(), "run_info": run_info}, fingerprint={})
    model, _, _ = model_from_checkpoint(str(path))
    assert isinstance(model.backbone.bn1, FrozenBatchNorm2d)  # (no parameters)
    assert _frozen(model) == {"conv1", "layer1"}


def test_resuming_a_run_of_an_earlier_version_builds_it_frozen(tmp_path):
    from torchdcn.cli.presets import legacy_backbone_config
    from torchdcn.engine.checkpoint import save_checkpoint

    config = {"backbone": "resnet18", "deform": None, "num_classes": 2}
    new = {**config, "frozen_bn": False, "freeze_at": 0}  # what this version resolves
    old, current = tmp_path / "old.pt", tmp_path / "new.pt"
    save_checkpoint(old, {"run_info": {"model_config": config}}, fingerprint={})
    save_checkpoint(current, {"run_info": {"model_config": new}}, fingerprint={})
    # the stored config is kept (the fingerprint compares it), the build gets the old values
    assert legacy_backbone_config(new, old, {}) == (config, {"frozen_bn": True, "freeze_at": 2})
    assert legacy_backbone_config(new, current, {}) == (new, {})
    assert legacy_backbone_config(new, tmp_path / "absent.pt", {}) == (new, {})
    assert legacy_backbone_config(new, old, {"freeze_at": 0}) == (new, {})  # told explicitly


def test_rpn_detector_checkpoints_of_the_conv4_layout_load_and_resume_as_built(tmp_path):
    """rpn_detector checkpoints without ``rpn_feature`` (before 2026-12-02) had the RPN on
    conv4 and no reduce conv: eval rebuilds that layout, resume builds it and keeps the stored
    config; current ones store ``rpn_feature="conv5"``."""
    from torchdcn.cli.presets import legacy_backbone_config
    from torchdcn.engine.checkpoint import save_checkpoint

    config = {"backbone": "resnet18", "deform": None, "base_channels": 8, "num_classes": 2}
    torch.manual_seed(0)
    old = MODELS["rpn_detector"].build(
        **config, frozen_bn=True, freeze_at=2, rpn_feature="conv4", reduce_channels=None
    )
    path = tmp_path / "old.pt"
    run_info = {"model": "rpn_detector", "model_config": config}
    save_checkpoint(path, {"model": old.state_dict(), "run_info": run_info}, fingerprint={})
    model, _, _ = model_from_checkpoint(str(path))
    assert model.rpn.in_features == ("conv4",) and model.neck is None
    new = MODELS["rpn_detector"].model_config({"model": "rpn_detector", "num_classes": 2})
    assert new["rpn_feature"] == "conv5"
    kept, extras = legacy_backbone_config(new, path, {"model": "rpn_detector"})
    assert "rpn_feature" not in kept
    assert extras == {"frozen_bn": True, "freeze_at": 2, "rpn_feature": "conv4",
                      "reduce_channels": None}  # fmt: skip
    current = tmp_path / "new.pt"
    save_checkpoint(current, {"run_info": {"model_config": new}}, fingerprint={})
    assert legacy_backbone_config(new, current, {"model": "rpn_detector"}) == (new, {})
