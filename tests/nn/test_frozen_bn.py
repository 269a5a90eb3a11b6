"""FrozenBatchNorm2d: BatchNorm2d's eval-mode function with nothing trainable, same keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.nn import FrozenBatchNorm2d


def _bn() -> nn.BatchNorm2d:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return bn.eval()


def test_loads_batch_norm_state_dict_and_matches_eval_output():
    bn = _bn()
    frozen = FrozenBatchNorm2d(6, eps=1e-3)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped, strict load passes
    assert list(frozen.parameters()) == []
    assert sorted(frozen.state_dict()) == ["bias", "running_mean", "running_var", "weight"]
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        FrozenBatchNorm2d.from_batch_norm(bn)(x), bn(x), rtol=1e-5, atol=1e-6
    )
    assert "eps=0.001" in repr(frozen)


def test_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"\[N, 6, H, W\]"):
        FrozenBatchNorm2d(6)(torch.randn(2, 5, 3, 3))
    with pytest.raises(TypeError):
        FrozenBatchNorm2d.from_batch_norm(nn.LayerNorm(3))


def test_torchscript_matches_eager():
    """The README says every torchdcn.nn module scripts: same output, same refusal."""
    frozen = FrozenBatchNorm2d.from_batch_norm(_bn())
    scripted = torch.jit.script(frozen)
    x = torch.randn(2, 6, 4, 5)
    torch.testing.assert_close(scripted(x), frozen(x), rtol=0, atol=0)
    torch.testing.assert_close(scripted(x), _bn()(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match=r"\[N, 6, H, W\], got \[2, 5, 3, 3\]"):
        scripted(torch.randn(2, 5, 3, 3))
