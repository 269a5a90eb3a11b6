"""Where a digit-scenes detector's training step spends its time (issue 15: RoI family and NMS).

Builds the ablation tables' models (:class:`~torchdcn.cli.scene_recipe.SceneRecipe`: ResNet-18
at width 16, 128 x 128 scenes, batch 4) and profiles AdamW training steps on real training
scenes with ``torch.profiler`` (self CPU time of every operator, forward and backward). Every
torchdcn op is a ``torch.library`` op, so it shows up under its own name; the rest is grouped:

- ``dense conv``: PyTorch's convolutions, forward and backward (oneDNN's, and ``_slow_conv2d``,
  which PyTorch takes for unstrided 1x1 convolutions on one thread with a batch under 16);
- ``products``: ``mm`` / ``addmm`` / ``addmm_`` / ``bmm`` (the fc heads, and on one thread the
  block products inside our deformable conv; on more than one its forward products are 1x1
  convolutions and count as dense conv);
- ``deform conv``, ``RoI pooling`` (every RoI op and its backward), ``NMS``: torchdcn's ops
  (their forward kernels run in the autograd node the profiler calls
  ``GeneratedBackwardFor_torchdcn_<op>``, counted here too);
- ``optimizer``: the ``_foreach`` / fused AdamW ops;
- ``glue``: everything else (element-wise, indexing, sorting, box coding, matching, losses).

Prints, per configuration, milliseconds per step of each group and its share, the AdamW step's
own time (``--optimizer``: PyTorch's fused step as the recipe takes, ``foreach`` or the
per-parameter ``loop``, whose element-wise ops otherwise count as glue), and the ten largest
operators. Run (one thread, as the tables run their jobs)::

    python benchmarks/profile_detector_step.py [--model faster_rcnn] [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from torchdcn.cli.scene_recipe import SceneRecipe, build_scene_model
from torchdcn.cli.scene_train import _detection_targets, load_split
from torchdcn.engine.optim import fused_kwargs
from torchdcn.nn import param_groups

V2 = {"stages": [3, 4, 5], "modulated": True}
V1 = {"stages": [3, 4, 5], "modulated": False}
CONFIGS = {
    "faster_rcnn": {
        "plain": {"roi_pool": "roi_align"},
        "v1": {"deform": V1, "roi_pool": "deform"},
        "v2": {"deform": V2, "roi_pool": "mdeform"},
    },
    "mask_rcnn": {  # the mask head at the tables' width (benchmarks/ablation_digit_scenes.py)
        "plain": {"roi_pool": "roi_align", "extra": {"mask_channels": 64}},
        "v2": {"deform": V2, "roi_pool": "mdeform", "extra": {"mask_channels": 64}},
    },
    "rfcn": {"plain": {"ps_pool": "ps"}, "v2": {"deform": V2, "ps_pool": "deform"}},
}


def group_of(name: str) -> str:
    """The group of one profiler event (module docstring)."""
    # a torch.library op's forward runs inside its autograd node "GeneratedBackwardFor_<op>",
    # which the profiler names so: its self time is the op's forward kernel
    if "torchdcn" in name:
        if "deform_conv" in name:
            return "deform conv"
        return "NMS" if "nms" in name else "RoI pooling"
    if "convolution" in name or name.startswith("aten::conv") or "slow_conv" in name:
        return "dense conv"
    if name in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"):
        return "products"
    if "_foreach" in name or "adam" in name.lower():
        return "optimizer"
    return "glue"


#: AdamW implementations: PyTorch's fused step (what the recipe takes), its ``_foreach`` step,
#: and its per-parameter loop (PyTorch's default on CPU)
OPTIMIZERS = {"fused": "fused", "foreach": {"foreach": True}, "loop": {"foreach": False}}


def profile_config(
    model_name: str, overrides: dict, scenes: str, steps: int, optimizer: str = "fused"
) -> tuple:
    """``(ms per step, {group: ms per step}, [(op, ms per step)] top 10, AdamW step ms)``; the
    last is the inclusive time of PyTorch's ``Optimizer.step`` region, whatever ops it runs."""
    recipe = SceneRecipe(model=model_name, **overrides)
    torch.manual_seed(0)
    model = build_scene_model(recipe).train()
    params = param_groups(model, recipe.lr, recipe.weight_decay)
    kind = OPTIMIZERS[optimizer]
    kwargs = fused_kwargs(params) if kind == "fused" else kind
    opt = torch.optim.AdamW(params, lr=recipe.lr, **kwargs)
    masks = model_name == "mask_rcnn"
    _, samples = load_split(scenes, "train", masks)
    rng = np.random.default_rng(0)

    def step() -> None:
        picks = rng.integers(0, len(samples), recipe.batch_size)
        images = [samples[i][0] for i in picks]
        targets = _detection_targets([samples[i][1] for i in picks], masks)
        loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: compile, allocate
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    groups: dict[str, float] = defaultdict(float)
    ops, step_ms = [], 0.0
    for event in prof.key_averages():
        if event.key.startswith("Optimizer.step"):
            step_ms += event.cpu_time_total / 1e3 / steps
        ms = event.self_cpu_time_total / 1e3 / steps
        groups[group_of(event.key)] += ms
        ops.append((event.key, ms))
    total = sum(groups.values())
    return total, dict(groups), sorted(ops, key=lambda o: -o[1])[:10], step_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="faster_rcnn")
    parser.add_argument(
        "--scenes", default="runs/scenes", help="digit scenes (generated if absent)"
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--optimizer", choices=sorted(OPTIMIZERS), default="fused", help="AdamW implementation"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (Path(args.scenes) / "annotations" / "instances_train.json").exists():
        from torchdcn.data import generate_digit_scenes

        generate_digit_scenes(args.scenes)
    print(
        f"# {args.model} training step on digit scenes (batch 4, 128 x 128), {args.threads} "
        f"thread(s), {args.optimizer} AdamW, self CPU time over {args.steps} profiled steps; "
        f"{datetime.date.today()}, "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    names = ["dense conv", "products", "deform conv", "RoI pooling", "NMS", "optimizer", "glue"]
    lines = [
        "| config | ms per step | " + " | ".join(names) + " | AdamW step |",
        "|" + "---|" * (len(names) + 3),
    ]
    tops = {}
    for config, overrides in CONFIGS[args.model].items():
        total, groups, tops[config], step_ms = profile_config(
            args.model, overrides, args.scenes, args.steps, args.optimizer
        )
        cells = [
            f"{groups.get(n, 0.0):.1f} ({100 * groups.get(n, 0.0) / total:.0f}%)" for n in names
        ]
        lines.append(f"| {config} | {total:.1f} | " + " | ".join(cells) + f" | {step_ms:.1f} |")
    print("\n".join(lines))
    for config, top in tops.items():
        print(f"\n{config}, largest operators (ms per step): ")
        print(", ".join(f"{name} {ms:.1f}" for name, ms in top))


if __name__ == "__main__":
    main()
