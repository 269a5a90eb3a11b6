"""The segmentation side of ``torchdcn train`` / ``eval`` / ``segment``: data, checkpoints, mIoU.

``train --task segmentation --data-root DIR`` reads either

- a **VOC-layout** folder (it holds ``ImageSets/Segmentation/``): trains on ``train.txt`` and
  evaluates on ``val.txt`` (``train.txt`` when there is no ``val.txt``), labels from the PNGs of
  ``SegmentationClass/`` (see :class:`~torchdcn.data.segmentation.FolderSegmentation`); or
- a **COCO-style** folder, found as for the detectors (``annotations/instances_<split>.json`` and
  ``<split>/``, or ``--ann-file`` / ``--image-dir``; ``--val-ann-file`` to evaluate on another
  file), with label maps rendered from the instance masks
  (:class:`~torchdcn.data.segmentation.CocoSegmentation`).

Images are resized as for the detectors (``--min-size`` / ``--max-size``; DeepLab's defaults are
the v1 paper's 360 with the longer side at most 600) and flipped in training. The checkpoint's
``run_info["data"]`` keeps the format, the files, the sizes and the class names, so ``eval`` and
``segment`` need nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .option import UsageError

#: what ``run_info["data"]["protocol"]`` says for segmentation data
PROTOCOL = "segmentation"


def is_voc_folder(root: str | Path | None) -> bool:
    """True when ``root`` holds ``ImageSets/Segmentation/`` (the VOC layout)."""
    return root is not None and (Path(root) / "ImageSets" / "Segmentation").is_dir()


def _voc_split(root: Path, prefer: str) -> str:
    return prefer if (root / "ImageSets" / "Segmentation" / f"{prefer}.txt").is_file() else "train"


def voc_dataset(root: Path, split: str, train: bool, min_size: int, max_size: int, seed: int = 0):
    from ..data.segmentation import FolderSegmentation, segmentation_transforms

    return FolderSegmentation(
        root, split, transforms=segmentation_transforms(train, min_size, max_size), seed=seed
    )


def coco_dataset(ann: Path, images: Path, train: bool, min_size: int, max_size: int, seed: int = 0):
    from ..data.segmentation import CocoSegmentation, segmentation_transforms

    return CocoSegmentation(
        ann, images, transforms=segmentation_transforms(train, min_size, max_size), seed=seed
    )


def training_data(s: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """``(train set, evaluation set, run_info["data"])`` of ``train``'s settings."""
    from .detection import coco_paths, limited

    sizes = {"min_size": s["min_size"], "max_size": s["max_size"]}
    if is_voc_folder(s["data_root"]) and s["ann_file"] is None:
        root = Path(s["data_root"])
        given = [f"--{k}" for k in ("image_dir", "val_ann_file", "val_image_dir") if s[k]]
        if given:
            raise UsageError(f"{', '.join(given)} do not apply to a VOC-layout folder ({root})")
        val_split = _voc_split(root, "val")
        train = voc_dataset(root, "train", True, **sizes, seed=s["seed"])
        val = voc_dataset(root, val_split, False, **sizes)
        info = {"format": "voc", "root": str(root.resolve()), "val_split": val_split}
    else:
        ann, images = coco_paths(s["data_root"], s["ann_file"], s["image_dir"], "train")
        train = coco_dataset(ann, images, True, **sizes, seed=s["seed"])
        if s["val_ann_file"] is None and s["val_image_dir"] is None:
            val_ann, val_images = ann, images
        else:
            val_ann, val_images = coco_paths(
                s["data_root"], s["val_ann_file"] or str(ann), s["val_image_dir"], "val"
            )
        val = coco_dataset(val_ann, val_images, False, **sizes)
        if val.category_ids != train.category_ids:
            raise UsageError(
                f"{val_ann} has category ids {val.category_ids}, {ann} {train.category_ids}: the "
                "evaluation file must have the training file's categories"
            )
        info = {
            "format": "coco",
            "ann_file": str(ann.resolve()),
            "image_dir": str(images.resolve()),
            "val_ann_file": str(val_ann.resolve()),
            "val_image_dir": str(val_images.resolve()),
            "category_ids": list(train.category_ids),
        }
    info = {
        "protocol": PROTOCOL,
        **info,
        **sizes,
        "limit_train": s["limit_train"],
        "class_names": list(train.class_names),
    }
    return limited(train, s["limit_train"]), limited(val, s["limit_test"]), info


def miou_evaluator(class_names: list[str]) -> Any:
    """``() -> MIoUEvaluator`` for the classes ``class_names`` (labels 1..C)."""
    from ..engine.miou import MIoUEvaluator

    def make() -> Any:
        return MIoUEvaluator(len(class_names), class_names)

    return make


def check_segmentation_info(info: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    """The checkpoint's ``run_info["data"]`` of a segmenter (``CheckpointError`` if it has none)."""
    from ..engine.checkpoint import CheckpointError

    data = info.get("data") or {}
    if data.get("protocol") != PROTOCOL or not data.get("class_names"):
        raise CheckpointError(
            f"{checkpoint} holds no segmentation classes in run_info['data']: was it written by "
            "'torchdcn train --task segmentation'?"
        )
    return data


def evaluation_set(s: dict[str, Any], data: dict[str, Any]) -> Any:
    """``eval``'s data: ``--data-root`` / ``--ann-file`` if given (a VOC folder: its ``val.txt``,
    else ``train.txt``), else the set the checkpoint was evaluated on in training; sizes from the
    flags, else the checkpoint's."""
    from .detection import coco_paths, limited

    sizes = {
        "min_size": s["min_size"] or data["min_size"],
        "max_size": s["max_size"] or data["max_size"],
    }
    root = s["data_root"]
    if root is None and s["ann_file"] is None and data.get("format") == "voc":
        root = data["root"]
    if is_voc_folder(root) and s["ann_file"] is None:
        dataset = voc_dataset(Path(root), _voc_split(Path(root), "val"), False, **sizes)
    else:
        if root is None and s["ann_file"] is None:
            ann = data.get("val_ann_file")
            images = s["image_dir"] or data.get("val_image_dir")
            ann, images = coco_paths(None, ann, images)
        else:
            ann, images = coco_paths(root, s["ann_file"], s["image_dir"], "val")
        dataset = coco_dataset(ann, images, False, **sizes)
        wanted = data.get("category_ids")
        if wanted is not None and dataset.category_ids != wanted:
            raise UsageError(
                f"{ann} has category ids {dataset.category_ids} but the checkpoint was trained on "
                f"{wanted}: evaluate on a file with the training categories"
            )
    if dataset.num_classes != len(data["class_names"]):
        raise UsageError(
            f"the evaluation data has {dataset.num_classes} classes but the checkpoint was "
            f"trained on {len(data['class_names'])}"
        )
    return limited(dataset, s["limit_test"])


def miou_lines(metrics: dict[str, float]) -> str:
    """mIoU, pixel accuracy and mean class accuracy in percent, one per line."""
    names = ("miou", "pixel_accuracy", "mean_accuracy")
    return "\n".join(f"{n:<14}  {100 * metrics[n]:6.1f}" for n in names if n in metrics)
