"""Options of ``torchdcn analyze`` (kept apart from :mod:`.analyze` so ``--help`` stays fast)."""

from __future__ import annotations

from .common_options import DEVICE
from .option import Option, _float

#: the tools ``--tools`` picks from, in report order
TOOLS = ("dilation", "erf", "sampling", "saliency", "roi-bins")

ANALYZE_OPTIONS = (
    Option(
        "checkpoint",
        str,
        [],
        "checkpoints of 'torchdcn train' or 'torchdcn demo' (mnist_cnn or a detector); several "
        "(e.g. plain, v1, v2 twins) are compared on the same images and nodes; required",
        nargs="+",
        metavar="CKPT",
    ),
    Option(
        "data-root",
        str,
        None,
        "folder holding mnist5k/ (mnist_cnn: the distorted-MNIST test digits), or a detector's "
        "COCO-style folder (none: $TORCHDCN_DATA or ../shared/data, coco128/ for detectors)",
        metavar="DIR",
    ),
    Option("ann-file", str, None, "detectors: the COCO instances JSON", metavar="FILE"),
    Option("image-dir", str, None, "detectors: folder of the images", metavar="DIR"),
    Option("out", str, "runs/analyze", "folder for the PNG figures and report.md", metavar="DIR"),
    Option(
        "tools",
        str,
        list(TOOLS),
        "tools to run: dilation (v1 Table 2), erf, sampling (effective sampling locations), "
        "saliency (error-bounded regions), roi-bins (deformable RoI pooling bins, detectors)",
        choices=TOOLS,
        nargs="+",
    ),
    Option("images", int, 20, "images (digits) to analyse", at_least=1),
    Option("figure-images", int, 4, "images drawn per figure row", at_least=1),
    Option(
        "layer",
        str,
        None,
        "module whose output holds the node (none: the last deformable layer of the first "
        "deformable model; body.2 for plain mnist_cnn)",
        metavar="NAME",
    ),
    Option(
        "below",
        str,
        None,
        "deformable layer whose sampling locations are weighted (none: the one before --layer, "
        "or --layer itself)",
        metavar="NAME",
    ),
    Option("bound", _float, 0.1, "relative error bound of the saliency regions", at_least=0),
    Option(
        "area-thresholds",
        _float,
        None,
        "small and medium object areas in pixels (none: COCO's 1024 9216 for detectors, "
        "256 1024 on the 48-pixel digit canvas)",
        nargs=2,
        metavar="A",
        at_least=0,
    ),
    DEVICE,
    Option("progress", None, True, "show a progress bar (tqdm)", flag=True),
    Option(
        "threads",
        int,
        0,
        "CPU threads for torch and Numba (0: torch's, e.g. OMP_NUM_THREADS)",
        at_least=0,
    ),
)
