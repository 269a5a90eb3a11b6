"""Smooth-L1 against torch's own implementation and the formula; class-specific delta selection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchdcn.models.detection.losses import select_class_deltas, smooth_l1_loss


@pytest.mark.parametrize("beta", [1.0 / 9, 1.0, 0.5])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_matches_torch_smooth_l1(beta, reduction):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)
    expected = F.smooth_l1_loss(x, y, beta=beta, reduction=reduction)
    torch.testing.assert_close(smooth_l1_loss(x, y, beta=beta, reduction=reduction), expected)


def test_by_hand_and_beta_zero_is_l1():
    x, y = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.05, 0.5, -2.0])
    # beta 1/9: 0.05 < 1/9 -> 0.5 * 0.0025 * 9; 0.5 -> 0.5 - 1/18; 2 -> 2 - 1/18
    expected = 0.5 * 0.0025 * 9 + 0.5 - 1 / 18 + 2 - 1 / 18
    torch.testing.assert_close(smooth_l1_loss(x, y), torch.tensor(expected))
    torch.testing.assert_close(smooth_l1_loss(x, y, beta=0.0), torch.tensor(2.55))


def test_gradient_is_finite_and_bounded():
    x = torch.tensor([0.0, 1e-3, 5.0], requires_grad=True)
    smooth_l1_loss(x, torch.zeros(3), beta=0.0).backward()
    assert torch.all(x.grad.abs() <= 1.0) and torch.isfinite(x.grad).all()


def test_select_class_deltas():
    deltas = torch.arange(2 * 12, dtype=torch.float32).view(2, 12)
    out = select_class_deltas(deltas, torch.tensor([3, 1]), first_label=1)
    torch.testing.assert_close(out, torch.stack((deltas[0, 8:12], deltas[1, 0:4])))
    out = select_class_deltas(deltas, torch.tensor([0, 2]), first_label=0)
    torch.testing.assert_close(out, torch.stack((deltas[0, 0:4], deltas[1, 8:12])))
    with pytest.raises(ValueError, match="must lie in"):
        select_class_deltas(deltas, torch.tensor([0, 1]), first_label=1)


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        smooth_l1_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="beta"):
        smooth_l1_loss(torch.zeros(3), torch.zeros(3), beta=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        smooth_l1_loss(torch.zeros(3), torch.zeros(3), reduction="avg")
