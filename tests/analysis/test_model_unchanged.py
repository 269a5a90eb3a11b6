"""Every tool leaves the model as it found it: weights, training flags, requires_grad, .grad."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.analysis.effective_dilation import effective_dilation
from torchdcn.analysis.effective_sampling import effective_sampling_locations
from torchdcn.analysis.erf import effective_receptive_field
from torchdcn.analysis.roi_bins import deformed_bins, record_roi_inputs
from torchdcn.analysis.saliency import saliency_regions
from torchdcn.models.classification.mnist_cnn import mnist_cnn
from torchdcn.nn import DeformRoIPool, ModulatedDeformRoIPool

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def snapshot(model: nn.Module) -> tuple:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    grads = [
        (p.requires_grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()
    ]
    return state, flags, grads


def assert_same(before: tuple, after: tuple) -> None:
    (s0, f0, g0), (s1, f1, g1) = before, after
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)
    assert f0 == f1
    for (r0, d0), (r1, d1) in zip(g0, g1):
        assert r0 == r1 and (d0 is None) == (d1 is None)
        assert d0 is None or torch.equal(d0, d1)


@pytest.mark.parametrize("device", DEVICES)
def test_tools_leave_the_model_unchanged(device):
    torch.manual_seed(0)
    model = mnist_cnn("v2", width=8).to(device)
    with torch.no_grad():
        for layer in model.body:
            layer.conv_offset.weight.normal_(0, 0.05)
    model.train()
    model.stem[1].eval()  # a mixed state must come back mixed
    model.fc.weight.requires_grad_(False)
    model.body[0].weight.grad = torch.ones_like(model.body[0].weight)
    images = torch.rand(2, 1, 24, 24, device=device)
    boxes = [torch.tensor([[2.0, 2.0, 20.0, 20.0]]), torch.zeros(0, 4)]
    before = snapshot(model)
    out = model(images)  # train-mode output, to compare after the tools
    effective_dilation(model, images, boxes)
    assert_same(before, snapshot(model))
    erf = effective_receptive_field(model, images, "body.2", (3, 3))
    assert erf.device.type == device and erf.shape == (2, 24, 24)
    assert_same(before, snapshot(model))
    es = effective_sampling_locations(model, images, "body.2", (3, 3), "body.1")
    assert es.mask_grad is not None and es.weights.shape == (2, 9 * 36)
    assert_same(before, snapshot(model))
    saliency_regions(model, images, "body.2", (3, 3))
    assert_same(before, snapshot(model))
    assert torch.equal(model(images), out)


@pytest.mark.parametrize("kind", [DeformRoIPool, ModulatedDeformRoIPool])
def test_roi_bins_leave_the_module_unchanged(kind):
    pool = kind(2, 2, 0.5).train()
    model = nn.ModuleDict({"pool": pool})
    before = snapshot(model)
    feats = torch.rand(1, 2, 6, 6)
    with record_roi_inputs(model) as rec:
        pool(feats, torch.tensor([[0.0, 1.0, 1.0, 9.0, 9.0]]))
    assert torch.equal(rec["pool"][0], feats)
    bins = deformed_bins(
        pool, feats, torch.tensor([[1.0, 1.0, 9.0, 9.0]]), score_fn=lambda p: p.sum((1, 2, 3))
    )
    assert bins.weights.shape == (1, 2, 2)
    assert_same(before, snapshot(model))
