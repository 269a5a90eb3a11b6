"""Semantic segmentation data: COCO-format instance annotations rendered to label maps, or folders
of images and label PNGs in the PASCAL VOC layout.

Sample ``i`` is ``(image, target)``: ``image`` float Tensor[3, H, W] in [0, 1] (after the
transforms), and ``target`` a dict:

- ``"semantic"``: int64 Tensor[H, W] of labels: 0 the background, 1..C the classes,
  :data:`IGNORE_INDEX` (255) pixels that count for nothing (neither in the loss nor in mIoU);
- ``"image_id"`` (COCO: the file's id; folders: the sample's name), ``"orig_size"`` ``(h, w)`` of
  the file's image, ``"size"`` ``(h, w)`` after the transforms, ``"flipped"`` (bool).

**COCO** (:class:`CocoSegmentation`): label ``l`` is the ``l``-th category id of the file in
ascending order (as in :class:`~torchdcn.data.coco.CocoDetection`). Each image's map starts as
background (0); every non-crowd instance mask is painted with its label; a pixel covered by
instances of two *different* classes becomes 255 (which class it is, is ambiguous; instances of
one class may overlap freely); crowd regions (``iscrowd=1``) become 255 whatever lies under them.
Annotations are checked as :class:`~torchdcn.data.coco.CocoDetection` checks them (it reads the
file); crowds of unknown categories are skipped too.

**Folders** (:class:`FolderSegmentation`, the VOC layout): ``<root>/JPEGImages/<name>.jpg``,
``<root>/SegmentationClass/<name>.png`` (a palette or greyscale PNG whose values are the labels;
VOC's 255 object borders are ignored) and ``<root>/ImageSets/Segmentation/<split>.txt`` listing
the names. The classes are VOC's 20 unless ``<root>/class_names.txt`` lists others (one object
class per line, background not listed). A value above C other than 255 is a
:class:`~torchdcn.data.mnist.DataFormatError`.

Transforms (:func:`segmentation_transforms`) are the detection ones: shorter side resized to
``min_size`` with the longer at most ``max_size`` (the image bilinearly, the labels with nearest
neighbours), horizontal flips in training; sample ``i`` of epoch ``e`` draws from a generator
seeded from ``(seed, e, i)`` only, so runs repeat and resume exactly.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .coco import CocoDetection
from .mnist import DataFormatError, DataNotFoundError
from .transforms import detection_transforms

#: label of pixels left out of the loss and of the metric
IGNORE_INDEX = 255
#: the 20 object classes of PASCAL VOC, labels 1..20
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


class SemanticTransform:
    """A detection transform applied to ``(image, target)`` whose ``target["semantic"]`` is a
    label map ``[H, W]``: the map travels as a one-channel uint8 mask (nearest-neighbour resize,
    flip) and comes back int64."""

    def __init__(self, transform: Any) -> None:
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.transform = transform

    def __call__(
        self, image: Any, target: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        target = dict(target)
        semantic = target.pop("semantic")
        if not isinstance(semantic, Tensor) or semantic.dim() != 2:
            got = tuple(semantic.shape) if isinstance(semantic, Tensor) else type(semantic).__name__
            raise ValueError(f"target['semantic'] must be a Tensor[H, W], got {got}")
        target["masks"] = semantic.to(torch.uint8)[None]
        image, target = self.transform(image, target, generator)
        target["semantic"] = target.pop("masks")[0].long()
        return image, target

    def __repr__(self) -> str:
        return f"SemanticTransform({self.transform!r})"


def segmentation_transforms(
    train: bool, min_size: float | Sequence[float] = 360, max_size: float = 600
) -> SemanticTransform:
    """To float, resize (shorter side ``min_size``, longer at most ``max_size``; 360 is the v1
    paper's VOC setting) and, when ``train``, a horizontal flip with probability 0.5."""
    return SemanticTransform(detection_transforms(train, min_size, max_size))


def render_semantic_map(masks: Tensor, labels: Tensor, crowd_masks: Tensor | None = None) -> Tensor:
    """The label map of instances (see the module docstring for the rules).

    Args:
        masks: uint8/bool Tensor[K, H, W], one 0/1 mask per non-crowd instance.
        labels: int Tensor[K], their labels 1..C (C < 255).
        crowd_masks: uint8/bool Tensor[Kc, H, W] of crowd regions, or ``None``.

    Returns:
        int64 Tensor[H, W]: 0 background, the label where instances of one class lie, 255 where
        instances of different classes overlap and on crowds.
    """
    if masks.dim() != 3 or labels.shape != masks.shape[:1]:
        raise ValueError(
            f"masks must be [K, H, W] and labels [K], got {tuple(masks.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if len(labels) and (int(labels.min()) < 1 or int(labels.max()) >= IGNORE_INDEX):
        raise ValueError(f"labels must lie in 1..{IGNORE_INDEX - 1}, got {labels.tolist()}")
    out = torch.zeros(masks.shape[1:], dtype=torch.int64)
    clash = torch.zeros(masks.shape[1:], dtype=torch.bool)
    for mask, label in zip(masks.bool(), labels.tolist()):
        clash |= mask & (out != 0) & (out != label)
        out[mask & (out == 0)] = label
    out[clash] = IGNORE_INDEX
    if crowd_masks is not None and len(crowd_masks):
        if crowd_masks.shape[1:] != masks.shape[1:]:
            raise ValueError(
                f"crowd_masks must be [Kc, {masks.shape[1]}, {masks.shape[2]}], got "
                f"{tuple(crowd_masks.shape)}"
            )
        out[crowd_masks.bool().any(0)] = IGNORE_INDEX
    return out


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from ``(seed, epoch, index)`` only (independent of worker and order)."""
    words = [v & 0xFFFFFFFF for v in (seed, epoch, index, 0x5E6)]
    state = np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(1)
    return torch.Generator().manual_seed(int(state))


class CocoSegmentation(Dataset):
    """Semantic maps rendered from a COCO-format instances file (see the module docstring).

    Args:
        ann_file: the ``instances_*.json``.
        image_dir: folder of the images.
        transforms: ``t(image uint8 [3, H, W], target, generator) -> (image, target)`` with
            ``target["semantic"]``; default :func:`segmentation_transforms` ``(False)`` without
            resizing, i.e. :class:`SemanticTransform` of ``ToTensor`` only.
        seed: seed of the random transforms.
        on_bad: as for :class:`~torchdcn.data.coco.CocoDetection`.

    Attributes:
        coco, image_ids, category_ids, label_to_category_id, class_names, stats: those of the
        underlying :class:`~torchdcn.data.coco.CocoDetection`; ``num_classes`` = C.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        transforms: Any = None,
        seed: int = 0,
        on_bad: str = "skip",
    ) -> None:
        from .transforms import ToTensor

        self.instances = CocoDetection(ann_file, image_dir, masks=True, on_bad=on_bad)
        if self.instances.num_classes >= IGNORE_INDEX:
            raise DataFormatError(
                f"{ann_file} has {self.instances.num_classes} categories; label maps hold at most "
                f"{IGNORE_INDEX - 1} classes"
            )
        if transforms is not None and not callable(transforms):
            raise TypeError(f"transforms must be callable, got {type(transforms).__name__}")
        self.transforms = transforms if transforms is not None else SemanticTransform(ToTensor())
        self.seed, self.epoch = seed, 0
        self.coco = self.instances.coco
        self.image_ids = self.instances.image_ids
        self.category_ids = self.instances.category_ids
        self.label_to_category_id = self.instances.label_to_category_id
        self.class_names = self.instances.class_names
        self.stats = self.instances.stats

    @property
    def num_classes(self) -> int:
        """C, the object classes (labels 1..C)."""
        return self.instances.num_classes

    def set_epoch(self, epoch: int) -> None:
        """Use the random transforms of ``epoch`` (0 until called)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.instances)

    def semantic(self, index: int) -> Tensor:
        """The label map ``[H, W]`` of sample ``index`` at the file's size (no transforms)."""
        return self._render(self.instances.target(index))

    def _render(self, target: dict[str, Any]) -> Tensor:
        """The label map of an instance target of :class:`~torchdcn.data.coco.CocoDetection`."""
        height, width = target["orig_size"]
        crowds = [
            ann
            for ann in self.coco.imgToAnns.get(target["image_id"], [])
            if ann.get("iscrowd", 0)
            and ann.get("category_id") in self.instances.category_id_to_label
        ]
        crowd_masks = None
        if crowds:
            with warnings.catch_warnings():  # pycocotools + NumPy 2, as in CocoDetection
                warnings.filterwarnings("ignore", "__array__", DeprecationWarning)
                crowd_masks = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in crowds]))
        masks = target["masks"].reshape(-1, height, width)
        return render_semantic_map(masks, target["labels"], crowd_masks)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        instances = self.instances.target(index)
        size = instances["orig_size"]
        target = {
            "semantic": self._render(instances),
            "image_id": self.image_ids[index],
            "orig_size": size,
            "size": size,
            "flipped": False,
        }
        image = self.instances.read_image(index)
        return self.transforms(image, target, sample_generator(self.seed, self.epoch, index))

    def __repr__(self) -> str:
        return (
            f"CocoSegmentation({str(self.instances.ann_file)!r}, images={len(self)}, "
            f"classes={self.num_classes})"
        )


class FolderSegmentation(Dataset):
    """Images and label PNGs in the VOC layout (see the module docstring).

    Args:
        root: the folder holding ``JPEGImages/``, ``SegmentationClass/`` and
            ``ImageSets/Segmentation/``.
        split: the list file's name without ``.txt`` (``train``, ``val``, ``trainval``).
        transforms: as for :class:`CocoSegmentation`.
        seed: seed of the random transforms.
        class_names: the C object classes (labels 1..C); default ``<root>/class_names.txt``,
            else :data:`VOC_CLASSES`.

    Attributes:
        names: the sample names in list order (also their ``image_id``); ``class_names``;
        ``num_classes`` = C.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transforms: Any = None,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        from .transforms import ToTensor

        self.root = Path(root)
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise DataNotFoundError(
                f"no {list_file}: a VOC-layout folder holds ImageSets/Segmentation/<split>.txt, "
                "JPEGImages/ and SegmentationClass/"
            )
        if class_names is None:
            names_file = self.root / "class_names.txt"
            if names_file.is_file():
                class_names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
            else:
                class_names = VOC_CLASSES
        if not 1 <= len(class_names) < IGNORE_INDEX:
            raise ValueError(
                f"class_names must name 1..{IGNORE_INDEX - 1} classes, got {len(class_names)}"
            )
        if transforms is not None and not callable(transforms):
            raise TypeError(f"transforms must be callable, got {type(transforms).__name__}")
        self.class_names = [str(n) for n in class_names]
        self.split, self.seed, self.epoch = split, seed, 0
        self.transforms = transforms if transforms is not None else SemanticTransform(ToTensor())
        self.names = [n.strip() for n in list_file.read_text().splitlines() if n.strip()]
        if not self.names:
            raise DataFormatError(f"{list_file} lists no images")
        self._files = [self._paths(name) for name in self.names]

    def _paths(self, name: str) -> tuple[Path, Path]:
        images = self.root / "JPEGImages"
        found = [images / f"{name}{s}" for s in (".jpg", ".jpeg", ".png")]
        image = next((p for p in found if p.is_file()), None)
        label = self.root / "SegmentationClass" / f"{name}.png"
        if image is None:
            raise DataNotFoundError(f"no image {images / name}.jpg (or .jpeg, .png)")
        if not label.is_file():
            raise DataNotFoundError(f"no label map {label}")
        return image, label

    @property
    def num_classes(self) -> int:
        """C, the object classes (labels 1..C)."""
        return len(self.class_names)

    def set_epoch(self, epoch: int) -> None:
        """Use the random transforms of ``epoch`` (0 until called)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def semantic(self, index: int) -> Tensor:
        """The label map ``[H, W]`` of sample ``index`` as stored (int64)."""
        from PIL import Image

        path = self._files[index][1]
        try:
            with Image.open(path) as img:
                if img.mode not in ("P", "L", "I", "I;16"):
                    raise DataFormatError(
                        f"label map {path} is a {img.mode} image; want a palette (P) or greyscale "
                        "(L) PNG whose values are the labels"
                    )
                labels = np.asarray(img).astype(np.int64)
        except OSError as err:
            raise DataFormatError(f"cannot read label map {path}: {err}") from err
        bad = (labels > self.num_classes) & (labels != IGNORE_INDEX) | (labels < 0)
        if bad.any():
            raise DataFormatError(
                f"label map {path} holds values {sorted(set(labels[bad].tolist()))[:5]} outside "
                f"0..{self.num_classes} and {IGNORE_INDEX}"
            )
        return torch.from_numpy(labels)

    def read_image(self, index: int) -> Tensor:
        """uint8 Tensor[3, H, W] of sample ``index``."""
        from PIL import Image

        path = self._files[index][0]
        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"))
        except OSError as err:
            raise DataFormatError(f"cannot read image {path}: {err}") from err
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        image, semantic = self.read_image(index), self.semantic(index)
        if tuple(semantic.shape) != tuple(image.shape[1:]):
            raise DataFormatError(
                f"label map {self._files[index][1]} is {tuple(semantic.shape)} (h, w) but its "
                f"image is {tuple(image.shape[1:])}"
            )
        size = (int(image.shape[1]), int(image.shape[2]))
        target = {
            "semantic": semantic,
            "image_id": self.names[index],
            "orig_size": size,
            "size": size,
            "flipped": False,
        }
        return self.transforms(image, target, sample_generator(self.seed, self.epoch, index))

    def __repr__(self) -> str:
        return (
            f"FolderSegmentation({str(self.root)!r}, split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes})"
        )
