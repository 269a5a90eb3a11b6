"""Digit scenes: a COCO-format detection / instance / semantic segmentation set of real MNIST
digits, with strong geometric variation and a held-out-geometry test set.

Each scene is a ``canvas x canvas`` grayscale image (128 by default, white ink on black) holding
2-6 digits of the ``mnist5k`` sample (:mod:`torchdcn.data.mnist`), each cropped to its ink,
resized to a drawn height (log-uniform) and width factor (the aspect, log-uniform), rotated by a
drawn angle and put where it touches no other digit: the inks of two digits never share or touch a
pixel (``min_gap`` pixels apart) and two digit boxes overlap at most ``max_iou`` (IoU). A digit
that finds no such place in ``max_tries`` draws is left out (counted in the JSON ``info``).
Optional clutter: fragments of other digits of the same pool (a crop of 35-65 % of a digit's ink
box, drawn like a digit) placed outside every digit box; they are background everywhere.

Splits (the digits never cross from the training side to the test side):

- ``train``: the 4000 training digits of the fixed split, less the validation digits;
- ``val`` and ``val_heldout``: ``val_per_class`` (50) digits per class carved from the training
  digits with a fixed seed (:data:`VAL_SPLIT_SEED`), so tuning never reads a test digit;
- ``test`` and ``test_heldout``: the 1000 test digits.

``train``, ``val`` and ``test`` draw from :attr:`SceneConfig.geometry` (in-distribution);
``val_heldout`` and ``test_heldout`` from :attr:`SceneConfig.heldout_geometry`, whose heights lie
outside the training range on both sides and whose rotations are larger.

Written per split (``out`` is a folder that ``torchdcn train --data-root out`` reads):

- ``<split>/NNNNNN.png``: 8-bit grayscale image (:class:`~torchdcn.data.CocoDetection` reads it
  as RGB);
- ``annotations/instances_<split>.json``: COCO instances: ``bbox`` the tight box of the digit's
  mask ``[x, y, w, h]`` in pixel edges (what ``pycocotools.mask.toBbox`` gives), ``area`` the mask
  pixel count, ``segmentation`` the mask as compressed RLE, ``category_id`` ``digit + 1`` named
  ``"0"`` .. ``"9"``, and per annotation ``attributes`` (drawn ``height`` px, ``aspect``,
  ``rotation`` degrees counter-clockwise, ``digit_index`` into ``mnist_5k.csv.gz``). ``info`` holds
  every generator parameter, the seed and the counts;
- ``semantic/<split>/NNNNNN.png``: 8-bit class map: 0 background (clutter included), ``1 .. 10``
  the digit's ``category_id`` on its mask, 255 (ignore) on the digit's anti-aliased fringe (ink
  of the digit below the mask threshold).

A digit's mask is the set of pixels of its rendering at least half as bright as its brightest
one (``mask_level`` 0.5), so thin strokes of small digits keep a mask. Everything is drawn from
``numpy`` generators seeded with ``(seed, split, image index)``: the same seed gives byte-identical
PNGs and JSON, and image ``i`` does not depend on how many images are generated.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .mnist import NUM_CLASSES, load_mnist5k, split_indices
from .scene_drawing import (
    HELDOUT_GEOMETRY,
    IGNORE_LABEL,
    DigitPool,
    Geometry,
    Scene,
    SceneConfig,
    draw_digit,
    make_scene,
)

__all__ = [
    "DEFAULT_IMAGES",
    "HELDOUT_GEOMETRY",
    "IGNORE_LABEL",
    "SPLITS",
    "VAL_SPLIT_SEED",
    "DigitPool",
    "Geometry",
    "Scene",
    "SceneConfig",
    "digit_pools",
    "draw_digit",
    "generate_digit_scenes",
    "generate_split",
    "heights_overlap",
    "make_scene",
    "split_paths",
]

#: every split, in the order their seeds are derived (a split's images never depend on others)
SPLITS = ("train", "val", "val_heldout", "test", "test_heldout")
#: seed of the fixed choice of validation digits among the training digits
VAL_SPLIT_SEED = 1
#: default number of images per split
DEFAULT_IMAGES = {"train": 2000, "val": 200, "val_heldout": 200, "test": 500, "test_heldout": 500}
_FILE_RE = re.compile(r"^\d{6}\.png$")


def digit_pools(
    root: str | os.PathLike | None = None, val_per_class: int = 50
) -> dict[str, DigitPool]:
    """The digit pool of each split: ``{"train", "val", "test"}`` (the held-out splits use the
    ``val`` and ``test`` pools). Validation digits: ``val_per_class`` per class of the training
    digits, chosen with :data:`VAL_SPLIT_SEED`."""
    images_t, labels_t = load_mnist5k(root)
    train_idx, test_idx = (t.numpy() for t in split_indices(labels_t))
    images, labels = images_t.numpy(), labels_t.numpy()
    rng = np.random.default_rng(VAL_SPLIT_SEED)
    val = []
    for c in range(NUM_CLASSES):
        members = train_idx[labels[train_idx] == c]
        val.append(rng.permutation(members)[:val_per_class])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(train_idx, val_idx)

    def pool(idx: np.ndarray) -> DigitPool:
        return DigitPool(images[idx], labels[idx].astype(np.int64), idx.astype(np.int64))

    return {"train": pool(train_idx), "val": pool(val_idx), "test": pool(np.sort(test_idx))}


# -- writing ----------------------------------------------------------------------------------


def split_paths(out: str | os.PathLike, split: str) -> tuple[Path, Path, Path]:
    """``(instances JSON, image folder, semantic label folder)`` of ``split`` under ``out``; the
    first two are what :class:`~torchdcn.data.CocoDetection` takes."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out = Path(out)
    return out / "annotations" / f"instances_{split}.json", out / split, out / "semantic" / split


def _categories() -> list[dict[str, Any]]:
    return [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(NUM_CLASSES)]


def _png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array, mode="L").save(path, format="PNG")


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def generate_split(
    out: str | os.PathLike,
    split: str,
    count: int,
    pool: DigitPool,
    config: SceneConfig | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``count`` scenes of ``split`` under ``out`` (see the module docstring); returns the
    JSON's ``info``. Image ``i`` (id ``i + 1``, file ``{i + 1:06d}.png``) is drawn from a
    generator seeded with ``(seed, SPLITS.index(split), i)``."""
    config = SceneConfig() if config is None else config
    ann_file, image_dir, semantic_dir = split_paths(out, split)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    heldout = split.endswith("_heldout")
    geometry = config.heldout_geometry if heldout else config.geometry
    for folder in (ann_file.parent, image_dir, semantic_dir):
        folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    dropped = clutter = 0
    for i in range(count):
        rng = np.random.default_rng([seed, SPLITS.index(split), i])
        scene = make_scene(pool, geometry, config, rng)
        name = f"{i + 1:06d}.png"
        _png(scene.image, image_dir / name)
        _png(scene.semantic, semantic_dir / name)
        images.append(
            {"id": i + 1, "file_name": name, "height": config.canvas, "width": config.canvas}
        )
        for mask, label, box, params in zip(scene.masks, scene.labels, scene.boxes, scene.params):
            x1, y1, x2, y2 = (int(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": _rle(mask),
                    "attributes": params,
                }
            )
        dropped += scene.dropped
        clutter += scene.clutter
    info = {
        "description": "digit scenes of real MNIST digits (mnist5k), torchdcn.data.digit_scenes",
        "generator": "torchdcn.data.digit_scenes",
        "format_version": 1,
        "seed": seed,
        "split": split,
        "geometry": "heldout" if heldout else "in-distribution",
        "config": asdict(config),
        "digit_pool": {"digits": len(pool.labels), "from": _pool_name(split)},
        "images": count,
        "annotations": len(annotations),
        "dropped_digits": dropped,
        "clutter_fragments": clutter,
        "semantic_dir": f"semantic/{split}",
        "semantic_labels": "0 background, 1..10 category_id (digit + 1), 255 ignore (fringe)",
        "bbox": "tight box of the mask, [x, y, w, h] in pixel edges",
    }
    data = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": _categories(),
    }
    ann_file.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return json.loads(json.dumps(info))  # as the file has it (lists, not tuples)


def _pool_name(split: str) -> str:
    return {
        "train": "the training digits less the validation digits",
        "val": "validation digits carved from the training digits",
        "test": "the test digits",
    }[split.removesuffix("_heldout")]


def _clear(out: Path, split: str) -> None:
    """Remove what an earlier run wrote for ``split`` (its JSON and ``NNNNNN.png`` files only)."""
    ann_file, image_dir, semantic_dir = split_paths(out, split)
    ann_file.unlink(missing_ok=True)
    for folder in (image_dir, semantic_dir):
        if folder.is_dir():
            for path in folder.iterdir():
                if _FILE_RE.match(path.name):
                    path.unlink()


def generate_digit_scenes(
    out: str | os.PathLike,
    images: Mapping[str, int] | None = None,
    seed: int = 0,
    config: SceneConfig | None = None,
    root: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, dict[str, Any]]:
    """Write the digit-scene splits under ``out``.

    Args:
        out: output folder (``annotations/``, one image folder per split, ``semantic/``).
        images: images per split (default :data:`DEFAULT_IMAGES`; a split left out or at 0 is
            not written).
        seed: seed of every drawing (the digit pools themselves are fixed).
        config: generator parameters (default :class:`SceneConfig`).
        root: data root holding ``mnist5k/`` (see :func:`~torchdcn.data.find_mnist5k`).
        overwrite: replace splits already written (else :class:`FileExistsError`).

    Returns:
        ``{split: info}``, the ``info`` of each written JSON.

    Example:
        >>> info = generate_digit_scenes("scenes", {"train": 100, "test_heldout": 50})
        >>> ds = CocoDetection("scenes/annotations/instances_train.json", "scenes/train")
    """
    config = SceneConfig() if config is None else config
    counts = dict(DEFAULT_IMAGES if images is None else images)
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown:
        raise ValueError(f"images has unknown splits {unknown}; the splits are {SPLITS}")
    bad = {k: v for k, v in counts.items() if isinstance(v, bool) or not isinstance(v, int)}
    if bad or any(v < 0 for v in counts.values()):
        raise ValueError(f"images must map splits to counts >= 0, got {counts}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    out = Path(out)
    todo = [s for s in SPLITS if counts.get(s, 0) > 0]
    existing = [s for s in todo if split_paths(out, s)[0].exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds {', '.join(existing)} (pass overwrite=True / --overwrite)"
        )
    pools = digit_pools(root, config.val_per_class)
    result = {}
    for split in todo:
        _clear(out, split)
        pool = pools[split.removesuffix("_heldout")]
        result[split] = generate_split(out, split, counts[split], pool, config, seed)
    return result


def heights_overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> bool:
    """Whether two sets of height ranges share any value (held-out ranges must not)."""
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)
