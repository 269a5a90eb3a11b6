"""DCN checkpoints of mmdetection/mmcv and detectron2 into torchdcn ResNets.

Each test writes a checkpoint in the toolkit's own key layout (names generated here from the
toolkit's documented module tree, not from torchdcn's), runs an independent re-implementation of
that toolkit's ResNet on it (its offset/mask channel split, ``chunk(3)`` then ``cat`` of the first
two chunks; stride placement; dilation), with deformable sampling done by ``grid_sample`` (offset
channel ``2k`` is ``dy``, ``2k + 1`` is ``dx`` as the toolkits' kernels read them), and checks that
``load_pretrained(..., source=...)`` gives a torchdcn model computing the same four feature maps.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from torchdcn.models import load_pretrained
from torchdcn.models.backbones import (
    DeformConfig,
    convert_state_dict,
    deform_from_checkpoint,
    deform_from_detectron2,
    deform_from_mmdet,
    stride_in_1x1,
)
from torchdcn.models.backbones.detectron2_weights import read_pickled_arrays
from torchdcn.models.backbones.pretrained import read_state_dict
from torchdcn.models.backbones.resnet import BasicBlock, Bottleneck, ResNet

LAYERS = (1, 2, 2, 2)
# conv3: v1 with 2 offset groups; conv4: v2 with 2 offset groups; conv5: v2
DCN = {3: (False, 2), 4: (True, 2), 5: (True, 1)}
CONFIGS = tuple(
    DeformConfig(stages=(s,), modulated=m, offset_groups=g) for s, (m, g) in DCN.items()
)

# where each toolkit keeps each tensor (from their module trees: mmdetection's ResNet with mmcv
# DCN layers, detectron2's ResNet with DeformBottleneckBlock)
MMDET = {
    "stem_conv": "conv1.weight",
    "stem_norm": "bn1.",
    "block": "layer{layer}.{block}.",
    "conv": "conv{i}.weight",
    "norm": "bn{i}.",
    "shortcut_conv": "downsample.0.weight",
    "shortcut_norm": "downsample.1.",
    "offset": "conv2.conv_offset.",
}
DETECTRON2 = {
    "stem_conv": "stem.conv1.weight",
    "stem_norm": "stem.conv1.norm.",
    "block": "res{stage}.{block}.",
    "conv": "conv{i}.weight",
    "norm": "conv{i}.norm.",
    "shortcut_conv": "shortcut.weight",
    "shortcut_norm": "shortcut.norm.",
    "offset": "conv2_offset.",
}


def _block_prefix(names, stage, block):
    return names["block"].format(layer=stage - 1, stage=stage, block=block)


def _norm(gen, prefix, c):
    return {
        prefix + "weight": 0.5 + 0.5 * torch.rand(c, generator=gen, dtype=torch.float64),
        prefix + "bias": 0.1 * torch.randn(c, generator=gen, dtype=torch.float64),
        prefix + "running_mean": 0.1 * torch.randn(c, generator=gen, dtype=torch.float64),
        prefix + "running_var": 0.5 + torch.rand(c, generator=gen, dtype=torch.float64),
    }


def _conv(gen, c_out, c_in, k):
    return (
        torch.randn(c_out, c_in, k, k, generator=gen, dtype=torch.float64)
        * (2.0 / (c_in * k * k)) ** 0.5
    )


def toolkit_state(names, dcn=DCN, layers=LAYERS, seed=0):
    """A ResNet-50-style backbone's state dict in a toolkit's names; offsets big enough that the
    sampling leaves the grid (a few cells), masks away from 0.5."""
    gen = torch.Generator().manual_seed(seed)
    state = {names["stem_conv"]: _conv(gen, 64, 3, 7), **_norm(gen, names["stem_norm"], 64)}
    c_in = 64
    for stage, planes, n in zip((2, 3, 4, 5), (64, 128, 256, 512), layers):
        for b in range(n):
            p = _block_prefix(names, stage, b)
            for i, (co, ci, k) in enumerate(
                ((planes, c_in, 1), (planes, planes, 3), (4 * planes, planes, 1)), start=1
            ):
                state[p + names["conv"].format(i=i)] = _conv(gen, co, ci, k)
                state.update(_norm(gen, p + names["norm"].format(i=i), co))
            if b == 0:
                state[p + names["shortcut_conv"]] = _conv(gen, 4 * planes, c_in, 1)
                state.update(_norm(gen, p + names["shortcut_norm"], 4 * planes))
            if stage in dcn:
                modulated, groups = dcn[stage]
                channels = (3 if modulated else 2) * groups * 9
                state[p + names["offset"] + "weight"] = 0.03 * torch.randn(
                    channels, planes, 3, 3, generator=gen, dtype=torch.float64
                )
                state[p + names["offset"] + "bias"] = (
                    2 * torch.rand(channels, generator=gen, dtype=torch.float64) - 1
                )
            c_in = 4 * planes
    return state


# ---------------------------------------------------------------------------------------------
# The toolkits' computation, re-implemented from their documented behaviour


def deform_sample_conv(x, offset, mask, weight, stride, pad, dil):
    """Deformable conv by ``grid_sample``: offset channel ``g*2K + 2k`` is dy, ``+1`` dx; mask
    channel ``g*K + k``; zero outside the map (``align_corners=True`` puts pixel i at i)."""
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    taps = kh * kw
    groups = offset.shape[1] // (2 * taps)
    ho, wo = offset.shape[-2:]
    base_y = (torch.arange(ho, dtype=x.dtype) * stride - pad)[:, None]
    base_x = (torch.arange(wo, dtype=x.dtype) * stride - pad)[None, :]
    cols = x.new_zeros(n, c, taps, ho, wo)
    per = c // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                y = base_y + i * dil + offset[:, g * 2 * taps + 2 * k]
                xx = base_x + j * dil + offset[:, g * 2 * taps + 2 * k + 1]
                grid = torch.stack((2 * xx / (w - 1) - 1, 2 * y / (h - 1) - 1), dim=-1)
                s = F.grid_sample(x[:, g * per : (g + 1) * per], grid, align_corners=True)
                if mask is not None:
                    s = s * mask[:, g * taps + k].unsqueeze(1)
                cols[:, g * per : (g + 1) * per, k] = s
    return torch.einsum("nckhw,ock->nohw", cols, weight.reshape(c_out, c, taps))


def _bn(state, prefix, x):
    return F.batch_norm(
        x, state[prefix + "running_mean"], state[prefix + "running_var"],
        state[prefix + "weight"], state[prefix + "bias"], training=False, eps=1e-5,
    )  # fmt: skip


def toolkit_forward(state, names, x, dcn=DCN, stride_in_1x1=False, res5_dilation=1):
    """The four stage maps of the toolkit's ResNet (``LAYERS`` blocks): mmdetection style
    'pytorch' / detectron2 ``STRIDE_IN_1X1`` and ``RES5_DILATION`` as asked; ``dcn`` says
    which stages are modulated, as the toolkit's config does."""
    h = F.relu(_bn(state, names["stem_norm"], F.conv2d(x, state[names["stem_conv"]], None, 2, 3)))
    h = F.max_pool2d(h, 3, 2, 1)
    outs = []
    for stage, n in zip((2, 3, 4, 5), LAYERS):
        dil = res5_dilation if stage == 5 else 1
        first_stride = 1 if stage == 2 or dil > 1 else 2
        for b in range(n):
            p = _block_prefix(names, stage, b)
            s = first_stride if b == 0 else 1
            s1, s3 = (s, 1) if stride_in_1x1 else (1, s)
            conv = {i: state[p + names["conv"].format(i=i)] for i in (1, 2, 3)}
            norm = {i: p + names["norm"].format(i=i) for i in (1, 2, 3)}
            out = F.relu(_bn(state, norm[1], F.conv2d(h, conv[1], None, s1)))
            off_key = p + names["offset"]
            if off_key + "weight" in state:
                pred = F.conv2d(
                    out, state[off_key + "weight"], state[off_key + "bias"], s3, dil, dil
                )
                if dcn[stage][0]:
                    o1, o2, m = torch.chunk(pred, 3, dim=1)  # the toolkits' split, verbatim
                    offset, mask = torch.cat((o1, o2), dim=1), m.sigmoid()
                else:
                    offset, mask = pred, None
                out = deform_sample_conv(out, offset, mask, conv[2], s3, dil, dil)
            else:
                out = F.conv2d(out, conv[2], None, s3, dil, dil)
            out = F.relu(_bn(state, norm[2], out))
            out = _bn(state, norm[3], F.conv2d(out, conv[3]))
            if b == 0:
                short = F.conv2d(h, state[p + names["shortcut_conv"]], None, s)
                short = _bn(state, p + names["shortcut_norm"], short)
            else:
                short = h
            h = F.relu(out + short)
        outs.append(h)
    return outs


def _model(configs=CONFIGS, output_stride=32):
    return ResNet(
        Bottleneck, LAYERS, deform=configs, output_stride=output_stride, features_only=True
    ).double()


def _check_same_function(model, reference_maps, x):
    with torch.no_grad():
        ours = list(model.eval()(x).values())
    for a, b in zip(ours, reference_maps, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# mmdetection / mmcv


def test_mmdet_detector_checkpoint_reproduces_mmdet_resnet(tmp_path):
    state = toolkit_state(MMDET)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference = toolkit_forward(state, MMDET, x)
    checkpoint = {
        "meta": {"mmdet_version": "3.3.0", "epoch": 12},
        "state_dict": {
            **{"backbone." + k: v for k, v in state.items()},
            "neck.lateral_convs.0.conv.weight": torch.randn(256, 256, 1, 1),
            "rpn_head.rpn_conv.weight": torch.randn(256, 256, 3, 3),
        },
    }
    torch.save(checkpoint, tmp_path / "mask_rcnn_r50_dcn.pth")
    model = _model()
    report = load_pretrained(model, tmp_path / "mask_rcnn_r50_dcn.pth", source="mmdet")
    assert report.ok and report.backbone_prefix == "backbone."
    assert len(report.loaded) == len(state) and not report.offsets_kept
    assert sorted(report.skipped_detector) == ["neck.lateral_convs.0.conv.weight",
                                               "rpn_head.rpn_conv.weight"]  # fmt: skip
    _check_same_function(model, reference, x)


def test_mmdet_legacy_conv2_offset_key_and_inferred_config(tmp_path):
    """mmdetection 1.x kept the predictor at ``conv2_offset``; the DCNv2 c3-c5 layout is read
    back from the checkpoint (one offset group: 27 channels, v2 only)."""
    dcn = {3: (True, 1), 4: (True, 1), 5: (True, 1)}
    state = toolkit_state(MMDET, dcn=dcn, seed=4)
    legacy = {k.replace("conv2.conv_offset.", "conv2_offset."): v for k, v in state.items()}
    assert any("conv2_offset" in k for k in legacy)
    torch.save({"state_dict": legacy}, tmp_path / "old.pth")
    converted = convert_state_dict(read_state_dict(tmp_path / "old.pth"), "mmdet")
    configs = deform_from_checkpoint(converted)
    assert configs == tuple(DeformConfig(stages=(s,), modulated=True) for s in (3, 4, 5))
    model = _model(configs)
    assert load_pretrained(model, tmp_path / "old.pth", source="mmdet").ok
    x = torch.randn(1, 3, 48, 64, dtype=torch.float64)
    _check_same_function(model, toolkit_forward(state, MMDET, x, dcn), x)


def test_deform_from_mmdet_config():
    got = deform_from_mmdet(dict(type="DCNv2", deform_groups=4, fallback_on_stride=False),
                            (False, True, True, True))  # fmt: skip
    assert got == (DeformConfig(stages=(3, 4, 5), modulated=True, offset_groups=4),)
    assert deform_from_mmdet(dict(type="DCN", deformable_groups=2), (0, 0, 0, 1)) == (
        DeformConfig(stages=(5,), modulated=False, offset_groups=2),
    )
    assert deform_from_mmdet(None, (True,) * 4) == ()
    with pytest.raises(ValueError, match=r"type must be 'DCN'.*got 'DCNv3'"):
        deform_from_mmdet(dict(type="DCNv3"), (0, 1, 1, 1))
    with pytest.raises(ValueError, match="4 flags"):
        deform_from_mmdet(dict(type="DCN"), (0, 1, 1))


def test_mmdet_deep_stem_is_refused():
    with pytest.raises(ValueError, match=r"deep stem.*ResNetV1d"):
        convert_state_dict({"backbone.stem.0.weight": torch.zeros(32, 3, 3, 3)}, "mmdet")


# ---------------------------------------------------------------------------------------------
# detectron2


@pytest.mark.parametrize("fmt", ["pth", "pkl"])
def test_detectron2_fpn_checkpoint_reproduces_detectron2_resnet(tmp_path, fmt):
    """detectron2's defaults: stride in the 1x1 conv, here with RES5_DILATION=2 (stride 16)."""
    state = toolkit_state(DETECTRON2, seed=2)
    x = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    reference = toolkit_forward(state, DETECTRON2, x, stride_in_1x1=True, res5_dilation=2)
    model_state = {
        **{"backbone.bottom_up." + k: v for k, v in state.items()},
        "backbone.fpn_lateral2.weight": torch.randn(256, 256, 1, 1, dtype=torch.float64),
        "roi_heads.box_head.fc1.weight": torch.randn(8, 8, dtype=torch.float64),
    }
    path = tmp_path / f"model_final.{fmt}"
    if fmt == "pth":
        torch.save({"model": model_state, "iteration": 89999}, path)
    else:  # the model zoo's format: a pickled dict of NumPy arrays
        with open(path, "wb") as f:
            arrays = {k: v.numpy() for k, v in model_state.items()}
            pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)
    model = stride_in_1x1(_model(output_stride=16))
    report = load_pretrained(model, path, source="detectron2")
    assert report.ok and report.backbone_prefix == "backbone.body."
    assert len(report.loaded) == len(state)
    assert sorted(report.skipped_detector) == ["backbone.fpn_lateral2.weight",
                                               "roi_heads.box_head.fc1.weight"]  # fmt: skip
    _check_same_function(model, reference, x)
    # without moving the strides the same weights compute something else
    plain_stride = _model(output_stride=16)
    load_pretrained(plain_stride, path, source="detectron2")
    with torch.no_grad():
        assert not torch.allclose(plain_stride.eval()(x)["conv3"], reference[1], atol=1e-3)


def test_detectron2_c4_checkpoint_takes_res5_from_the_roi_heads(tmp_path):
    state = toolkit_state(DETECTRON2, seed=3)
    ckpt = {
        ("roi_heads." if k.startswith("res5.") else "backbone.") + k: v for k, v in state.items()
    }
    ckpt["roi_heads.box_predictor.cls_score.weight"] = torch.randn(81, 2048)
    torch.save({"model": ckpt}, tmp_path / "c4.pth")
    model = stride_in_1x1(_model())
    report = load_pretrained(model, tmp_path / "c4.pth", source="detectron2")
    assert report.ok and report.skipped_detector == ["roi_heads.box_predictor.cls_score.weight"]
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    _check_same_function(model, toolkit_forward(state, DETECTRON2, x, stride_in_1x1=True), x)


def test_deform_from_detectron2_config():
    assert deform_from_detectron2([False, True, True, True], True, 2) == (
        DeformConfig(stages=(3, 4, 5), modulated=True, offset_groups=2),
    )
    assert deform_from_detectron2([False] * 4) == ()
    with pytest.raises(ValueError, match="4 flags"):
        deform_from_detectron2([True])


def test_detectron2_caffe2_names_are_refused():
    with pytest.raises(ValueError, match="Caffe2-named"):
        convert_state_dict({"res2_0_branch2a_w": torch.zeros(1)}, "detectron2")


def test_pkl_reader_refuses_anything_but_arrays(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(ValueError, match="refusing to load"):
        read_pickled_arrays(path)
    with pytest.raises(ValueError, match="refusing to load"):
        read_state_dict(path)


# ---------------------------------------------------------------------------------------------
# Mismatches give errors that name the keys


def test_missing_and_unknown_keys_are_listed(tmp_path):
    state = toolkit_state(DETECTRON2)
    del state["res3.0.conv2_offset.weight"]
    state["res2.0.conv4.weight"] = torch.zeros(1)
    torch.save({"model": {"backbone." + k: v for k, v in state.items()}}, tmp_path / "d2.pth")
    with pytest.raises(ValueError) as err:
        load_pretrained(_model(), tmp_path / "d2.pth", source="detectron2")
    message = str(err.value)
    assert "missing from the checkpoint: layer2.0.conv2.conv_offset.weight" in message
    assert "unexpected in the checkpoint: res2.0.conv4.weight" in message


def test_layer_kinds_that_differ_are_named(tmp_path):
    torch.save(toolkit_state(MMDET), tmp_path / "mm.pth")
    # the model makes conv3 v2 where the checkpoint has v1 and conv2 deformable where it is plain
    configs = (DeformConfig(stages=(2, 3, 4, 5), modulated=True, offset_groups=2),)
    with pytest.raises(ValueError) as err:
        load_pretrained(_model(configs), tmp_path / "mm.pth", source="mmdet")
    message = str(err.value)
    assert "layer1.0.conv2.conv_offset.weight" in message  # missing: the model's extra layer
    assert "layer2.0.conv2.conv_offset.weight: (36, 128, 3, 3) in the checkpoint vs (54" in message
    with pytest.raises(ValueError, match="source must be one of"):
        load_pretrained(_model(), tmp_path / "mm.pth", source="mmcv")


def test_deform_from_checkpoint_ambiguity_and_last_n():
    state = toolkit_state(MMDET, dcn={4: (True, 2)}, layers=(1, 1, 3, 1))
    with pytest.raises(ValueError, match=r"fit both v1.*pass modulated=True"):
        deform_from_checkpoint(state)
    assert deform_from_checkpoint(state, modulated=True) == (
        DeformConfig(stages=(4,), modulated=True, offset_groups=2),
    )
    del state["layer3.0.conv2.conv_offset.weight"]
    assert deform_from_checkpoint(state, modulated=False) == (
        DeformConfig(stages=(4,), last_n=2, offset_groups=3),
    )
    del state["layer3.2.conv2.conv_offset.weight"]
    with pytest.raises(ValueError, match=r"blocks \[1\] of 3, not its last"):
        deform_from_checkpoint(state, modulated=True)


def test_stride_in_1x1_moves_each_stride_once():
    model = _model()
    stride_in_1x1(stride_in_1x1(model))  # twice: the second call finds nothing to move
    first = [layer[0] for layer in (model.layer2, model.layer3, model.layer4)]
    assert [b.conv1.stride for b in first] == [(2, 2)] * 3
    assert [b.conv2.stride for b in first] == [(1, 1)] * 3
    assert [b.conv2.conv_offset.stride for b in first] == [(1, 1)] * 3
    assert model.layer1[0].conv1.stride == (1, 1)
    x = torch.randn(1, 3, 40, 56, dtype=torch.float64)
    sizes = [tuple(f.shape[-2:]) for f in model.eval()(x).values()]
    assert sizes == [(10, 14), (5, 7), (3, 4), (2, 2)]
    with pytest.raises(TypeError, match="needs a bottleneck ResNet"):
        stride_in_1x1(ResNet(BasicBlock, (1, 1, 1, 1)))
