"""BatchNorm whose batch statistics span every process of a distributed run (``sync_bn``).

Under DDP every process normalises by the statistics of its own share of the global batch, so
``N`` processes train like one process reading the whole batch only when no BatchNorm layer uses
batch statistics: GroupNorm (the digit classifier), frozen BatchNorm
(:class:`~torchdcn.nn.FrozenBatchNorm2d`, the detectors with ImageNet weights) or eval-mode
BatchNorm. A detector or DeepLab trained from scratch trains its BatchNorm, and two processes
then end with other weights than one (a ResNet-18 Faster R-CNN's running variances differed by
0.24 after two steps; 3e-4 with ``sync_bn``, what its other differences leave: its RPN and RoI
heads sample anchors and RoIs from each process's own RNG stream). Synchronised BatchNorm
computes the statistics over the global batch instead:

- on CUDA, :class:`torch.nn.SyncBatchNorm` (torchvision's ``--sync-bn``, detectron2's
  ``SyncBN``);
- elsewhere (CPU with the ``gloo`` backend, where torch's refuses to run: "SyncBatchNorm layers
  only work with GPU modules"), :class:`AllReduceBatchNorm`: each process's per-channel count,
  mean and variance are all-reduced (differentiably: the backward pass all-reduces their
  gradients) and combined as the statistics of the union (Chan et al.'s pairwise formula), so a
  run equals one process with the global batch up to float rounding.

The converted layers keep the parameter and buffer tensors of the layers they replace and their
``state_dict`` keys, so checkpoints load into the unconverted model (``torchdcn eval``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["AllReduceBatchNorm", "batch_statistics_layers", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of every process's input is the summed gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class AllReduceBatchNorm(_BatchNorm):
    """BatchNorm over the inputs of every process (any ``[N, C, ...]`` input), for backends
    where :class:`torch.nn.SyncBatchNorm` does not run. In eval mode, or outside a process group
    of several processes, it is :class:`torch.nn.BatchNorm2d` (``1d``, ``3d``). The running
    variance takes the unbiased variance of the global batch, as BatchNorm's does."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an [N, C, ...] input, got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:
        rank, world = _world()
        if not self.training or world == 1:
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # float64 stays
        count = x.numel() // channels
        if count:
            var, mean = torch.var_mean(x, dim=dims, correction=0)
        else:  # an empty share: it adds nothing to the sums
            var = mean = x.new_zeros(channels)
        row = torch.cat([x.new_full((1,), float(count)), mean, var])
        table = _AllReduceSum.apply(
            torch.stack([row if r == rank else torch.zeros_like(row) for r in range(world)])
        )
        counts, means, variances = (
            table[:, :1],
            table[:, 1 : channels + 1],
            table[:, channels + 1 :],
        )
        total = counts.sum()
        if total.item() <= 1:
            raise ValueError(
                f"expected more than 1 value per channel over the {world} processes when "
                f"training, got input size {tuple(input.shape)} here"
            )
        mean = (counts * means).sum(0) / total
        var = (counts * (variances + (means - mean) ** 2)).sum(0) / total
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                factor = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)  # type: ignore[arg-type]
                )
                unbiased = var * total / (total - 1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)  # type: ignore[union-attr]
        shape = [1, channels] + [1] * (input.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)


def _synchronised(module: nn.Module) -> bool:
    return isinstance(module, nn.SyncBatchNorm | AllReduceBatchNorm)


def _to_all_reduce(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm replaced by an :class:`AllReduceBatchNorm` sharing its
    tensors (as :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm` does for its layer)."""
    out = module
    if isinstance(module, _BatchNorm) and not _synchronised(module):
        out = AllReduceBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_all_reduce(child))
    return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str) -> nn.Module:
    """``module`` with its BatchNorm layers synchronised over the processes: torch's
    :class:`~torch.nn.SyncBatchNorm` on CUDA, :class:`AllReduceBatchNorm` elsewhere. Children are
    replaced in place; the returned module is ``module`` itself unless it is a BatchNorm."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_all_reduce(module)


def batch_statistics_layers(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers of ``model`` that normalise by the batch's statistics in
    training mode and are not synchronised (what makes ``N`` processes differ from one). Layers
    a model keeps in eval mode when trained (an overridden ``train``) are left out; the
    modules' modes are restored."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.train()
        return [
            name or type(model).__name__
            for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and not _synchronised(m) and m.training
        ]
    finally:
        for m, mode in modes.items():
            m.training = mode
