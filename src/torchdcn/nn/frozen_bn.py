"""Batch normalisation with fixed statistics and affine parameters, for detection backbones."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """``BatchNorm2d`` in eval mode with nothing to train.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, channel by channel.
    Detection backbones keep the ImageNet statistics because a batch of one or two large images
    gives poor batch statistics (detectron2's ``FrozenBatchNorm2d`` does the same). All four
    tensors are buffers, so the optimizer never sees them, and they sit at ``BatchNorm2d``'s
    state-dict keys (``weight``, ``bias``, ``running_mean``, ``running_var``): a torchvision or
    timm checkpoint loads unchanged; its ``num_batches_tracked`` is ignored.

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance, as ``BatchNorm2d`` (1e-5).

    Shape:
        ``x``: ``[N, C, H, W]`` -> ``[N, C, H, W]``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"num_features must be positive, got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` of shape ``[N, C, H, W]`` channel by channel."""
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"input must have shape [N, {self.num_features}, H, W], got {list(x.shape)}"
            )
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn``'s statistics and affine parameters (eval-mode output)."""
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"bn must be an nn.BatchNorm2d, got {type(bn).__name__}")
        frozen = cls(bn.num_features, bn.eps)
        tensors = [*bn.parameters(), *bn.buffers()]
        if tensors:
            frozen = frozen.to(tensors[0].device)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # BatchNorm2d checkpoints carry a step counter that has no meaning here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}" + (f", eps={self.eps}" if self.eps != 1e-5 else "")
