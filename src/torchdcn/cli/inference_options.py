"""Options of ``torchdcn detect`` and ``torchdcn segment`` (a checkpoint run on images)."""

from __future__ import annotations

from .common_options import DEVICE, THREADS, size_option
from .option import Option, _float

#: the positional images of ``detect`` and ``segment``
IMAGE_INPUTS = Option(
    "inputs",
    str,
    [],
    "images, or folders of images (.jpg, .jpeg, .png, .bmp, .webp)",
    nargs="*",
    metavar="IMAGE_OR_DIR",
    positional=True,
)

DETECT_OPTIONS = (
    IMAGE_INPUTS,
    Option(
        "checkpoint",
        str,
        None,
        "detector checkpoint written by 'torchdcn train' (e.g. runs/train/last.pt); required",
        metavar="PATH",
    ),
    Option(
        "out", str, "runs/detect", "folder for one PNG per image and detections.json", metavar="DIR"
    ),
    Option(
        "score-thresh",
        _float,
        0.5,
        "draw and keep detections scoring at least this (below the model's own threshold, "
        "0.05, the model keeps more)",
        at_least=0,
    ),
    Option(
        "ann-file",
        str,
        None,
        "COCO JSON whose image ids the results take (by file name; none: 1, 2, ... in order)",
        metavar="FILE",
    ),
    size_option("min-size", None, "shorter image side (none: the checkpoint's)"),
    size_option("max-size", None, "longer side cap (none: the checkpoint's)"),
    DEVICE,
    THREADS,
)

SEGMENT_OPTIONS = (
    IMAGE_INPUTS,
    Option(
        "checkpoint",
        str,
        None,
        "segmenter checkpoint written by 'torchdcn train --task segmentation'; required",
        metavar="PATH",
    ),
    Option(
        "out",
        str,
        "runs/segment",
        "folder for a colour-coded overlay PNG and a label PNG per image, and segments.json",
        metavar="DIR",
    ),
    Option("alpha", _float, 0.5, "opacity of the class colours over the image, 0 to 1", at_least=0),
    size_option("min-size", None, "shorter image side (none: the checkpoint's)", who=None),
    size_option("max-size", None, "longer side cap (none: the checkpoint's)", who=None),
    DEVICE,
    THREADS,
)
