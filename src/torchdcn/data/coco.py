"""COCO-format detection data: any ``instances_*.json`` and its image folder, read with pycocotools.

Sample ``i`` is ``(image, target)``: ``image`` float Tensor[3, H, W] in [0, 1] (after the
transforms), and ``target`` a dict:

- ``"boxes"``: float32 Tensor[K, 4], (x1, y1, x2, y2) in pixels of ``image``;
- ``"labels"``: int64 Tensor[K], contiguous labels 1..C (0 is the background and never occurs);
  :attr:`CocoDetection.label_to_category_id` maps them back to the file's category ids;
- ``"masks"`` (only with ``masks=True``): uint8 Tensor[K, H, W], one 0/1 mask per box, decoded
  from polygons or RLE by pycocotools (an annotation without ``segmentation`` gets its box, as
  a rectangle polygon);
- ``"crowd_boxes"``: float32 Tensor[Kc, 4], the crowd regions (``iscrowd=1``). They are **kept
  out of** ``boxes`` / ``labels`` / ``masks``, so a loss never trains on them; a matcher that wants
  to ignore anchors inside crowds (as Detectron does) can read them here;
- ``"image_id"`` (int, the file's id), ``"orig_size"`` ``(h, w)`` of the file's image,
  ``"size"`` ``(h, w)`` of ``image`` after the transforms, ``"flipped"`` (bool).

An image without annotations gives ``boxes`` of shape [0, 4] and ``labels`` of shape [0].

Annotations are checked once, when the set is built, so nothing bad reaches a loss. Boxes that
reach outside the image are clipped to it (counted in ``stats["clipped_boxes"]``); what cannot be
used is, with ``on_bad="skip"`` (default), left out, counted in :attr:`CocoDetection.stats` and
logged once as a warning, or with ``on_bad="error"`` raises :class:`DataFormatError` naming the
annotation: an image file that is missing (the image is left out), a box of zero area after
clipping, a malformed box (not 4 finite numbers, negative size), an annotation whose category is
not in the file's ``categories`` or whose image is not in its ``images``.

The papers' COCO setting resizes the shorter side to 600 pixels (longer side at most 1000) and
flips horizontally in training: ``transforms=detection_transforms(train=True)``
(:mod:`torchdcn.data.transforms`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import numbers
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .mnist import DataFormatError, DataNotFoundError, data_root_candidates
from .transforms import ToTensor

logger = logging.getLogger(__name__)

COCO128_DIR = Path("coco128")
COCO128_HOW_TO_GET = (
    "coco128 is the first 128 images of COCO train2017 with their instance annotations "
    "(GitHub repository developer0hye/COCO128); put train2017/ and "
    "annotations/instances_train2017.json under <data root>/coco128/ and pass --data-root"
)
#: counters of :attr:`CocoDetection.stats` that mean something was dropped or changed
PROBLEM_KEYS = (
    "missing_images",
    "clipped_boxes",
    "degenerate_boxes",
    "malformed_boxes",
    "unknown_category",
    "unknown_image",
)


def _import_coco() -> Any:
    try:
        from pycocotools.coco import COCO
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "COCO data needs pycocotools and pillow: pip install 'torchdcn[coco]'"
        ) from err
    return COCO


def load_coco(ann_file: str | os.PathLike) -> Any:
    """A ``pycocotools.coco.COCO`` of ``ann_file``, with its progress prints silenced;
    :class:`DataNotFoundError` / :class:`DataFormatError` for a missing or unreadable file."""
    coco_cls = _import_coco()
    path = Path(ann_file)
    if not path.is_file():
        raise DataNotFoundError(f"annotation file not found: {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = coco_cls(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise DataFormatError(f"{path} is not a COCO instances JSON: {err!r}") from err
    for key in ("images", "categories"):
        if key not in coco.dataset:
            raise DataFormatError(f"{path} has no '{key}' list (keys: {sorted(coco.dataset)})")
    return coco


class CocoDetection(Dataset):
    """A COCO-format detection set (see the module docstring for samples and checks).

    Args:
        ann_file: the ``instances_*.json``.
        image_dir: folder of the images (``file_name`` of each image is relative to it).
        transforms: ``t(image, target, generator) -> (image, target)``, e.g.
            :func:`~torchdcn.data.transforms.detection_transforms`; default
            :class:`~torchdcn.data.transforms.ToTensor` only. ``image`` reaches it as a uint8
            Tensor[3, H, W].
        masks: also return instance masks (decoding costs time and memory: off by default).
        seed: seed of the random transforms; sample ``i`` of epoch ``e`` uses a generator seeded
            from ``(seed, e, i)`` (:meth:`set_epoch`), so runs repeat and resume exactly.
        on_bad: ``"skip"`` (drop and count what cannot be used, warn once) or ``"error"`` (raise
            :class:`DataFormatError` at the first problem). Clipping is never an error.
        drop_empty: leave out images without any non-crowd box (training sets usually do;
            evaluation sets must not).

    Attributes:
        coco: the ``pycocotools.coco.COCO`` of the file (ground truth for the evaluator).
        image_ids: the file's image ids in sample order (sorted).
        category_ids: the file's category ids, sorted; label ``l`` is ``category_ids[l - 1]``.
        label_to_category_id / category_id_to_label: the two mappings as dicts.
        class_names: name of label ``l`` at ``class_names[l - 1]``.
        stats: counts: ``images``, ``annotations`` (boxes kept), ``crowd``, ``empty_images``
            and the problems of :data:`PROBLEM_KEYS`.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        transforms: Any = None,
        masks: bool = False,
        seed: int = 0,
        on_bad: str = "skip",
        drop_empty: bool = False,
    ) -> None:
        if on_bad not in ("skip", "error"):
            raise ValueError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int >= 0, got {seed!r} ({type(seed).__name__})")
        if seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed}")
        for name, flag in (("masks", masks), ("drop_empty", drop_empty)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        if transforms is not None and not callable(transforms):
            raise TypeError(f"transforms must be callable, got {type(transforms).__name__}")
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        if not self.image_dir.is_dir():
            raise DataNotFoundError(f"image folder not found: {self.image_dir}")
        self.transforms = transforms if transforms is not None else ToTensor()
        self.masks, self.seed, self.on_bad, self.drop_empty = masks, seed, on_bad, drop_empty
        self.epoch = 0
        self.coco = load_coco(self.ann_file)
        self.category_ids = sorted(int(c["id"]) for c in self.coco.dataset["categories"])
        if len(set(self.category_ids)) != len(self.category_ids):
            raise DataFormatError(f"{self.ann_file} lists a category id twice")
        self.category_id_to_label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.label_to_category_id = {i + 1: c for i, c in enumerate(self.category_ids)}
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in self.coco.dataset["categories"]}
        self.class_names = [names[c] for c in self.category_ids]
        self.stats: Counter[str] = Counter({k: 0 for k in PROBLEM_KEYS})
        self._records = self._build_records()
        self.image_ids = [r["id"] for r in self._records]
        self._report()

    # -- building -------------------------------------------------------------------------------

    def _problem(self, key: str, message: str) -> None:
        if self.on_bad == "error":
            raise DataFormatError(f"{self.ann_file}: {message}")
        self.stats[key] += 1

    def _build_records(self) -> list[dict[str, Any]]:
        by_image: dict[int, list[dict[str, Any]]] = {}
        known_images = {int(i) for i in self.coco.imgs}
        for ann in self.coco.dataset.get("annotations", []):
            image_id = int(ann.get("image_id", -1))
            if image_id not in known_images:
                self._problem(
                    "unknown_image",
                    f"annotation {ann.get('id')} refers to unknown image {image_id}",
                )
                continue
            by_image.setdefault(image_id, []).append(ann)
        records = []
        for image_id in sorted(known_images):
            info = self.coco.imgs[image_id]
            path = self.image_dir / str(info.get("file_name", ""))
            if not path.is_file():
                self._problem("missing_images", f"image {image_id} file not found: {path}")
                continue
            height, width = int(info.get("height", 0)), int(info.get("width", 0))
            if height < 1 or width < 1:
                raise DataFormatError(
                    f"{self.ann_file}: image {image_id} has no positive height/width, got "
                    f"({info.get('height')}, {info.get('width')})"
                )
            record = self._image_record(image_id, path, height, width, by_image.get(image_id, []))
            if self.drop_empty and not record["anns"]:
                continue
            records.append(record)
        self.stats["images"] = len(records)
        self.stats["annotations"] = sum(len(r["anns"]) for r in records)
        self.stats["crowd"] = sum(len(r["crowd_boxes"]) for r in records)
        self.stats["empty_images"] = sum(not r["anns"] for r in records)
        return records

    def _image_record(
        self, image_id: int, path: Path, height: int, width: int, anns: list[dict[str, Any]]
    ) -> dict[str, Any]:
        kept, boxes, labels, crowd = [], [], [], []
        for ann in anns:
            where = f"annotation {ann.get('id')} of image {image_id}"
            category = ann.get("category_id")
            if category not in self.category_id_to_label:
                self._problem("unknown_category", f"{where} has unknown category_id {category!r}")
                continue
            bbox = ann.get("bbox")
            try:
                x, y, w, h = (float(v) for v in bbox)  # type: ignore[union-attr]
            except (TypeError, ValueError):
                self._problem("malformed_boxes", f"{where} has bbox {bbox!r}, want [x, y, w, h]")
                continue
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
                self._problem("malformed_boxes", f"{where} has bbox {bbox!r}, want w, h >= 0")
                continue
            box = [min(max(x, 0.0), width), min(max(y, 0.0), height)]
            box += [min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)]
            if box[2] <= box[0] or box[3] <= box[1]:
                self._problem(
                    "degenerate_boxes", f"{where} has zero area inside the image: bbox {bbox!r}"
                )
                continue
            if box != [x, y, x + w, y + h]:
                self.stats["clipped_boxes"] += 1
            if ann.get("iscrowd", 0):
                crowd.append(box)
                continue
            kept.append(ann)
            boxes.append(box)
            labels.append(self.category_id_to_label[category])
        return {
            "id": image_id,
            "path": path,
            "size": (height, width),
            "anns": kept,
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64),
            "crowd_boxes": np.asarray(crowd, dtype=np.float32).reshape(-1, 4),
        }

    def _report(self) -> None:
        problems = {k: self.stats[k] for k in PROBLEM_KEYS if self.stats[k]}
        dropped = {k: v for k, v in problems.items() if k != "clipped_boxes"}
        if dropped:
            logger.warning(
                "%s: left out %s; %d images, %d boxes kept",
                self.ann_file,
                ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in dropped.items()),
                self.stats["images"],
                self.stats["annotations"],
            )
        if problems.get("clipped_boxes"):
            logger.info(
                "%s: clipped %d boxes to their image", self.ann_file, problems["clipped_boxes"]
            )

    # -- reading --------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """C, the number of object classes (labels 1..C; the background is not counted)."""
        return len(self.category_ids)

    def set_epoch(self, epoch: int) -> None:
        """Use the random transforms of ``epoch`` (0 until called)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._records)

    def generator(self, index: int) -> torch.Generator:
        """The generator of sample ``index`` in the current epoch, seeded from
        ``(seed, epoch, index)`` only."""
        words = [v & 0xFFFFFFFF for v in (self.seed, self.epoch, index, 0xC0C0)]
        state = np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(1)
        return torch.Generator().manual_seed(int(state))

    def read_image(self, index: int) -> Tensor:
        """uint8 Tensor[3, H, W] of sample ``index`` (RGB, as stored: no EXIF rotation)."""
        from PIL import Image

        record = self._records[index]
        try:
            with Image.open(record["path"]) as img:
                array = np.asarray(img.convert("RGB"))
        except OSError as err:
            raise DataFormatError(f"cannot read image {record['path']}: {err}") from err
        if array.shape[:2] != record["size"]:
            raise DataFormatError(
                f"image {record['path']} is {array.shape[0]}x{array.shape[1]} (h x w) but "
                f"{self.ann_file} says {record['size'][0]}x{record['size'][1]}"
            )
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()

    def target(self, index: int) -> dict[str, Any]:
        """The target of sample ``index`` before the transforms (boxes in file pixels)."""
        record = self._records[index]
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(record["boxes"].copy()),
            "labels": torch.from_numpy(record["labels"].copy()),
            "crowd_boxes": torch.from_numpy(record["crowd_boxes"].copy()),
            "image_id": record["id"],
            "orig_size": record["size"],
            "size": record["size"],
            "flipped": False,
        }
        if self.masks:
            height, width = record["size"]
            if record["anns"]:
                with warnings.catch_warnings():
                    # pycocotools' decoder trips a NumPy 2 DeprecationWarning ("__array__ ...
                    # copy keyword") on every mask; the masks are right
                    warnings.filterwarnings("ignore", "__array__", DeprecationWarning)
                    masks = np.stack([self.coco.annToMask(_with_mask(a)) for a in record["anns"]])
            else:
                masks = np.zeros((0, height, width), dtype=np.uint8)
            target["masks"] = torch.from_numpy(masks.astype(np.uint8, copy=False))
        return target

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        image, target = self.read_image(index), self.target(index)
        return self.transforms(image, target, self.generator(index))

    def __repr__(self) -> str:
        return (
            f"CocoDetection({str(self.ann_file)!r}, images={len(self)}, "
            f"classes={self.num_classes}, masks={self.masks})"
        )


def find_coco128(root: str | os.PathLike | None = None) -> Path:
    """The ``coco128`` folder (``train2017/`` and ``annotations/``) under the data root (the
    ``root`` argument, ``$TORCHDCN_DATA``, or ``../shared/data``); :class:`DataNotFoundError`
    naming every place tried."""
    tried = [base / COCO128_DIR for base in data_root_candidates(root)]
    for path in tried:
        if (path / "annotations" / "instances_train2017.json").is_file():
            return path
    where = ", ".join(str(p) for p in tried)
    raise DataNotFoundError(f"coco128 not found (looked in {where}); {COCO128_HOW_TO_GET}")


def coco128(root: str | os.PathLike | None = None, **kwargs: Any) -> CocoDetection:
    """The coco128 sample as a :class:`CocoDetection` (``kwargs`` go to it)."""
    base = find_coco128(root)
    return CocoDetection(
        base / "annotations" / "instances_train2017.json", base / "train2017", **kwargs
    )


def _with_mask(ann: dict[str, Any]) -> dict[str, Any]:
    """``ann``, or a copy whose ``segmentation`` is its box as a polygon when it has none."""
    if ann.get("segmentation"):
        return ann
    x, y, w, h = (float(v) for v in ann["bbox"])
    return {**ann, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
