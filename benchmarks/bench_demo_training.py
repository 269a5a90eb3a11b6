"""Training-step time of the classification demo's models: plain, v1 and v2 (torchdcn demo).

The demo trains each model in its own worker process on one thread (``torchdcn demo``, two jobs
on two cores), so this times one thread by default: per model, AdamW steps (PyTorch's fused
step, as the demo's ``build_optimizer`` takes) on batches of 64 48x48 canvases (forward,
cross-entropy, backward, step), interleaved across models in rounds so
every model sees the same machine state; prints median milliseconds per step and the ratio to
the plain model. The demo's equal-epoch comparison costs these ratios in wall time.

The "floor" rows bound what any kernel can reach: each deformable layer keeps its offset (and
mask) predictor, forward and backward, but convolves densely at the regular grid (sampling for
free, the products at oneDNN's speed). A v1/v2 training can be no faster than its floor with
these predictors, whatever the deformable kernel does.

Run: ``python benchmarks/bench_demo_training.py [--threads 1] [--steps 20] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchdcn.cli.demo import DemoConfig
from torchdcn.data.distorted_mnist import CANVAS
from torchdcn.engine.optim import fused_kwargs
from torchdcn.models.classification.mnist_cnn import mnist_cnn


class SamplingFree(nn.Module):
    """A deformable layer with free sampling: its predictor runs (forward and backward) and its
    weight convolves densely at the regular grid, ``[N, C, H, W] -> [N, C_out, H, W]``."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        offset, mask = layer.predict(x)
        out = F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
        keep = offset.sum() if mask is None else offset.sum() + mask.sum()
        return out + 0.0 * keep  # the predictor's output stays in the graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = DemoConfig()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(cfg.batch_size, 1, CANVAS, CANVAS, generator=gen)
    labels = torch.randint(0, 10, (cfg.batch_size,), generator=gen)
    models, optims = {}, {}
    rows = (("plain", None), ("v1", "v1"), ("v2", "v2"), ("v1 floor", "v1"), ("v2 floor", "v2"))
    for name, deform in rows:
        torch.manual_seed(0)
        model = mnist_cnn(deform, **cfg.model_kwargs(deform))
        for layer in model.deformable_layers().values():  # offsets as after some training
            torch.nn.init.normal_(layer.conv_offset.weight, std=0.05)
        if name.endswith("floor"):
            model.body = nn.ModuleList(SamplingFree(layer) for layer in model.body)
        models[name] = model.train()
        params = list(model.parameters())
        optims[name] = torch.optim.AdamW(params, lr=cfg.lr, **fused_kwargs(params))

    def step(name: str) -> None:
        optims[name].zero_grad(set_to_none=True)
        F.cross_entropy(models[name](images), labels).backward()
        optims[name].step()

    per_step: dict[str, list[float]] = {name: [] for name in models}
    for name in models:  # warm-up: compile, allocate
        step(name)
    for _ in range(args.rounds):
        for name in models:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            per_step[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    print(
        f"# demo training step, batch {cfg.batch_size}, width {cfg.width}, {args.threads} "
        f"thread(s), median of {args.rounds} rounds of {args.steps} steps; "
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}"
    )
    print("| model | ms per step | x plain |")
    print("|---|---|---|")
    plain = statistics.median(per_step["plain"])
    for name, times in per_step.items():
        ms = statistics.median(times)
        print(f"| {name} | {ms:.1f} | {ms / plain:.2f}x |")


if __name__ == "__main__":
    main()
