"""``torchdcn demo``: the tour. Part 1, :mod:`.demo`: plain vs v1 vs v2 CNNs on distorted digits;
part 2, :mod:`.demo_detection`: plain vs v2 Faster R-CNN on digit scenes. :func:`run_tour` runs
the parts ``--part`` asks for with the command's settings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .demo import DemoConfig, format_report, run_demo


def demo_config(s: dict[str, Any]) -> DemoConfig:
    """The classification part's :class:`DemoConfig` from ``torchdcn demo`` settings."""
    return DemoConfig(
        seeds=tuple(s["seeds"]),
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        weight_decay=s["weight_decay"],
        warmup_steps=s["warmup_steps"],
        width=s["width"],
        plain_long_factor=s["plain_long_factor"],
        data_root=s["data_root"],
        out_dir=s["out_dir"],
        figure=s["figure"],
        markdown=s["markdown"],
        jobs=s["jobs"],
        threads=s["threads"],
        progress=s["progress"],
        limit_train=s["limit_train"],
        limit_test=s["limit_test"],
    )


def detection_config(s: dict[str, Any]) -> Any:
    """The detection part's :class:`~.demo_detection.DetectionDemoConfig` from ``torchdcn demo``
    settings (its files go to ``<out_dir>/detection``; seed: the first of ``seeds``)."""
    from .demo_detection import DetectionDemoConfig

    return DetectionDemoConfig(
        seed=s["seeds"][0],
        pretrain_steps=s["detection_pretrain_steps"],
        steps=s["detection_steps"],
        train_images=s["detection_train_images"],
        test_images=s["detection_test_images"],
        data_root=s["data_root"],
        out_dir=str(Path(s["out_dir"]) / "detection"),
        jobs=s["jobs"],
        threads=s["threads"],
        progress=s["progress"],
    )


def run_tour(s: dict[str, Any]) -> list[str]:
    """Run the parts of the demo ``s["part"]`` asks for (``all``, ``classification``,
    ``detection``), printing each report as it is ready; returns the reports."""
    from .demo_detection import format_detection_report, run_detection_demo

    start = time.perf_counter()
    reports = []
    if s["part"] in ("all", "classification"):
        reports.append(format_report(run_demo(demo_config(s))))
        print(reports[-1], flush=True)
    if s["part"] in ("all", "detection"):
        reports.append(format_detection_report(run_detection_demo(detection_config(s))))
        print(reports[-1], flush=True)
    if len(reports) > 1:
        print(f"Whole tour: {time.perf_counter() - start:.0f} s.")
    return reports
