"""The detection side of ``torchdcn train`` / ``eval``: COCO-style data, checkpoints, metrics.

``train --model faster_rcnn --data-root DIR`` reads ``DIR/annotations/instances_<split>.json``
and the images in ``DIR/<split>/`` (or ``--ann-file`` / ``--image-dir``), trains on them with
the papers' resize (shorter side ``--min-size``, longer at most ``--max-size``) and horizontal
flips, and evaluates with COCOeval on ``--val-ann-file`` (default: the training file). The
checkpoint's ``run_info["data"]`` keeps the files, the sizes and the file's ``categories``, so
``eval`` and ``detect`` rebuild the model, resize the same way and name the classes without the
training data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .option import UsageError

#: what ``run_info["data"]["protocol"]`` says for COCO-style detection data
PROTOCOL = "coco"


def coco_paths(
    data_root: str | None, ann_file: str | None, image_dir: str | None, prefer: str = "train"
) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` of a COCO-style folder.

    Args:
        data_root: the folder (``None``: ``coco128/`` under the data root search of
            :func:`~torchdcn.data.find_coco128`, used when ``ann_file`` is not given).
        ann_file: the instances JSON; default: the ``annotations/instances_*.json`` of
            ``data_root`` whose split starts with ``prefer``, else the only one.
        image_dir: the images; default ``<data_root>/<split>`` of ``instances_<split>.json``,
            else ``<data_root>/images``, else ``data_root``.

    Raises:
        DataNotFoundError: no folder or no annotation file where looked (exit code 3).
        UsageError: several annotation files and none preferred (pass ``--ann-file``).
    """
    from ..data.coco import find_coco128
    from ..data.mnist import DataNotFoundError

    if ann_file is not None:
        ann = Path(ann_file)
        if not ann.is_file():
            raise DataNotFoundError(f"annotation file not found: {ann}")
        base = Path(data_root) if data_root is not None else ann.parent.parent
    else:
        if data_root is None:
            base = find_coco128(None)
        else:
            base = Path(data_root)
            if not base.is_dir():
                raise DataNotFoundError(f"data folder not found: {base} (--data-root)")
        found = sorted((base / "annotations").glob("instances_*.json"))
        if not found:
            raise DataNotFoundError(
                f"no annotations/instances_*.json under {base}: give a COCO-style folder "
                "(annotations/instances_<split>.json and <split>/ of images) or --ann-file"
            )
        # an exact split name wins (``val`` beside ``val_heldout``), then a prefix (``val2017``)
        preferred = [f for f in found if _split(f) == prefer] or [
            f for f in found if _split(f).startswith(prefer)
        ]
        if len(preferred) == 1 or len(found) == 1:
            ann = (preferred or found)[0]
        else:
            names = ", ".join(f.name for f in found)
            raise UsageError(f"{base}/annotations holds {names}: choose one with --ann-file")
    if image_dir is not None:
        images = Path(image_dir)
    else:
        candidates = [base / _split(ann), base / "images", base]
        images = next((c for c in candidates if c.is_dir()), candidates[0])
    if not images.is_dir():
        raise DataNotFoundError(f"image folder not found: {images} (--image-dir)")
    return ann, images


def _split(ann_file: Path) -> str:
    """``train2017`` of ``instances_train2017.json``."""
    return ann_file.stem.removeprefix("instances_")


class FirstImages(Dataset):
    """The first ``count`` samples of a data set, forwarding ``set_epoch`` (random flips then
    still change per epoch); its ``coco`` and ``label_to_category_id`` stay the full set's."""

    def __init__(self, dataset: Any, count: int) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.dataset, self.count = dataset, min(count, len(dataset))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} images")
        return self.dataset[index]

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:  # coco, label_to_category_id, class_names...
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def coco_dataset(
    ann: Path,
    images: Path,
    train: bool,
    min_size: int,
    max_size: int,
    seed: int = 0,
    masks: bool = False,
) -> Any:
    """A :class:`~torchdcn.data.CocoDetection` with the papers' transforms (flips in training;
    training leaves out images without boxes); ``masks``: with instance masks (Mask R-CNN)."""
    from ..data.coco import CocoDetection
    from ..data.transforms import detection_transforms

    return CocoDetection(
        ann,
        images,
        transforms=detection_transforms(train, min_size, max_size),
        seed=seed,
        drop_empty=train,
        masks=masks,
    )


def limited(dataset: Any, count: int | None) -> Any:
    """``dataset``, or its first ``count`` images."""
    return dataset if count is None else FirstImages(dataset, count)


def training_data(s: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """``(train set, evaluation set, run_info["data"])`` of ``train``'s settings."""
    from .presets import get_preset

    ann, images = coco_paths(s["data_root"], s["ann_file"], s["image_dir"], "train")
    masks = get_preset(s["model"]).masks if s.get("model") else False
    train = coco_dataset(ann, images, True, s["min_size"], s["max_size"], s["seed"], masks)
    if s["val_ann_file"] is None and s["val_image_dir"] is None:
        val_ann, val_images = ann, images
    else:
        val_ann, val_images = coco_paths(
            s["data_root"], s["val_ann_file"] or str(ann), s["val_image_dir"], "val"
        )
    val = coco_dataset(val_ann, val_images, False, s["min_size"], s["max_size"], masks=masks)
    if val.category_ids != train.category_ids:
        raise UsageError(
            f"{val_ann} has category ids {val.category_ids}, {ann} {train.category_ids}: the "
            "evaluation file must have the training file's categories"
        )
    cats = {int(c["id"]): c for c in train.coco.dataset["categories"]}
    info = {
        "protocol": PROTOCOL,
        "ann_file": str(ann.resolve()),
        "image_dir": str(images.resolve()),
        "val_ann_file": str(val_ann.resolve()),
        "val_image_dir": str(val_images.resolve()),
        "min_size": s["min_size"],
        "max_size": s["max_size"],
        "limit_train": s["limit_train"],
        "categories": [{"id": c, "name": str(cats[c].get("name", c))} for c in train.category_ids],
        "masks": masks,
    }
    return limited(train, s["limit_train"]), limited(val, s["limit_test"]), info


def coco_evaluator(dataset: Any) -> Any:
    """``() -> CocoEvaluator`` of ``dataset`` (boxes as ``model(images)`` returns them); it
    scores ``segm`` too when the set has masks (a Mask R-CNN's data)."""
    from ..engine.coco_eval import CocoEvaluator

    iou_types = ("bbox", "segm") if getattr(dataset, "masks", False) else ("bbox",)

    def make() -> Any:
        return CocoEvaluator.from_dataset(dataset, boxes_in="input", iou_types=iou_types)

    return make


def metrics_table(metrics: dict[str, float]) -> str:
    """The COCO numbers as a two-column table in percent (``-`` for COCOeval's -1: nothing to
    score)."""
    from ..engine.coco_eval import metric_names

    names = [n for n in metric_names(("bbox", "segm")) if n in metrics]
    width = max(len(n) for n in names)
    lines = [f"{'metric':<{width}}  {'%':>6}"]
    for name in names:
        value = metrics[name]
        shown = f"{100 * value:6.1f}" if value >= 0 else f"{'-':>6}"
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)


def check_detection_info(info: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    """The checkpoint's ``run_info["data"]`` of a detector (``CheckpointError`` if it has none)."""
    from ..engine.checkpoint import CheckpointError

    data = info.get("data") or {}
    if data.get("protocol") != PROTOCOL or not data.get("categories"):
        raise CheckpointError(
            f"{checkpoint} holds no COCO categories in run_info['data']: was it written by "
            "'torchdcn train --model faster_rcnn|rpn_detector'?"
        )
    return data


def evaluation_set(s: dict[str, Any], data: dict[str, Any]) -> Any:
    """``eval``'s data: ``--data-root`` / ``--ann-file`` if given, else the set the checkpoint
    was evaluated on in training; sizes from the flags, else the checkpoint's."""
    if s["data_root"] is None and s["ann_file"] is None:
        ann, images = Path(data["val_ann_file"]), Path(s["image_dir"] or data["val_image_dir"])
        ann, images = coco_paths(None, str(ann), str(images))
    else:
        ann, images = coco_paths(s["data_root"], s["ann_file"], s["image_dir"], "val")
    dataset = coco_dataset(
        ann, images, False, s["min_size"] or data["min_size"], s["max_size"] or data["max_size"],
        masks=bool(data.get("masks", False)),
    )  # fmt: skip
    wanted = [int(c["id"]) for c in data["categories"]]
    if dataset.category_ids != wanted:
        raise UsageError(
            f"{ann} has category ids {dataset.category_ids} but the checkpoint was trained on "
            f"{wanted}: evaluate on a file with the training categories"
        )
    return limited(dataset, s["limit_test"])
