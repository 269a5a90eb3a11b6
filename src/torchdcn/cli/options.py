"""Options of the ``torchdcn`` commands.

Each command's options are a table of :class:`Option` rows; the parser
(:mod:`torchdcn.cli.main`) and the config-file reader (:mod:`torchdcn.cli.settings`) both read
these tables, so a key in a YAML/TOML file is checked and converted exactly as the flag would be.
Rows several commands share are in :mod:`.common_options`; ``detect`` and ``segment``'s in
:mod:`.inference_options`, ``analyze``'s in :mod:`.analyze_options`.
"""

from __future__ import annotations

import textwrap

from .analyze_options import ANALYZE_OPTIONS
from .common_options import (
    ANN_FILE,
    DATA_ROOT,
    DEVICE,
    IMAGE_DIR,
    LIMIT_TEST,
    LIMIT_TRAIN,
    MODEL,
    NUM_WORKERS,
    PROGRESS,
    TASK,
    THREADS,
    WIDTH,
    size_option,
)
from .data import DATA_OPTIONS
from .demo_detection import DETECTION_DEMO_OPTIONS
from .inference_options import DETECT_OPTIONS, SEGMENT_OPTIONS
from .option import (
    Option,
    _deform,
    _float,
    _float_or_none,
    _int_or_none,
)
from .presets import MODELS

EPILOG = (
    """\
configuration: every option may also be set in the file given by --config (YAML: .yaml/.yml,
TOML: .toml), one key per option, e.g. `lr: 0.01` or `batch_size = 128`; flags given on the
command line override the file, which overrides the defaults shown.

exit codes: 0 success; 1 failure while running; 2 bad arguments or config file; 3 missing or
invalid input (data not found, checkpoint missing, corrupt or from other settings); 130
interrupted (Ctrl-C).

data: the MNIST sample mnist5k/mnist_5k.csv.gz is read from --data-root, else $TORCHDCN_DATA,
else ../shared/data next to the current directory or the project checkout. Detectors (--model
faster_rcnn or rpn_detector, or --task detection) read a COCO-style folder: --data-root DIR
holding annotations/instances_<split>.json and the images in <split>/ (or give --ann-file and
--image-dir); without --data-root, coco128/ under those same places. Segmenters (--task
segmentation, --model deeplab) read the same COCO-style folders (label maps rendered from the
instance masks) or a VOC-layout one (JPEGImages/, SegmentationClass/ label PNGs,
ImageSets/Segmentation/train.txt and val.txt).

"""
    + textwrap.fill(
        "detector defaults: the detectors (--model "
        + ", ".join(n for n, p in MODELS.items() if p.task == "detection")
        + ") train with "
        + ", ".join(
            f"--{k.replace('_', '-')} {' '.join(f'{x:g}' for x in v) if isinstance(v, list) else v}"
            for k, v in MODELS["faster_rcnn"].defaults.items()
        )
        + " unless the config file or a flag says otherwise; without --milestones, the "
        "milestones scale with --epochs (8 and 11 of 12 epochs: --epochs 6 decays at 4 and 5.5).",
        100,
    )
    + "\n"
)


DETECTION_TRAIN_OPTIONS = (
    TASK,
    Option(
        "backbone",
        str,
        "resnet50",
        "detectors: resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x4d/32x8d",
        metavar="NAME",
    ),
    Option(
        "roi-pool",
        str,
        None,
        "faster_rcnn: RoI pooling (none: mdeform with --deform v2, else roi_align)",
        ("roi_pool", "roi_align", "deform", "mdeform"),
    ),
    Option(
        "fpn", None, False, "faster_rcnn: FPN neck (P2-P6) instead of the papers' layout", flag=True
    ),
    Option(
        "ps-pool",
        str,
        None,
        "rfcn: position-sensitive RoI pooling (none: ps)",
        ("ps", "ps_align", "deform"),
    ),
    Option(
        "base-channels",
        _int_or_none,
        None,
        "detectors, deeplab: backbone width, its stages N*(1,2,4,8) channels (none: 64, the "
        "published ResNets; e.g. 16 to train from scratch; ResNeXt 32x4d: a multiple of 16)",
        metavar="N",
        at_least=1,
    ),
    Option(
        "mimic",
        str,
        None,
        "faster_rcnn, mask_rcnn: R-CNN feature mimicking in training (v2 section 3.3) on "
        "positive, all or negative RoIs (none: off)",
        ("positive", "all", "negative"),
    ),
    Option(
        "mimic-cls-weight",
        _float_or_none,
        None,
        "with --mimic: weight of its classification loss (none: 0.1; 0 drops it, v2 Table 3)",
        metavar="W",
        at_least=0,
    ),
    Option(
        "pretrained-backbone",
        str,
        None,
        "detectors: ImageNet ResNet weights file (torchvision/timm) for the backbone",
        metavar="PATH",
    ),
    Option(
        "freeze-at",
        _int_or_none,
        None,
        "detectors, deeplab: backbone stages that do not train, 0 none, 1 the stem, 2 stem and "
        "conv2, up to 5 (none: 2 with --pretrained-backbone, as Detectron; 0 without)",
        metavar="N",
        at_least=0,
    ),
    Option(
        "backbone-norm",
        str,
        None,
        "detectors, deeplab: the backbone's BatchNorm frozen (Detectron) or trained (none: "
        "frozen with --pretrained-backbone, trained without)",
        ("frozen", "train"),
    ),
    ANN_FILE,
    IMAGE_DIR,
    Option(
        "val-ann-file",
        str,
        None,
        "detectors: instances JSON to evaluate on (none: the training one)",
        metavar="FILE",
    ),
    Option(
        "val-image-dir",
        str,
        None,
        "detectors: images of --val-ann-file (none: as for --image-dir)",
        metavar="DIR",
    ),
    size_option("min-size", 600, "shorter image side after resizing"),
    size_option("max-size", 1000, "cap on the longer image side"),
)
SEGMENTATION_TRAIN_OPTIONS = (
    Option(
        "output-stride",
        int,
        None,
        "deeplab: stride of conv5, 16 or 8 (none: 16)",
        ("16", "8"),
    ),
    Option(
        "head",
        str,
        None,
        "deeplab: 1x1 conv to 1024 (deeplab, the v1 paper's) or ASPP (none: deeplab)",
        ("deeplab", "aspp"),
    ),
)
#: train options only the detectors read, and only the classifier reads (giving one for the other
#: kind of model is an error); segmenters read the detectors' data and backbone options too
DETECTION_ONLY = tuple(o.name for o in DETECTION_TRAIN_OPTIONS if o is not TASK)
SEGMENTATION_ONLY = tuple(o.name for o in SEGMENTATION_TRAIN_OPTIONS)
CLASSIFICATION_ONLY = ("width",)
WARMUP_NOTE = " (one not shorter than the run is kept, with a warning)"

TRAIN_OPTIONS = (
    DATA_ROOT,
    MODEL,
    Option(
        "deform",
        _deform,
        None,
        "none (plain), v1 or v2: the CNN's body layers; detectors: v1 deformable conv5, v2 "
        "modulated conv3-conv5 (and mdeform RoI pooling)",
        ("none", "v1", "v2"),
    ),
    WIDTH,
    *DETECTION_TRAIN_OPTIONS,
    *SEGMENTATION_TRAIN_OPTIONS,
    Option("epochs", int, 6, "passes over the training set (4000 digits)", at_least=1),
    Option("batch-size", int, 64, "global batch size (split over torchrun processes)", at_least=1),
    Option("seed", int, 0, "seed of initialisation, data order and distortions", at_least=0),
    Option("optimizer", str, "adamw", "optimizer", ("sgd", "adamw")),
    Option(
        "lr",
        _float,
        3e-3,
        "base learning rate (offset predictors: times their multiplier)",
        above=0,
    ),
    Option("weight-decay", _float, 1e-4, "weight decay", at_least=0),
    Option(
        "momentum",
        _float,
        0.9,
        "SGD momentum, in [0, 1) (--optimizer sgd only)",
        at_least=0,
        below=1,
    ),
    Option("schedule", str, "cosine", "learning-rate schedule after warm-up", ("cosine", "step")),
    Option("warmup-steps", int, 50, "linear warm-up steps" + WARMUP_NOTE, at_least=0),
    Option(
        "warmup-factor",
        _float,
        0.001,
        "learning-rate factor at the first warm-up step, in [0, 1]",
        at_least=0,
        at_most=1,
    ),
    Option(
        "milestones",
        _float,
        [],
        "epochs where the step schedule multiplies by gamma (--schedule step only; a preset's "
        "scale with --epochs)",
        None,
        "*",
        at_least=0,
    ),
    Option(
        "gamma",
        _float,
        0.1,
        "factor of the step schedule at each milestone, in (0, 1] (--schedule step only)",
        above=0,
        at_most=1,
    ),
    Option(
        "min-lr-factor",
        _float,
        0.0,
        "final factor of the cosine schedule, in [0, 1] (--schedule cosine only)",
        at_least=0,
        at_most=1,
    ),
    Option("amp", None, False, "mixed precision (bfloat16 on CPU, float16 on CUDA)", flag=True),
    Option(
        "sync-bn",
        None,
        False,
        "under torchrun: BatchNorm statistics over the global batch, so N processes train like "
        "one (detectors, deeplab with trained BatchNorm; SyncBatchNorm on CUDA, an all-reduce "
        "BatchNorm on CPU)",
        flag=True,
    ),
    Option(
        "clip-grad-norm",
        _float_or_none,
        None,
        "clip the gradient norm to this (none: off)",
        metavar="X",
        above=0,
    ),
    Option(
        "output-dir",
        str,
        "runs/train",
        "folder for last.pt, metrics.jsonl, results.json",
        metavar="DIR",
    ),
    Option(
        "checkpoint-every",
        int,
        20,
        "also checkpoint every N steps (0: epoch ends only)",
        at_least=0,
    ),
    Option("log-every", int, 10, "log the loss every N steps", at_least=1),
    Option("eval-every", int, 1, "evaluate every N epochs (0: at the end only)", at_least=0),
    Option(
        "resume",
        str,
        None,
        "continue from a checkpoint: a path, or 'auto' for "
        "<output-dir>/last.pt; a missing or mismatched one is an error",
        metavar="PATH|auto",
    ),
    Option(
        "overwrite", None, False, "start over even if <output-dir> holds a checkpoint", flag=True
    ),
    Option(
        "init-from",
        str,
        None,
        "start a new run from the model weights of a torchdcn checkpoint or a state_dict file "
        "(the whole model; not its optimizer, schedule or step; not with --resume)",
        metavar="PATH",
    ),
    Option(
        "init-strict",
        None,
        True,
        "with --init-from: refuse a file whose keys or shapes differ from the model's "
        "(--no-init-strict: load what fits, list the rest)",
        flag=True,
    ),
    DEVICE,
    Option(
        "tensorboard", None, False, "also log to <output-dir>/tb (needs tensorboard)", flag=True
    ),
    LIMIT_TRAIN,
    LIMIT_TEST,
    NUM_WORKERS,
    PROGRESS,
    THREADS,
)

EVAL_OPTIONS = (
    Option(
        "checkpoint",
        str,
        None,
        "checkpoint to evaluate (e.g. runs/train/last.pt); required",
        metavar="PATH",
    ),
    DATA_ROOT,
    ANN_FILE,
    IMAGE_DIR,
    size_option("min-size", None, "shorter image side (none: the checkpoint's)"),
    size_option("max-size", None, "longer side cap (none: the checkpoint's)"),
    Option(
        "batch-size",
        _int_or_none,
        None,
        "evaluation batch size (none: 250 digits, 2 detection images)",
        metavar="N",
        at_least=1,
    ),
    DEVICE,
    Option(
        "json",
        str,
        None,
        "also write the accuracies / COCO metrics to this JSON file",
        metavar="PATH",
    ),
    LIMIT_TEST,
    NUM_WORKERS,
    THREADS,
)

DEMO_OPTIONS = (
    Option(
        "part",
        str,
        "all",
        "what to run: the classification demo, the detection demo (digit scenes), or both",
        ("all", "classification", "detection"),
    ),
    DATA_ROOT,
    Option(
        "seeds",
        int,
        [0, 1, 2],
        "seeds; every model trains once per seed (the detection part: the first seed only)",
        None,
        "+",
        at_least=0,
    ),
    Option("epochs", int, 6, "passes over the 4000 training digits per run", at_least=1),
    Option("batch-size", int, 64, "batch size", at_least=1),
    Option("lr", _float, 3e-3, "AdamW learning rate", above=0),
    Option("weight-decay", _float, 1e-4, "AdamW weight decay", at_least=0),
    Option(
        "warmup-steps",
        int,
        50,
        "linear warm-up steps before the cosine decay" + WARMUP_NOTE,
        at_least=0,
    ),
    WIDTH,
    Option(
        "plain-long-factor",
        int,
        3,
        "also train the plain CNN this many times longer, a "
        "control with about the deformable models' training time (0: skip)",
        at_least=0,
    ),
    Option(
        "out-dir",
        str,
        "runs/demo",
        "folder for results.md, results.json, checkpoints",
        metavar="DIR",
    ),
    Option(
        "figure",
        str,
        None,
        "PNG of sampling locations (none: <out-dir>/sampling_locations.png)",
        metavar="PATH",
    ),
    Option("markdown", str, None, "report file (none: <out-dir>/results.md)", metavar="PATH"),
    LIMIT_TRAIN,
    LIMIT_TEST,
    Option(
        "jobs",
        int,
        0,
        "trainings run side by side in worker processes (0: one per core)",
        at_least=0,
    ),
    PROGRESS,
    Option(
        "threads",
        int,
        0,
        "CPU threads per training (0: 1 with several jobs, else all)",
        at_least=0,
    ),
    *DETECTION_DEMO_OPTIONS,
)

COMMANDS: dict[str, tuple[str, tuple[Option, ...]]] = {
    "train": (
        "train a model preset (--model: the demo CNN on distorted MNIST, or a detector on "
        "COCO-style data); for DDP run it under torchrun, e.g. "
        "`torchrun --nproc-per-node 2 -m torchdcn train ...` (gloo on CPU, nccl on GPU)",
        TRAIN_OPTIONS,
    ),
    "eval": (
        "evaluate a checkpoint: accuracy per test level, or a detector's COCO table",
        EVAL_OPTIONS,
    ),
    "detect": (
        "run a detector checkpoint on images: a PNG per image with boxes, labels and scores, "
        "and the COCO results JSON",
        DETECT_OPTIONS,
    ),
    "segment": (
        "run a segmenter checkpoint on images: a colour-coded overlay PNG and a label PNG per "
        "image, and segments.json",
        SEGMENT_OPTIONS,
    ),
    "demo": (
        "the tour: plain vs v1 vs v2 digit classifiers over several seeds (accuracy table, "
        "sampling figure), then plain vs v2 Faster R-CNN on digit scenes (AP table, "
        "detections and RoI-bin figures)",
        DEMO_OPTIONS,
    ),
    "analyze": (
        "the papers' analysis tools on checkpoints: effective dilation, receptive fields, "
        "sampling locations, saliency regions, RoI bins (PNG figures and report.md)",
        ANALYZE_OPTIONS,
    ),
    "data": (
        "generate a data set: `torchdcn data digit-scenes --out DIR` writes COCO-format digit "
        "scenes (boxes, RLE masks, semantic PNGs; train, val, test and held-out geometry)",
        DATA_OPTIONS,
    ),
}
