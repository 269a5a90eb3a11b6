"""``torchdcn data digit-scenes --out DIR``: write the digit-scenes data set
(:mod:`torchdcn.data.digit_scenes`) as COCO-format folders that ``torchdcn train --data-root DIR``
reads.

This module's import is light (option rows only); the generator is imported when the command
runs.
"""

from __future__ import annotations

import time
from typing import Any

from .option import Option, UsageError, _float

DATASETS = ("digit-scenes",)


def _count(name: str, default: int, what: str) -> Option:
    return Option(name, int, default, f"images of the {what} split (0: skip it)", at_least=0)


DATA_OPTIONS = (
    Option(
        "dataset",
        str,
        None,
        "what to generate: digit-scenes",
        metavar="DATASET",
        positional=True,
    ),
    Option("out", str, None, "output folder (required)", metavar="DIR"),
    Option(
        "data-root",
        str,
        None,
        "folder holding mnist5k/ (none: $TORCHDCN_DATA or ../shared/data)",
        metavar="DIR",
    ),
    Option("seed", int, 0, "seed of every drawing (same seed: identical files)", at_least=0),
    _count("train-images", 2000, "train (training digits less the validation digits)"),
    _count("val-images", 200, "val (validation digits, training geometry)"),
    _count("val-heldout-images", 200, "val_heldout (validation digits, held-out geometry)"),
    _count("test-images", 500, "test (test digits, training geometry)"),
    _count("test-heldout-images", 500, "test_heldout (test digits, held-out geometry)"),
    Option("canvas", int, 128, "image side in pixels", at_least=32),
    Option("min-digits", int, 2, "fewest digits drawn per image", at_least=1),
    Option("max-digits", int, 6, "most digits drawn per image", at_least=1),
    Option(
        "heights",
        _float,
        [16.0, 44.0],
        "training-geometry digit heights in pixels: LO HI pairs (log-uniform in a pair)",
        nargs="+",
        at_least=2,
    ),
    Option(
        "rotation",
        _float,
        [0.0, 20.0],
        "training-geometry rotation magnitude in degrees: LO HI pairs in [0, 180] (random sign)",
        nargs="+",
        at_least=0,
        at_most=180,
    ),
    Option(
        "heldout-heights",
        _float,
        [9.0, 13.0, 52.0, 64.0],
        "held-out digit heights: LO HI pairs, outside the training heights",
        nargs="+",
        at_least=2,
    ),
    Option(
        "heldout-rotation",
        _float,
        [30.0, 45.0],
        "held-out rotation magnitudes in degrees: LO HI pairs in [0, 180]",
        nargs="+",
        at_least=0,
        at_most=180,
    ),
    Option("max-iou", _float, 0.15, "largest IoU between two digit boxes of an image", at_least=0),
    Option("clutter", None, True, "add 0-3 digit fragments per image (background)", flag=True),
    Option("overwrite", None, False, "replace splits already in --out", flag=True),
)


def _pairs(name: str, values: list[float]) -> tuple[tuple[float, float], ...]:
    if len(values) % 2 or not values:
        raise UsageError(f"--{name} takes LO HI pairs, got {len(values)} numbers: {values}")
    pairs = tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))
    if any(lo > hi for lo, hi in pairs):
        raise UsageError(f"--{name}: each pair must have LO <= HI, got {list(pairs)}")
    return pairs


def scene_config(s: dict[str, Any]) -> Any:
    """The :class:`~torchdcn.data.digit_scenes.SceneConfig` of the settings (UsageError if the
    values do not fit together)."""
    from ..data.digit_scenes import Geometry, SceneConfig, heights_overlap

    if s["min_digits"] > s["max_digits"]:
        raise UsageError(
            f"--min-digits {s['min_digits']} is more than --max-digits {s['max_digits']}"
        )
    heights = _pairs("heights", s["heights"])
    heldout = _pairs("heldout-heights", s["heldout_heights"])
    if heights_overlap(heights, heldout):
        raise UsageError(
            f"--heldout-heights {list(heldout)} overlap the training --heights {list(heights)}: "
            "held-out scales must lie outside the training range"
        )
    try:
        return SceneConfig(
            canvas=s["canvas"],
            digits=(s["min_digits"], s["max_digits"]),
            geometry=Geometry(heights=heights, rotation=_pairs("rotation", s["rotation"])),
            heldout_geometry=Geometry(
                heights=heldout, rotation=_pairs("heldout-rotation", s["heldout_rotation"])
            ),
            max_iou=s["max_iou"],
            clutter=(0, 3) if s["clutter"] else (0, 0),
        )
    except ValueError as err:
        raise UsageError(str(err)) from err


def run_data(s: dict[str, Any]) -> None:
    """Generate the data set the settings name and print one line per split."""
    from ..data.digit_scenes import generate_digit_scenes

    if s.get("dataset") not in DATASETS:
        raise UsageError(f"DATASET must be one of {', '.join(DATASETS)}, got {s.get('dataset')!r}")
    if not s.get("out"):
        raise UsageError("--out is required (the folder to write the data set to)")
    config = scene_config(s)
    images = {
        "train": s["train_images"],
        "val": s["val_images"],
        "val_heldout": s["val_heldout_images"],
        "test": s["test_images"],
        "test_heldout": s["test_heldout_images"],
    }
    start = time.perf_counter()
    try:
        infos = generate_digit_scenes(
            s["out"], images, s["seed"], config, s["data_root"], s["overwrite"]
        )
    except FileExistsError as err:
        raise UsageError(str(err)) from err
    for split, info in infos.items():
        print(
            f"{split:<13} {info['images']:>6} images {info['annotations']:>7} digits "
            f"({info['dropped_digits']} dropped for space, {info['clutter_fragments']} clutter)"
        )
    print(f"wrote {s['out']} in {time.perf_counter() - start:.1f} s (seed {s['seed']})")
