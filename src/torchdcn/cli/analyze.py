"""``torchdcn analyze --checkpoint CKPT [CKPT ...] --out DIR``: the papers' analysis tools on
trained models (:mod:`torchdcn.analysis`), figures and a markdown report.

Every checkpoint (``mnist_cnn`` of ``train`` / ``demo``, or a detector) is rebuilt with
:func:`~torchdcn.cli.presets.model_from_checkpoint` and analysed on the same ``--images`` images:

- ``mnist_cnn``: distorted-MNIST test digits, taken in turn from the levels scale 0.5, 0.6, 1.0
  (train-like), 1.5 and 1.8; the object box of a digit is the box of its ink (pixels above 0.25).
- detectors: the COCO-format evaluation set (``--data-root`` / ``--ann-file``, sizes of the
  checkpoint); boxes and labels are the ground truth, areas in the file's pixels.

The node of every image is the position of ``--layer``'s output nearest to the centre of the
image's largest object box (the map's centre without a box); without ``--layer``: the last
deformable conv (a detector without one, e.g. R-FCN with only deformable PS pooling: its
backbone's last conv). Segmentation checkpoints (``deeplab``) are refused (a usage error).
Written to ``--out``: ``erf.png``, ``effective_sampling.png``, ``saliency.png``, ``roi_bins.png``
(one row per model, one column per image) and ``report.md`` (effective-dilation table per model,
saliency areas, the settings).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .option import UsageError

#: the digit levels the classifier is analysed on, in turn
MNIST_LEVELS = ("scale 0.5", "scale 0.6", "train-like", "scale 1.5", "scale 1.8")
#: area thresholds on the 48-pixel digit canvas (COCO's are for ~640-pixel photographs)
MNIST_AREAS = (16.0**2, 32.0**2)
#: the presets' tasks analyze has data and a forward pass for (not ``segmentation``)
ANALYZED_TASKS = ("classification", "detection")


@dataclass
class Sample:
    """One image to analyse: ``image`` ``[C, H, W]`` in [0, 1], ``boxes`` ``[M, 4]`` pixels,
    ``areas`` ``[M]`` (for the size classes), and a name."""

    image: torch.Tensor
    boxes: torch.Tensor
    areas: torch.Tensor
    name: str
    size: str = "background"


@dataclass
class Analysed:
    """One model: its name, the model, whether it is a detector, and what the tools found."""

    name: str
    model: Any
    detector: bool
    dilation: Any = None
    saliency_areas: list[float] = field(default_factory=list)
    saliency_ratio: list[float] = field(default_factory=list)
    saliency_by_size: dict[str, list[float]] = field(default_factory=dict)
    rows: dict[str, list] = field(default_factory=dict)


def ink_box(image: torch.Tensor, thresh: float = 0.25) -> torch.Tensor:
    """``[1, 4]`` box (pixel edges) of the pixels of ``image`` ``[C, H, W]`` above ``thresh``
    (``[0, 4]`` for a blank image)."""
    ys, xs = torch.nonzero(image.amax(0) > thresh, as_tuple=True)
    if len(ys) == 0:
        return torch.zeros(0, 4)
    return torch.tensor(
        [[xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5]], dtype=torch.float32
    )


def mnist_samples(data_root: str | None, count: int) -> list[Sample]:
    """``count`` distorted test digits, level by level (see the module docstring)."""
    from ..data.distorted_mnist import TEST_LEVELS, distorted_mnist

    per_level = -(-count // len(MNIST_LEVELS))
    levels = {k: TEST_LEVELS[k] for k in MNIST_LEVELS}
    _, tests = distorted_mnist(data_root, test_levels=levels, limit_test=max(per_level, 10))
    out = []
    for i in range(count):
        level = MNIST_LEVELS[i % len(MNIST_LEVELS)]
        image, label = tests[level][i // len(MNIST_LEVELS)]
        box = ink_box(image)
        area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
        out.append(Sample(image, box, area, f"digit {int(label)}, {level}"))
    return out


def detection_samples(s: dict[str, Any], data: dict[str, Any], count: int) -> list[Sample]:
    """The first ``count`` images of the evaluation set, with their ground truth."""
    from .detection import evaluation_set

    settings = {**s, "min_size": None, "max_size": None, "limit_test": count}
    dataset = evaluation_set(settings, data)
    out = []
    for i in range(min(count, len(dataset))):
        image, target = dataset[i]
        boxes = target["boxes"].float().reshape(-1, 4)
        (oh, ow), (h, w) = target.get("orig_size", (1, 1)), target.get("size", (1, 1))
        scale = (oh * ow) / max(h * w, 1)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * scale
        out.append(Sample(image, boxes, areas, f"image {target.get('image_id', i)}"))
    return out


def _node(sample: Sample, stride: int, size: tuple[int, int]) -> tuple[int, int]:
    """The cell of a ``size`` map nearest to the centre of the sample's largest box."""
    if len(sample.boxes) == 0:
        return size[0] // 2, size[1] // 2
    b = sample.boxes[int(sample.areas.argmax())]
    cy, cx = float(b[1] + b[3]) / 2, float(b[0] + b[2]) / 2
    return (
        min(max(round(cy / stride), 0), size[0] - 1),
        min(max(round(cx / stride), 0), size[1] - 1),
    )


def _choose_layers(models: list[Analysed], layer: str | None, below: str | None):
    """``(layer, below)``: the given ones checked (``--layer`` a module of every model,
    ``--below`` a deformable layer of some model; a ``UsageError`` otherwise), or the defaults
    of the module docstring."""
    from ..analysis.probe import deformable_layers

    names = next(
        (list(deformable_layers(m.model)) for m in models if deformable_layers(m.model)), []
    )
    for m in models if layer is not None else []:
        modules = [n for n, _ in m.model.named_modules() if n]
        if layer not in modules:
            raise UsageError(
                f"--layer {layer}: {m.name} has no such module (e.g. {', '.join(modules[:8])})"
            )
    if below is not None and not any(below in deformable_layers(m.model) for m in models):
        raise UsageError(
            f"--below {below}: no model has a deformable layer of that name (deformable layers: "
            f"{', '.join(names) or 'none'})"
        )
    if layer is None:
        if names:
            layer = names[-1]
        elif not models[0].detector:
            layer = "body.2"
        else:  # e.g. R-FCN with deformable PS pooling only: the backbone's last conv
            layer = _last_backbone_conv(models[0].model)
            if layer is None:
                raise UsageError(
                    "no model has a deformable layer: give the node's module with --layer"
                )
    if below is None and names:
        below = names[names.index(layer) - 1] if layer in names and names.index(layer) else None
        below = below or (layer if layer in names else names[-1])
    return layer, below


def _last_backbone_conv(model: Any) -> str | None:
    """The name of the last ``nn.Conv2d`` under ``model.backbone`` (``None`` without one)."""
    from torch import nn

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return None
    names = [n for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    return f"backbone.{names[-1]}" if names else None


def _forward(detector: bool):
    from ..analysis.probe import default_forward, detector_forward

    return detector_forward if detector else default_forward


def run_analyze(s: dict[str, Any]) -> Path:
    """The command; returns the report's path."""
    from tqdm import tqdm

    from ..analysis.effective_dilation import COCO_AREAS, DilationTable, effective_dilation
    from ..analysis.probe import deformable_layers, feature_stride, layer_output
    from ..engine.device import resolve_device
    from .presets import model_from_checkpoint

    if not s.get("checkpoint"):
        raise UsageError("--checkpoint is required (e.g. --checkpoint runs/demo/v2-seed0/last.pt)")
    if s["area_thresholds"] is not None:
        from ..analysis.effective_dilation import check_thresholds

        try:
            check_thresholds(s["area_thresholds"])
        except ValueError:
            small, medium = s["area_thresholds"]
            raise UsageError(
                f"--area-thresholds {small:g} {medium:g}: the small objects' limit must be below "
                "the medium ones' (e.g. --area-thresholds 256 1024)"
            ) from None
    device = resolve_device(s["device"])
    models: list[Analysed] = []
    data = None
    for path in s["checkpoint"]:
        model, preset, info = model_from_checkpoint(path, "to analyze")
        if preset.task not in ANALYZED_TASKS:
            raise UsageError(
                f"{path} is a {preset.task} checkpoint ({info.get('model')}); analyze supports "
                "classification (mnist_cnn) and detection (faster_rcnn, mask_rcnn, rfcn, "
                "rpn_detector) checkpoints"
            )
        detector = preset.task == "detection"
        if models and detector != models[0].detector:
            raise UsageError("--checkpoint: give only classifiers or only detectors, not both")
        if detector and data is None:
            from .detection import check_detection_info

            data = check_detection_info(info, path)
        deform = (info.get("model_config") or {}).get("deform")
        name = f"{Path(path).parent.name or Path(path).stem} ({deform or 'plain'})"
        models.append(Analysed(name, model.to(device).eval(), detector))
    detector = models[0].detector
    if detector:
        samples = detection_samples(s, data, s["images"])
        thresholds = tuple(s["area_thresholds"] or COCO_AREAS)
    else:
        samples = mnist_samples(s["data_root"], s["images"])
        thresholds = tuple(s["area_thresholds"] or MNIST_AREAS)
    if not samples:
        raise UsageError("no images to analyse")
    for sample in samples:  # the size class of the image's largest object
        big = float(sample.areas.max()) if len(sample.areas) else None
        sample.size = (
            "background" if big is None else
            "small" if big < thresholds[0] else "medium" if big < thresholds[1] else "large"
        )  # fmt: skip
    layer, below = _choose_layers(models, s["layer"], s["below"])
    out = Path(s["out"])
    out.mkdir(parents=True, exist_ok=True)
    tools, shown = s["tools"], min(s["figure_images"], len(samples))
    total = len(models) * len(samples)
    bar = tqdm(total=total, desc="analyze", unit="image", disable=not s["progress"])
    for m in models:
        forward = _forward(detector)
        deformable = bool(deformable_layers(m.model))
        if "dilation" in tools and deformable:
            m.dilation = DilationTable()
        for i, sample in enumerate(samples):
            image = sample.image[None].to(device)
            if m.dilation is not None:
                effective_dilation(
                    m.model, image, [sample.boxes], [sample.areas], thresholds, forward, m.dilation
                )
            with torch.no_grad():
                feats = layer_output(m.model, image, layer, forward)
            if feats.dim() != 4:
                raise UsageError(
                    f"--layer {layer}: it outputs {list(feats.shape)}, not a map [N, C, h, w] "
                    "with positions for a node (e.g. class logits): choose a convolutional layer"
                )
            stride = feature_stride(image.shape[-2], feats.shape[-2])
            node = _node(sample, stride, feats.shape[-2:])
            _per_image(m, sample, image, layer, below, node, stride, s, forward, i < shown)
            bar.update(1)
    bar.close()
    from .analyze_report import write_figures, write_report

    figures = write_figures(models, samples[:shown], out, layer, below)
    return write_report(models, s, out, figures, layer, below, thresholds, len(samples))


def _per_image(m, sample, image, layer, below, node, stride, s, forward, draw) -> None:
    """Run the per-node tools on one image; keep what the figures need."""
    from ..analysis.effective_sampling import effective_sampling_locations
    from ..analysis.erf import effective_receptive_field
    from ..analysis.figures import Overlay
    from ..analysis.probe import deformable_layers
    from ..analysis.saliency import saliency_regions

    tools = s["tools"]
    centre = (node[0] * stride, node[1] * stride)
    img = sample.image
    title = f"{m.name}\n{sample.name}"
    if "erf" in tools and draw:
        erf = effective_receptive_field(m.model, image, layer, node, forward=forward)[0].cpu()
        m.rows.setdefault("erf", []).append(Overlay(img, heat=erf, centre=centre, title=title))
    if "sampling" in tools and draw and below in deformable_layers(m.model):
        es = effective_sampling_locations(m.model, image, layer, node, below, forward=forward)
        m.rows.setdefault("sampling", []).append(
            Overlay(img, points=es.points[0].cpu(), weights=es.weights[0].cpu(), centre=centre,
                    title=title)
        )  # fmt: skip
    if "saliency" in tools:
        reg = saliency_regions(m.model, image, layer, node, bound=s["bound"], forward=forward)
        area = float(reg.areas[0])
        m.saliency_areas.append(area)
        m.saliency_by_size.setdefault(sample.size, []).append(area)
        box_area = _largest_box_area(sample)
        if box_area:
            m.saliency_ratio.append(area / box_area)
        if draw:
            m.rows.setdefault("saliency", []).append(
                Overlay(img, boxes=reg.boxes, regular_boxes=sample.boxes, centre=centre,
                        title=f"{title}\narea {area:.0f} px")
            )  # fmt: skip
    if "roi-bins" in tools and draw and m.detector:
        from ..analysis.roi_bins_overlay import roi_bins_overlay

        overlay = roi_bins_overlay(m.model, image[0], title, sample.boxes)
        if overlay is not None:
            m.rows.setdefault("roi-bins", []).append(overlay)


def _largest_box_area(sample: Sample) -> float | None:
    """Area of the sample's largest object box in the pixels of ``sample.image`` (those of the
    saliency regions; ``sample.areas`` may be in the file's pixels, e.g. a detector's resized
    image), or ``None`` without a box of positive area."""
    if len(sample.boxes) == 0:
        return None
    b = sample.boxes[int(sample.areas.argmax())]
    area = float((b[2] - b[0]).clamp_min(0) * (b[3] - b[1]).clamp_min(0))
    return area or None


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` (``-`` for no values)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"
