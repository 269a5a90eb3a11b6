"""The outputs of ``torchdcn analyze`` (:mod:`.analyze`): figures, RoI-bin pictures, report.md."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

#: figure file and caption per tool
FIGURES = {
    "erf": ("erf.png", "effective receptive field: |d node / d pixel| (green cross: the node)"),
    "sampling": (
        "effective_sampling.png",
        "effective sampling locations: dot size and opacity by |d node / d location|",
    ),
    "saliency": (
        "saliency.png",
        "error-bounded saliency region (yellow) and ground-truth box (grey, dashed)",
    ),
    "roi-bins": (
        "roi_bins.png",
        "deformable RoI bins of the top detection (yellow; regular bins grey, dashed); dots: "
        "bin centres by effective weight",
    ),
}


def roi_bins_overlay(m: Any, image: torch.Tensor, title: str, gt_boxes: torch.Tensor) -> Any:
    """The deformed RoI bins of the top-scoring detection of a detector on ``image``
    ``[1, 3, H, W]`` (without detections: of the largest ground-truth box of ``gt_boxes``
    ``[M, 4]``, scored for class 1) as an :class:`~torchdcn.analysis.figures.Overlay`, or
    ``None`` (no deformable RoI pooling, or neither a detection nor a box). R-FCN's deformable
    PS pooling draws the offsets of the detection's class (class-specific offset pairs) and
    weights the bins by that class's voted score."""
    from ..analysis.figures import Overlay
    from ..analysis.probe import detector_forward, evaluating
    from ..analysis.roi_bins import (
        DEFORMABLE_ROI_MODULES,
        deformed_bins,
        offset_group,
        record_roi_inputs,
    )
    from ..nn import DeformPSRoIPool

    model = m.model
    modules = {
        n: mod for n, mod in model.named_modules() if isinstance(mod, DEFORMABLE_ROI_MODULES)
    }
    if not modules:
        return None
    with torch.no_grad(), evaluating(model), record_roi_inputs(model) as rec:
        dets = detector_forward(model, image)[0]
    if not rec:
        return None
    if len(dets["boxes"]):
        box, label = dets["boxes"][:1], int(dets["labels"][0])
        caption = f"label {label} score {float(dets['scores'][0]):.2f}"
    elif len(gt_boxes):
        areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        box, label = gt_boxes[int(areas.argmax())][None].to(image.device), 1
        caption = "no detection: the largest ground-truth box"
    else:
        return None
    name = next(iter(rec))  # the first called: R-FCN's class-score pooling
    call, module = rec[name], modules[name]
    ps_class = isinstance(module, DeformPSRoIPool) and label < module.out_channels
    group = offset_group(module, label) if ps_class else 0
    heads = getattr(model, "roi_heads", None)
    score_fn = None
    if isinstance(module, DeformPSRoIPool):
        if ps_class:  # the class score is the vote (mean) of the class's bins

            def score_fn(pooled: torch.Tensor) -> torch.Tensor:
                return pooled[:, label].mean((1, 2))

    elif heads is not None and hasattr(heads, "head") and hasattr(heads, "predictor"):

        def score_fn(pooled: torch.Tensor) -> torch.Tensor:
            return heads.predictor(heads.head(pooled))[0][:, label]

    with evaluating(model):
        bins = deformed_bins(
            module, call.features, box, group=group, score_fn=score_fn, feature=call.feature
        )
    centres = bins.centres.reshape(-1, 2)
    weights = None if bins.weights is None else bins.weights.reshape(-1)
    return Overlay(
        image[0].cpu(),
        boxes=bins.deformed.reshape(-1, 4),
        regular_boxes=bins.regular.reshape(-1, 4),
        points=centres,
        weights=weights,
        title=f"{title}\n{caption}",
    )


def write_figures(models: list, samples: list, out: Path, layer: str, below: str | None) -> dict:
    """One PNG per tool that has pictures: ``{tool: path}``."""
    from ..analysis.figures import draw_overlays

    paths = {}
    for tool, (file, caption) in FIGURES.items():
        rows = [m.rows[tool] for m in models if m.rows.get(tool)]
        if rows:
            where = f"node on {layer}" + (f", locations of {below}" if tool == "sampling" else "")
            paths[tool] = draw_overlays(rows, out / file, f"{caption}; {where}")
    return paths


def _ratio_line(m: Any) -> str:
    if not m.saliency_ratio:
        return "-"
    return f"{statistics.median(m.saliency_ratio):.2f}"


def write_report(
    models: list,
    s: dict[str, Any],
    out: Path,
    figures: dict,
    layer: str,
    below: str | None,
    thresholds: tuple,
    count: int,
) -> Path:
    """``report.md``: the tables and the figures; returns its path."""
    from .analyze import mean_sd

    lines = [
        "# torchdcn analyze",
        "",
        f"Checkpoints: {', '.join(s['checkpoint'])}. {count} images; node on `{layer}` at the "
        "centre of each image's largest object box.",
        "",
    ]
    if "dilation" in s["tools"]:
        lines += [
            "## Effective dilation (v1 Table 2)",
            "",
            "Mean distance between adjacent sampling locations of each filter (cells of the "
            "layer's input), mean ± std (positions) per class of the filter centre: objects "
            f"by area (small < {thresholds[0]:g} px, medium < {thresholds[1]:g} px, large) and "
            "background.",
            "",
        ]
        for m in models:
            lines += [f"### {m.name}", ""]
            if m.dilation is None:
                lines += ["No deformable layer: every filter keeps its dilation.", ""]
            else:
                lines += [m.dilation.markdown(), ""]
    if "saliency" in s["tools"]:
        lines += [
            "## Error-bounded saliency regions (v2 section 2)",
            "",
            f"Smallest square window around the node whose masked image keeps the node's "
            f"response within {s['bound']:g} (relative, 2-norm over channels).",
            "",
            "| model | mean area (px) ± std | median area | median area / object box area |",
            "|---|---|---|---|",
        ]
        for m in models:
            med = f"{statistics.median(m.saliency_areas):.0f}" if m.saliency_areas else "-"
            lines.append(f"| {m.name} | {mean_sd(m.saliency_areas)} | {med} | {_ratio_line(m)} |")
        sizes = [c for c in ("small", "medium", "large", "background")
                 if any(c in m.saliency_by_size for m in models)]  # fmt: skip
        lines += [
            "",
            "Mean area (px) ± std by the size of the image's largest object (images):",
            "",
            "| model | " + " | ".join(sizes) + " |",
            "|---" * (len(sizes) + 1) + "|",
        ]
        for m in models:
            cells = [
                f"{mean_sd(m.saliency_by_size.get(c, []))} ({len(m.saliency_by_size.get(c, []))})"
                for c in sizes
            ]
            lines.append(f"| {m.name} | " + " | ".join(cells) + " |")
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for tool, path in figures.items():
            lines += [f"![{tool}]({Path(path).name})", "", FIGURES[tool][1] + ".", ""]
    missing = [t for t in s["tools"] if t in FIGURES and t not in figures and t != "saliency"]
    if missing:
        lines += [
            "Not drawn (no model with the layers they need): " + ", ".join(missing) + ".",
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
