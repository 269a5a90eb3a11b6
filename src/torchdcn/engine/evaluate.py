"""Classification accuracy over a batch source, split over the processes of a distributed run."""

from __future__ import annotations

import torch
from torch import nn

from ..data.source import BatchSource
from . import distributed


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    source: BatchSource,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> float:
    """Top-1 accuracy in percent of ``model`` (logits ``[B, classes]``) on every sample of
    ``source`` (epoch 0). In a distributed run each process reads every ``world_size``-th sample
    and the counts are summed, so every process returns the same number."""
    dist = distributed.info()
    was_training = model.training
    model.eval()
    device = torch.device(device)
    indices = torch.arange(dist.rank, len(source), dist.world_size)
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    for start in range(0, len(indices), batch_size):
        x, y = source.get_batch(indices[start : start + batch_size], 0)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            pred = model(x).argmax(1)
        counts[0] += (pred == y).sum()
        counts[1] += len(y)
    distributed.all_reduce_sum(counts)
    model.train(was_training)
    return 100.0 * counts[0].item() / max(1.0, counts[1].item())
