"""``torchdcn detect IMAGE_OR_DIR --checkpoint CKPT --out DIR``: a detector run on image files.

For every image (a folder contributes its image files, sorted, not recursing), the model of the
checkpoint sees the image resized as in training (shorter side ``min_size``, longer at most
``max_size``: the checkpoint's unless given) and returns boxes in the file's pixels. Written to
``--out``:

- ``<stem>.png`` per image: the detections scoring at least ``--score-thresh`` drawn with
  :func:`torchdcn.analysis.draw.draw_detections`, named by the checkpoint's COCO categories (a
  Mask R-CNN's masks painted under the boxes);
- ``detections.json``: those detections as COCO results, ``[{"image_id", "category_id",
  "bbox": [x, y, w, h], "score"}, ...]`` (category ids of the training file, as
  ``COCO.loadRes`` takes them); a Mask R-CNN's also carry ``"segmentation"``, the mask
  binarised at ``>= 0.5`` as COCO RLE (``{"size": [h, w], "counts": str}``, pycocotools);
- ``images.json``: ``{"images": [{"id", "file_name", "path", "height", "width", "png"}],
  "categories": [{"id", "name"}]}``, which maps the files to the ids of the results. Ids are
  those of ``--ann-file`` (matched by file name), else 1, 2, ... in the order processed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .option import UsageError

#: file endings read from a folder (an image named explicitly may have any Pillow reads)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def image_files(inputs: list[str]) -> list[Path]:
    """The image files of ``inputs`` (files, or folders of images); ``DataNotFoundError`` for a
    path that does not exist or a folder without images."""
    from ..data.mnist import DataNotFoundError

    files: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise DataNotFoundError(
                    f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}"
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataNotFoundError(f"image or folder not found: {path}")
    return files


def _ids_from_annotations(ann_file: str, files: list[Path]) -> list[int]:
    """The id of each file in a COCO JSON's ``images`` (by ``file_name``, or its last part)."""
    from ..data.mnist import DataNotFoundError

    path = Path(ann_file)
    if not path.is_file():
        raise DataNotFoundError(f"annotation file not found: {path} (--ann-file)")
    images = json.loads(path.read_text()).get("images", [])
    by_name = {str(i["file_name"]): int(i["id"]) for i in images}
    by_name.update({Path(str(i["file_name"])).name: int(i["id"]) for i in images})
    missing = [f.name for f in files if f.name not in by_name]
    if missing:
        raise UsageError(
            f"--ann-file {path} lists no image named {', '.join(missing[:3])}"
            + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
        )
    return [by_name[f.name] for f in files]


def _read(path: Path) -> Any:
    from PIL import Image

    from ..data.mnist import DataFormatError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as err:
        raise DataFormatError(f"cannot read image {path}: {err}") from err


def _png_names(files: list[Path]) -> list[str]:
    """``<stem>.png`` per file, numbered when two files share a stem."""
    names, used = [], set()
    for f in files:
        name, n = f"{f.stem}.png", 1
        while name in used:
            n += 1
            name = f"{f.stem}_{n}.png"
        used.add(name)
        names.append(name)
    return names


def _rle(masks: Any) -> list[dict[str, Any]]:
    """COCO RLEs (``counts`` as text) of ``[K, 1, H, W]`` probability masks binarised at 0.5."""
    import numpy as np

    try:
        from pycocotools import mask as mask_util
    except ImportError as err:
        raise UsageError(
            "writing a Mask R-CNN's masks as COCO RLE needs pycocotools: "
            "pip install 'torchdcn[coco]'"
        ) from err

    binary = (masks.reshape(len(masks), *masks.shape[-2:]) >= 0.5).numpy().astype(np.uint8)
    if len(binary) == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    return [{"size": list(r["size"]), "counts": r["counts"].decode("ascii")} for r in rles]


def _lower_model_threshold(model: Any, score_thresh: float) -> None:
    """Let ``--score-thresh`` below the model's own post-processing threshold (0.05) through:
    the box head (or the class-aware RPN detector) keeps detections down to it."""
    for holder in (getattr(model, "roi_heads", None), model):
        if holder is not None and hasattr(holder, "score_thresh"):
            holder.score_thresh = min(float(holder.score_thresh), score_thresh)
            return


def run_detect(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``detect`` command with its settings; returns the COCO results written."""
    from ..analysis.draw import draw_detections
    from ..data.transforms import detection_transforms
    from ..engine.device import resolve_device
    from ..engine.distributed import set_cpu_threads
    from .detection import check_detection_info
    from .presets import model_from_checkpoint

    set_cpu_threads(s["threads"] or torch.get_num_threads())
    files = image_files(s["inputs"])
    model, preset, info = model_from_checkpoint(s["checkpoint"], "to detect with")
    if preset.task != "detection":
        raise UsageError(
            f"{s['checkpoint']} is a {preset.task} checkpoint ({info.get('model')}); detect "
            "needs a detector's (faster_rcnn, mask_rcnn, rfcn, rpn_detector)"
        )
    _lower_model_threshold(model, s["score_thresh"])
    data = check_detection_info(info, s["checkpoint"])
    categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in data["categories"]]
    names = [c["name"] for c in categories]
    ids = _ids_from_annotations(s["ann_file"], files) if s["ann_file"] else None
    transform = detection_transforms(
        False, s["min_size"] or data["min_size"], s["max_size"] or data["max_size"]
    )
    device = resolve_device(s["device"])
    model.to(device).eval()
    out = Path(s["out"])
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for index, (path, png) in enumerate(zip(files, _png_names(files), strict=True)):
        picture = _read(path)
        image, _ = transform(picture, {"boxes": torch.zeros(0, 4)})
        size = (picture.height, picture.width)
        with torch.no_grad():
            (found,) = model([image.to(device)], orig_sizes=[size])
        keep = found["scores"] >= s["score_thresh"]
        boxes, labels, scores = (found[k][keep].cpu() for k in ("boxes", "labels", "scores"))
        masks = found["masks"][keep].cpu() if "masks" in found else None
        draw_detections(picture, boxes, labels, scores, names, masks=masks).save(out / png)
        image_id = ids[index] if ids is not None else index + 1
        rles = _rle(masks) if masks is not None else [None] * len(boxes)
        for box, label, score, rle in zip(boxes.tolist(), labels.tolist(), scores.tolist(), rles):
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": image_id,
                    "category_id": categories[int(label) - 1]["id"],
                    "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                    "score": round(float(score), 4),
                    **({"segmentation": rle} if rle is not None else {}),
                }
            )
        images.append(
            {
                "id": image_id,
                "file_name": path.name,
                "path": str(path),
                "height": size[0],
                "width": size[1],
                "png": png,
            }
        )
        print(f"{path}: {len(boxes)} detections -> {out / png}")
    (out / "detections.json").write_text(json.dumps(results, indent=1))
    (out / "images.json").write_text(
        json.dumps({"images": images, "categories": categories}, indent=1)
    )
    print(f"results: {out / 'detections.json'} ({len(results)} detections, ids in images.json)")
    return results
