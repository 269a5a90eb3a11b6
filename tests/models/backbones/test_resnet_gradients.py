"""Gradients of deformable ResNets, checked by value.

Two independent references:

- a fresh deformable ResNet (zero offsets) computes the plain ResNet with the same weights (SPEC
  sections 2-3; v2: masks 0.5, i.e. the plain twin with halved 3x3 weights), so its input and
  weight gradients equal the twin's, which runs only dense ``conv2d``. Checked in float32 at batch
  sizes 1 and 2: batch size 1 is where a backward that handed a non-dense gradient to a
  pointer-based GEMM went wrong (issue 8);
- with random, non-zero offsets (no plain twin then), float64 gradients of every parameter, the
  offset and mask predictors included, against central finite differences along a random
  direction, and float32 gradients against those float64 ones.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.models import resnet18, resnext50_32x4d


def _randomise_norms(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))


def _loss(out: torch.Tensor, seed: int = 5) -> torch.Tensor:
    """A loss with a dense, non-uniform gradient plus an expanded one (``.sum()``)."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return (out * weights).sum() + 0.1 * out.sum()


def _grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    _loss(model(x)).backward()
    return x.grad, {n: p.grad for n, p in model.named_parameters()}


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str) -> None:
    """``|actual - expected| <= rel * max|expected|`` everywhere (float rounding of a deep net
    is relative to the tensor's scale, not to each entry)."""
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


def _twins(builder, deform: str):
    torch.manual_seed(0)
    model = builder(deform=deform, num_classes=6)
    twin = builder(deform=None, output_stride=16, num_classes=6)
    _randomise_norms(model)
    twin.load_state_dict(model.state_dict(), strict=False)
    if deform == "v2":  # masks sigmoid(0) = 0.5: the twin's 3x3 weights are halved (exact)
        with torch.no_grad():
            for name in model.deformable_layers():
                twin.get_submodule(name).weight.mul_(0.5)
    return model.eval(), twin.eval()


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    ("builder", "deform", "size"),
    [(resnet18, "v1", 32), (resnet18, "v2", 32), (resnext50_32x4d, "v2", 32)],
    ids=["resnet18-v1", "resnet18-v2", "resnext50-v2"],
)
def test_fresh_deformable_resnet_has_the_gradients_of_its_plain_twin(builder, deform, size, batch):
    model, twin = _twins(builder, deform)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _close(model(x), twin(x), 1e-5, "logits")
    gx, grads = _grads(model, x)
    gx_ref, grads_ref = _grads(twin, x)
    _close(gx, gx_ref, 1e-4, "input")
    deformable = set(model.deformable_layers())
    compared = 0
    for name, ref in grads_ref.items():
        grad = grads[name]
        if deform == "v2" and name.rsplit(".", 1)[0] in deformable:
            grad = 2 * grad  # d/dw of conv(x, w / 2) is half the twin's d/dw
            compared += 1
        _close(grad, ref, 1e-4, name)
    assert compared == (len(deformable) if deform == "v2" else 0)


def _random_offsets(model: nn.Module, std: float = 0.05, seed: int = 3) -> None:
    """Non-zero offset (and mask) predictors, so sampling points fall between pixels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.deformable_layers().values():
            w = layer.conv_offset.weight
            w.copy_(std * torch.randn(w.shape, generator=g, dtype=w.dtype))
            layer.conv_offset.bias.copy_(
                0.3 * torch.randn(layer.conv_offset.bias.shape, generator=g)
            )


@pytest.mark.parametrize("deform", ["v1", "v2"])
def test_deformable_resnet_gradients_match_finite_differences(deform):
    torch.manual_seed(0)
    model = resnet18(deform=deform, num_classes=6)
    _randomise_norms(model)
    _random_offsets(model)
    model = model.double().eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, grads = _grads(model, x)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(6)
    # Two directions: one over every parameter, one over the offset/mask predictors only (their
    # share of the first is small next to the 11 M conv weights). The step is small enough for
    # the curvature along 11 M random coordinates (eps 1e-6 there gives a 2e-4 relative error).
    for only_predictors, eps in ((False, 1e-8), (True, 1e-6)):
        direction = {
            n: torch.randn(p.shape, generator=g, dtype=p.dtype)
            if (".conv_offset." in n) or not only_predictors
            else torch.zeros_like(p)
            for n, p in params.items()
        }
        analytic = sum((grads[n] * d).sum() for n, d in direction.items()).item()
        with torch.no_grad():
            losses = []
            for sign in (1, -1):
                for n, p in params.items():
                    p.add_(sign * eps * direction[n])
                losses.append(_loss(model(x)).item())
                for n, p in params.items():
                    p.sub_(sign * eps * direction[n])
        numeric = (losses[0] - losses[1]) / (2 * eps)
        assert analytic == pytest.approx(numeric, rel=1e-6), (only_predictors, analytic, numeric)
    # the predictors' share is not zero: the check above says something about them
    predictor_norm = sum(grads[n].abs().sum() for n in params if ".conv_offset." in n)
    assert predictor_norm.item() > 1e-3 * max(grads[n].abs().sum().item() for n in params)


@pytest.mark.parametrize("batch", [1, 3])
def test_float32_gradients_match_float64_with_random_offsets(batch):
    torch.manual_seed(0)
    model = resnet18(deform="v2", num_classes=6)
    _randomise_norms(model)
    _random_offsets(model)
    model = model.eval()
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    gx, grads = _grads(model, x)
    gx64, grads64 = _grads(model.double(), x.double())
    _close(gx.double(), gx64, 1e-4, "input")
    for name, ref in grads64.items():
        _close(grads[name].double(), ref, 1e-3, name)
