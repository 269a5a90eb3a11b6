"""Running a model over a data set with an evaluator, split over the processes of a distributed
run (the protocol is in :mod:`torchdcn.engine.evaluator`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.collate import stack_collate
from ..data.source import as_dataset
from .device import to_device
from .evaluator import AccuracyEvaluator, Evaluator
from .sampler import ShardSampler


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    evaluator: Evaluator,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    amp: bool = False,
    collate_fn: Callable[[list[Any]], Any] = stack_collate,
    num_workers: int = 0,
) -> dict[str, float]:
    """``evaluator.summarize()`` after feeding it ``model(inputs)`` (eval mode) and the targets
    of every sample of ``data``.

    Args:
        model: in eval mode ``model(inputs) -> outputs`` that ``evaluator.process`` takes.
        data: a map-style data set whose batches (after ``collate_fn``) are ``(inputs,
            targets)``; a data set with ``set_epoch`` is read as in epoch 0 (then set back).
        evaluator: reset here, then fed every batch of this process's share.
        batch_size: samples per batch on each process.
        device: where the model is; batches are moved there (:func:`~.device.to_device`).
        amp: autocast (float16 on CUDA, bfloat16 on CPU).
        collate_fn: samples -> batch ``(inputs, targets)``. The default
            :func:`~torchdcn.data.collate.stack_collate` stacks images into one
            ``Tensor[N, C, H, W]`` (classifiers, DeepLab on equal-size images). Detectors take a
            list of images ``[3, H_i, W_i]`` and a list of target dicts: pass
            ``collate_fn=list_collate`` (:func:`~torchdcn.data.collate.list_collate`) for them
            (and with :class:`~.coco_eval.CocoEvaluator`), as for segmentation images of
            different sizes; a stacked batch is refused with a ``TypeError`` saying so.
        num_workers: DataLoader worker processes (0: read in this process).

    In a distributed run process ``r`` of ``W`` reads samples ``r, r + W, ...``
    (:class:`~.sampler.ShardSampler`), and the evaluator combines the shares.

    Example (a detector on a :class:`~torchdcn.data.CocoDetection`):
        >>> from torchdcn.data.collate import list_collate
        >>> metrics = evaluate(model, dataset, CocoEvaluator.from_dataset(dataset),
        ...                    batch_size=2, collate_fn=list_collate)
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(
            f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}"
        )
    dataset = as_dataset(data)
    device = torch.device(device)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    was_training = model.training
    previous_epoch = getattr(dataset, "epoch", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset)),
        collate_fn=collate_fn,
        num_workers=num_workers,
        generator=torch.Generator(),  # leaves the global RNG alone
    )
    model.eval()
    evaluator.reset()
    try:
        for inputs, targets in loader:
            inputs, targets = to_device((inputs, targets), device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                outputs = model(inputs)
            evaluator.process(outputs, targets)
    finally:
        model.train(was_training)
        if previous_epoch is not None:
            dataset.set_epoch(previous_epoch)
    return evaluator.summarize()


def evaluate_accuracy(
    model: nn.Module,
    source: Any,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> float:
    """Top-1 accuracy in percent of ``model`` (logits ``[B, classes]``) on every sample of
    ``source`` (epoch 0). In a distributed run each process reads every ``world_size``-th sample
    and the counts are summed, so every process returns the same number."""
    return evaluate(model, source, AccuracyEvaluator(), batch_size, device, amp)["accuracy"]
