"""load_pretrained: torchvision/timm-format checkpoints on disk into plain and deformable ResNets.

The checkpoints are written by the tests from our own plain models: their keys are torchvision's
(checked in test_resnet.py), which timm's ResNets share.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from torch import nn

from torchdcn.models import load_pretrained, resnet18, resnet50
from torchdcn.models.backbones.pretrained import read_state_dict
from torchdcn.nn import FrozenBatchNorm2d


def _randomised(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.num_batches_tracked.fill_(1234)
    return model


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory):
    """A torchvision-format ResNet-18 checkpoint (plain state dict) and the model it came from."""
    torch.manual_seed(7)
    plain = _randomised(resnet18()).eval()
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
    torch.save(plain.state_dict(), path)
    return path, plain


def test_round_trip_into_deformable_model_gives_the_pretrained_function(r18_file):
    path, plain = r18_file
    model = resnet18(deform="v1", output_stride=32)
    report = load_pretrained(model, path)
    assert report.ok and len(report.loaded) == len(plain.state_dict())
    assert len(report.offsets_kept) == 6 and all(".conv_offset." in k for k in report.offsets_kept)
    assert "offset-predictor" in str(report)
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    for layer in model.deformable_layers().values():
        assert layer.conv_offset.weight.abs().sum() == 0
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    model, plain64 = model.double().eval(), resnet18().double().eval()
    plain64.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain64(x), rtol=1e-10, atol=1e-10)


def test_resnet50_checkpoint_into_v2_backbone_skips_the_classifier(tmp_path):
    torch.manual_seed(0)
    state = resnet50().state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    model = resnet50(deform="v2", features_only=True)
    report = load_pretrained(model, path)
    assert report.skipped_head == ["fc.weight", "fc.bias"]
    assert len(report.offsets_kept) == 2 * 13 and report.ok
    assert torch.equal(model.layer4[0].conv2.weight, state["layer4.0.conv2.weight"])
    assert torch.equal(
        model.layer2[0].downsample[1].running_var, state["layer2.0.downsample.1.running_var"]
    )


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module_prefix", "safetensors"])
def test_checkpoint_wrappers(r18_file, tmp_path, wrap):
    _, plain = r18_file
    state = plain.state_dict()
    path = tmp_path / "ckpt.pth"
    if wrap == "module_prefix":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif wrap == "safetensors":
        path = tmp_path / "model.safetensors"
        _write_safetensors(state, path)
    else:
        torch.save({wrap: state, "epoch": 3, "arch": "resnet18"}, path)
    model = resnet18(deform="v2")
    report = load_pretrained(model, path)
    assert report.ok
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.bn1.running_mean, state["bn1.running_mean"])


def _write_safetensors(state: dict[str, torch.Tensor], path) -> None:
    names = {torch.float32: "F32", torch.int64: "I64"}
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for key, value in state.items():
        data = value.contiguous().numpy().tobytes()
        header[key] = {
            "dtype": names[value.dtype],
            "shape": list(value.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


def test_frozen_bn_model_loads_batch_norm_checkpoint(r18_file):
    path, plain = r18_file
    model = resnet18(norm_layer=FrozenBatchNorm2d)
    assert load_pretrained(model, path).ok  # num_batches_tracked is ignored
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain(x), rtol=1e-4, atol=1e-5)


def test_shape_mismatch_is_reported_and_strict_leaves_model_untouched(r18_file):
    path, _ = r18_file
    model = resnet18(num_classes=10)
    before = model.conv1.weight.clone()
    with pytest.raises(
        ValueError, match=r"fc\.weight: \(1000, 512\) in the checkpoint vs \(10, 512\)"
    ):
        load_pretrained(model, path)
    assert torch.equal(model.conv1.weight, before)
    report = load_pretrained(model, path, strict=False)
    assert not report.ok and len(report.mismatched) == 2
    assert not torch.equal(model.conv1.weight, before)


def test_missing_and_unexpected_keys_are_named(r18_file, tmp_path):
    _, plain = r18_file
    state = dict(plain.state_dict())
    del state["layer2.1.conv1.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"layer2\.1\.conv1\.weight") as info:
        load_pretrained(resnet18(), path)
    assert "layer5.0.conv1.weight" in str(info.value)
    assert "strict=False" in str(info.value)
    report = load_pretrained(resnet18(), path, strict=False)
    assert report.missing == ["layer2.1.conv1.weight"]
    assert report.unexpected == ["layer5.0.conv1.weight"]


def test_wrong_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="local files only"):
        load_pretrained(resnet18(), tmp_path / "absent.pth")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        read_state_dict(text)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="not a state dict"):
        read_state_dict(listed)
    mixed = tmp_path / "mixed.pth"
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, mixed)
    with pytest.raises(ValueError, match="'epoch'"):
        read_state_dict(mixed)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="safetensors"):
        read_state_dict(broken)


def _detector_state(backbone: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A detector-like state dict: the backbone under ``prefix`` and some head tensors."""
    state = {f"{prefix}{k}": v for k, v in backbone.items()}
    state["neck.lateral_convs.0.conv.weight"] = torch.ones(256, 512, 1, 1)
    state["rpn_head.rpn_cls.weight"] = torch.ones(3, 256, 1, 1)
    state["roi_head.bbox_head.fc_cls.weight"] = torch.ones(81, 1024)
    state["roi_head.bbox_head.fc_cls.bias"] = torch.ones(81)
    return state


@pytest.mark.parametrize(
    ("prefix", "outer"),
    [
        ("backbone.", ""),  # mmdetection
        ("backbone.", "module."),  # mmdetection trained with DataParallel / DDP
        ("backbone.body.", ""),  # torchvision's detection models (plus backbone.fpn.*)
    ],
)
def test_detector_checkpoint_gives_its_backbone_and_reports_the_heads(
    r18_file, tmp_path, prefix, outer
):
    _, plain = r18_file
    backbone = {k: v for k, v in plain.state_dict().items() if not k.startswith("fc.")}
    state = _detector_state(backbone, prefix)
    if prefix == "backbone.body.":
        state["backbone.fpn.inner_blocks.0.0.weight"] = torch.ones(256, 64, 1, 1)
    state = {f"{outer}{k}": v for k, v in state.items()}
    path = tmp_path / "detector.pth"
    torch.save({"meta": {"epoch": 12}, "state_dict": state}, path)
    model = resnet18(deform="v1", features_only=True)
    report = load_pretrained(model, path)  # strict: the heads do not make it fail
    assert report.ok and report.backbone_prefix == prefix
    assert sorted(report.loaded) == sorted(backbone)
    heads = {k for k in state if not k.startswith(f"{outer}{prefix}")}
    assert {f"{outer}{k}" for k in report.skipped_detector} == heads
    assert "roi_head.*" in str(report) and "neck.*" in str(report)
    for key, value in backbone.items():
        assert torch.equal(model.state_dict()[key], value)


def test_model_with_backbone_keys_of_its_own_keeps_the_prefix(r18_file, tmp_path):
    _, plain = r18_file

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = resnet18(num_classes=None)
            self.head = nn.Linear(512, 3)

    source = Detector()
    source.backbone.load_state_dict(
        {k: v for k, v in plain.state_dict().items() if not k.startswith("fc.")}
    )
    path = tmp_path / "detector.pth"
    torch.save(source.state_dict(), path)
    target = Detector()
    report = load_pretrained(target, path)
    assert report.ok and report.backbone_prefix == "" and report.skipped_detector == []
    assert torch.equal(target.backbone.layer4[1].conv2.weight, plain.layer4[1].conv2.weight)
    assert torch.equal(target.head.weight, source.head.weight)
