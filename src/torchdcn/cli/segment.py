"""``torchdcn segment IMAGE_OR_DIR --checkpoint CKPT --out DIR``: a segmenter run on image files.

For every image (a folder contributes its image files, sorted, not recursing) the model of the
checkpoint sees the image resized as in training (shorter side ``min_size``, longer at most
``max_size``: the checkpoint's unless given); its scores are resized bilinearly back to the
file's size and the class of each pixel is their argmax. Written to ``--out``:

- ``<stem>.png`` per image: the photograph with each class's pixels blended with the class's
  colour (:func:`torchdcn.analysis.label_overlay.overlay_labels`, opacity ``--alpha``; background
  left as is);
- ``<stem>_labels.png``: the label map as a palette PNG (pixel value = label, VOC colours);
- ``segments.json``: ``{"classes": [{"label", "name", "color"}], "images": [{"file_name",
  "path", "height", "width", "png", "labels_png", "pixels": {name: count}}]}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .option import UsageError


def run_segment(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``segment`` command with its settings; returns the ``images`` entries written."""
    from ..analysis.label_overlay import label_image, label_palette, overlay_labels
    from ..data.transforms import detection_transforms
    from ..engine.device import resolve_device
    from ..engine.distributed import set_cpu_threads
    from .detect import _png_names, _read, image_files
    from .presets import model_from_checkpoint
    from .segmentation import check_segmentation_info

    if not 0.0 <= s["alpha"] <= 1.0:
        raise UsageError(f"--alpha must be between 0 and 1, got {s['alpha']}")
    set_cpu_threads(s["threads"] or torch.get_num_threads())
    files = image_files(s["inputs"])
    model, preset, info = model_from_checkpoint(s["checkpoint"], "to segment with")
    if preset.task != "segmentation":
        raise UsageError(
            f"{s['checkpoint']} is a {preset.task} checkpoint ({info.get('model')}); segment "
            "needs a segmenter's (deeplab)"
        )
    data = check_segmentation_info(info, s["checkpoint"])
    names = ["background", *data["class_names"]]
    palette = label_palette()
    transform = detection_transforms(
        False, s["min_size"] or data["min_size"], s["max_size"] or data["max_size"]
    )
    device = resolve_device(s["device"])
    model.to(device).eval()
    out = Path(s["out"])
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for path, png in zip(files, _png_names(files), strict=True):
        picture = _read(path)
        image, _ = transform(picture, {})
        with torch.no_grad():
            scores = model(image[None].to(device))  # [1, C + 1, h, w]
            scores = F.interpolate(
                scores.float(), size=(picture.height, picture.width), mode="bilinear",
                align_corners=False,
            )  # fmt: skip
        labels = scores[0].argmax(0).cpu()
        labels_png = png.removesuffix(".png") + "_labels.png"
        overlay_labels(picture, labels, s["alpha"]).save(out / png)
        label_image(labels).save(out / labels_png)
        counts = torch.bincount(labels.reshape(-1), minlength=len(names)).tolist()
        pixels = {names[k]: int(n) for k, n in enumerate(counts) if n}
        entries.append(
            {
                "file_name": path.name,
                "path": str(path),
                "height": picture.height,
                "width": picture.width,
                "png": png,
                "labels_png": labels_png,
                "pixels": pixels,
            }
        )
        shown = ", ".join(f"{k} {100 * v / labels.numel():.0f}%" for k, v in pixels.items())
        print(f"{path}: {shown} -> {out / png}")
    classes = [
        {"label": k, "name": name, "color": palette[k].tolist()} for k, name in enumerate(names)
    ]
    (out / "segments.json").write_text(
        json.dumps({"classes": classes, "images": entries}, indent=1)
    )
    print(f"results: {out / 'segments.json'} ({len(entries)} images)")
    return entries
