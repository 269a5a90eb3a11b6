"""Option rows several ``torchdcn`` commands share (data, threads, model preset, sizes)."""

from __future__ import annotations

from .option import Option, _int_or_none
from .presets import MODELS

DATA_ROOT = Option(
    "data-root",
    str,
    None,
    "folder holding mnist5k/, or a detector's COCO-style folder (none: $TORCHDCN_DATA or "
    "../shared/data, and coco128/ in it for detectors)",
    metavar="DIR",
)
PROGRESS = Option("progress", None, True, "show a progress bar (tqdm)", flag=True)
THREADS = Option(
    "threads",
    int,
    0,
    "CPU threads for torch and Numba (0: torch's, e.g. OMP_NUM_THREADS)",
    at_least=0,
)
WIDTH = Option(
    "width",
    int,
    32,
    "channels of the CNN body (width // 2 divisible by 4, e.g. 16, 32)",
    at_least=8,
)
LIMIT_TRAIN = Option(
    "limit-train",
    _int_or_none,
    None,
    "train on N samples: digits spread over the classes, or the first N images (quick "
    "checks; at least one batch)",
    metavar="N",
    at_least=1,
)
LIMIT_TEST = Option(
    "limit-test",
    _int_or_none,
    None,
    "test on N samples: digits spread over the classes, or the first N images (quick checks)",
    metavar="N",
    at_least=1,
)
NUM_WORKERS = Option(
    "num-workers",
    int,
    0,
    "DataLoader worker processes per process (0: read data in the main process)",
    at_least=0,
)
MODEL = Option(
    "model",
    str,
    "mnist_cnn",
    "model preset (torchdcn.cli.presets.MODELS)",
    tuple(MODELS),
)
TASK = Option(
    "task",
    str,
    None,
    "classification, detection or segmentation; none: the --model's (--task alone picks "
    "mnist_cnn, faster_rcnn or deeplab)",
    ("classification", "detection", "segmentation"),
)
ANN_FILE = Option(
    "ann-file",
    str,
    None,
    "detectors: the COCO instances JSON (none: the one under <data-root>/annotations)",
    metavar="FILE",
)
IMAGE_DIR = Option(
    "image-dir",
    str,
    None,
    "detectors: folder of the images (none: <data-root>/<split> of instances_<split>.json)",
    metavar="DIR",
)


DEVICE = Option("device", str, "auto", "cpu, cuda, cuda:N or auto", metavar="DEVICE")


def size_option(name: str, default: int | None, what: str, who: str | None = "detectors") -> Option:
    """An image-size row (``--min-size`` / ``--max-size``); ``who`` reads it, in the help."""
    text = f"{who}: {what}" if who else what
    return Option(name, int, default, text, metavar="PIXELS", at_least=1)
