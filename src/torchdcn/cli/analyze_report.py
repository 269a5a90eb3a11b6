"""The outputs of ``torchdcn analyze`` (:mod:`.analyze`): figures, RoI-bin pictures, report.md."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

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
            f"response within {s['bound']:g} (relative, 2-norm over channels). Areas in pixels "
            "of the image the model reads (a detector's resized image), divided by the largest "
            "object box in the same pixels.",
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
