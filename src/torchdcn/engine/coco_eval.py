"""COCO detection metrics with pycocotools' ``COCOeval``, as an :class:`~.evaluator.Evaluator`.

``process(outputs, targets)`` takes a batch of a detector's eval-mode outputs, one dict per image
(``"boxes"`` float Tensor[K, 4] (x1, y1, x2, y2), ``"labels"`` int64 Tensor[K] in 1..C,
``"scores"`` Tensor[K], optionally ``"masks"`` Tensor[K, H, W] or [K, 1, H, W], probabilities or
0/1), and the batch's targets as :class:`~torchdcn.data.CocoDetection` gives them (``"image_id"``,
``"orig_size"``, ``"size"``, ``"flipped"``). It turns them into COCO results (category ids,
``[x, y, w, h]`` boxes in the pixels of the annotation file, RLE masks) and keeps them.
``summarize()`` gathers the results of every process (:func:`~.distributed.all_gather_object`)
and scores the union with ``COCOeval`` on every image processed (an image without detections
counts its ground truth as missed). Each image counts once: an image given again keeps the
results it was first given, whether the repeat comes in the same process (a warning then says
so; call ``reset()`` between evaluations) or in another one, so one process and many agree.
Predicted boxes must be finite ``(x1, y1, x2, y2)`` with ``x2 >= x1`` and ``y2 >= y1`` (a
``ValueError`` names the output's ``'boxes'`` otherwise, e.g. for ``(x, y, w, h)`` boxes).
Numbers are fractions in [0, 1]:

- ``AP`` (IoU 0.50:0.95), ``AP50``, ``AP75``, ``APs`` / ``APm`` / ``APl`` (small / medium /
  large objects): COCOeval's own summary, 100 detections per image;
- ``mAP@0.5`` and ``mAP@0.7``: the VOC-style numbers the DCN papers report next to COCO AP,
  read from COCOeval's precision array (101-point interpolated precision, all areas, 100
  detections) at IoU 0.5 and 0.7 and averaged over the categories with ground truth, the way
  COCOeval averages AP50 (so ``mAP@0.5`` equals ``AP50``);
- with ``iou_types=("bbox", "segm")`` the mask numbers again, prefixed ``segm_``.

A value of -1 means there was nothing to score (COCOeval's convention: no ground truth of that
kind among the images processed). The text table of COCOeval is kept in :attr:`CocoEvaluator.table`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import distributed

#: names of COCOeval's 12 summary numbers that are reported, by position in ``stats``
SUMMARY_NAMES = {0: "AP", 1: "AP50", 2: "AP75", 3: "APs", 4: "APm", 5: "APl"}
#: IoU thresholds of the VOC-style numbers
VOC_IOUS = (0.5, 0.7)
IOU_TYPES = ("bbox", "segm")


def _load_gt(coco_gt: Any) -> Any:
    if isinstance(coco_gt, (str, Path)):
        from ..data.coco import load_coco

        return load_coco(coco_gt)
    if not hasattr(coco_gt, "loadRes") or not hasattr(coco_gt, "dataset"):
        raise TypeError(
            f"coco_gt must be a pycocotools COCO or a path to a COCO JSON, got "
            f"{type(coco_gt).__name__}"
        )
    return coco_gt


def metric_names(iou_types: Sequence[str] = ("bbox",)) -> list[str]:
    """The keys :meth:`CocoEvaluator.summarize` returns for ``iou_types``."""
    base = [*SUMMARY_NAMES.values(), *(f"mAP@{t}" for t in VOC_IOUS)]
    return [("" if kind == "bbox" else f"{kind}_") + name for kind in iou_types for name in base]


class CocoEvaluator:
    """COCO AP of a detector's outputs against a COCO annotation file (module docstring).

    Args:
        coco_gt: the ground truth: a ``pycocotools.coco.COCO`` (``dataset.coco``) or the path of
            its JSON. Scored as in the file (crowds, boxes outside images...), as the field does.
        label_to_category_id: label ``l`` (1..C) -> category id of the file, a dict or a sequence
            whose item ``l - 1`` is the id; default: the file's category ids sorted, as
            :class:`~torchdcn.data.CocoDetection` numbers them.
        iou_types: ``("bbox",)`` or ``("bbox", "segm")`` (the outputs then carry ``"masks"``).
        boxes_in: where the output boxes (and masks) are: ``"input"`` (pixels of the transformed
            image the model saw, as ``model(images)`` returns them: mapped back with the
            targets' ``"size"``, ``"orig_size"`` and ``"flipped"``) or ``"original"`` (already in
            the file's pixels, as ``model(images, orig_sizes=...)`` returns them).
        mask_threshold: a float mask is the set of pixels with probability at least this
            (0.5); masks given at the input size are first resized bilinearly (and unflipped)
            to the original image, then binarised and RLE-encoded with pycocotools.
        area_ranges: ``(small_max, large_min)``: the object areas that bound the small / medium
            / large buckets of ``APs`` / ``APm`` / ``APl`` (default: COCO's ``(32**2, 96**2)``),
            for data whose objects all fall in one COCO bucket (digit scenes).
    """

    def __init__(
        self,
        coco_gt: Any,
        label_to_category_id: Mapping[int, int] | Sequence[int] | None = None,
        iou_types: Sequence[str] = ("bbox",),
        boxes_in: str = "input",
        mask_threshold: float = 0.5,
        area_ranges: tuple[float, float] | None = None,
    ) -> None:
        self.coco_gt = _load_gt(coco_gt)
        if area_ranges is not None:
            ok = (
                isinstance(area_ranges, Sequence)
                and len(area_ranges) == 2
                and all(
                    isinstance(a, (int, float)) and not isinstance(a, bool) for a in area_ranges
                )
                and 0 < area_ranges[0] < area_ranges[1]
            )
            if not ok:
                raise ValueError(
                    "area_ranges must be (small_max, large_min) areas with 0 < small_max < "
                    f"large_min, got {area_ranges!r}"
                )
            area_ranges = (float(area_ranges[0]), float(area_ranges[1]))
        self.area_ranges = area_ranges
        if (
            isinstance(iou_types, str)
            or not iou_types
            or any(t not in IOU_TYPES for t in iou_types)
        ):
            raise ValueError(
                f"iou_types must be a non-empty subset of {IOU_TYPES}, got {iou_types!r}"
            )
        if boxes_in not in ("input", "original"):
            raise ValueError(f"boxes_in must be 'input' or 'original', got {boxes_in!r}")
        if label_to_category_id is None:
            label_to_category_id = sorted(int(c) for c in self.coco_gt.getCatIds())
        if isinstance(label_to_category_id, Mapping):
            mapping = {int(k): int(v) for k, v in label_to_category_id.items()}
        else:
            mapping = {i + 1: int(c) for i, c in enumerate(label_to_category_id)}
        unknown = sorted(set(mapping.values()) - {int(c) for c in self.coco_gt.getCatIds()})
        if unknown:
            raise ValueError(
                f"label_to_category_id maps to category ids {unknown} that the ground truth "
                "does not have"
            )
        self.label_to_category_id = mapping
        self.iou_types = tuple(iou_types)
        self.boxes_in, self.mask_threshold = boxes_in, mask_threshold
        self.table = ""
        self.reset()

    @classmethod
    def from_dataset(cls, dataset: Any, **kwargs: Any) -> CocoEvaluator:
        """An evaluator of ``dataset`` (a :class:`~torchdcn.data.CocoDetection`): its ``coco``
        and ``label_to_category_id``."""
        return cls(dataset.coco, dataset.label_to_category_id, **kwargs)

    def reset(self) -> None:
        self._results: dict[str, list[dict[str, Any]]] = {t: [] for t in self.iou_types}
        self._image_ids: list[int] = []
        self._seen: set[int] = set()

    # -- collecting -----------------------------------------------------------------------------

    def process(self, outputs: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping]) -> None:
        """Keep the COCO results of one batch: ``outputs[i]`` are the detections of the image of
        ``targets[i]``. An image already processed keeps its first results (a warning says so;
        the repeat is skipped unconverted)."""
        if len(outputs) != len(targets):
            raise ValueError(
                f"outputs and targets must have one entry per image, got {len(outputs)} outputs "
                f"and {len(targets)} targets"
            )
        for i, (output, target) in enumerate(zip(outputs, targets)):
            image_id = int(target["image_id"])
            if image_id not in self.coco_gt.imgs:
                raise ValueError(f"image_id {image_id} is not in the ground truth")
            if image_id in self._seen:  # not converted: a repeat's masks are not encoded
                warnings.warn(
                    f"image_id {image_id} was already processed; its first results are kept and "
                    f"these are ignored (call reset() before evaluating again)",
                    stacklevel=2,
                )
                continue
            results = self._convert(i, image_id, output, target)
            for kind, rows in results.items():
                self._results[kind] += rows
            self._image_ids.append(image_id)
            self._seen.add(image_id)

    def _convert(
        self, index: int, image_id: int, output: Mapping[str, Tensor], target: Mapping
    ) -> dict[str, list[dict[str, Any]]]:
        """The COCO results ``{iou type: [result, ...]}`` of ``outputs[index]``, checked."""
        for key in ("boxes", "labels", "scores"):
            if key not in output:
                raise ValueError(f"each output must have '{key}', got keys {sorted(output)}")
        boxes = output["boxes"].detach().float().cpu().reshape(-1, 4)
        ok = torch.isfinite(boxes).all(dim=1) & (boxes[:, 2:] >= boxes[:, :2]).all(dim=1)
        if not bool(ok.all()):
            row = int(torch.nonzero(~ok)[0])
            raise ValueError(
                f"outputs[{index}]['boxes'] (image {image_id}) must be finite (x1, y1, x2, y2) "
                f"with x2 >= x1 and y2 >= y1, got row {row} = {boxes[row].tolist()}; (x, y, w, h) "
                f"boxes must be converted first"
            )
        labels = output["labels"].detach().cpu().reshape(-1).tolist()
        scores = output["scores"].detach().float().cpu().reshape(-1).tolist()
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError(
                f"image {image_id}: boxes, labels and scores must have the same length, got "
                f"{len(boxes)}, {len(labels)}, {len(scores)}"
            )
        bad = sorted({int(lab) for lab in labels} - set(self.label_to_category_id))
        if bad:
            raise ValueError(
                f"image {image_id}: labels {bad} have no category id (known labels "
                f"{min(self.label_to_category_id)}..{max(self.label_to_category_id)})"
            )
        orig_h, orig_w = (int(v) for v in target["orig_size"])
        if self.boxes_in == "input":
            in_h, in_w = (int(v) for v in target.get("size", (orig_h, orig_w)))
            if target.get("flipped", False):
                boxes = torch.stack(
                    [in_w - boxes[:, 2], boxes[:, 1], in_w - boxes[:, 0], boxes[:, 3]], dim=1
                )
            boxes = boxes * torch.tensor([orig_w / in_w, orig_h / in_h] * 2)
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        categories = [self.label_to_category_id[int(lab)] for lab in labels]
        results: dict[str, list[dict[str, Any]]] = {}
        if "bbox" in self.iou_types:
            results["bbox"] = [
                {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
                for c, b, s in zip(categories, xywh, scores)
            ]
        if "segm" in self.iou_types:
            if "masks" not in output:
                raise ValueError(f"iou_types has 'segm' but the output of {image_id} has no masks")
            rles = self._encode_masks(output["masks"], len(labels), target, (orig_h, orig_w))
            results["segm"] = [
                {"image_id": image_id, "category_id": c, "segmentation": r, "score": s}
                for c, r, s in zip(categories, rles, scores)
            ]
        return results

    def _encode_masks(
        self, masks: Tensor, count: int, target: Mapping, orig_size: tuple[int, int]
    ) -> list[dict[str, Any]]:
        from pycocotools import mask as mask_util

        masks = masks.detach().cpu()
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.dim() != 3 or len(masks) != count:
            raise ValueError(
                f"output masks must be [K, H, W] or [K, 1, H, W] with K = {count}, got "
                f"{tuple(masks.shape)}"
            )
        if count == 0:
            return []
        masks = masks.float()
        if self.boxes_in == "input":
            if target.get("flipped", False):
                masks = masks.flip(-1)
            if tuple(masks.shape[-2:]) != orig_size:
                masks = F.interpolate(masks[None], size=orig_size, mode="bilinear")[0]
        if tuple(masks.shape[-2:]) != orig_size:
            raise ValueError(
                f"output masks are {tuple(masks.shape[-2:])} but the image is {orig_size} (h, w)"
            )
        binary = (masks >= self.mask_threshold).numpy().astype(np.uint8)
        rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")  # JSON- and pickle-friendly
        return list(rles)

    # -- scoring --------------------------------------------------------------------------------

    def results(self, iou_type: str = "bbox") -> list[dict[str, Any]]:
        """This process's COCO results of ``iou_type`` so far (the JSON a COCO server takes)."""
        return list(self._results[iou_type])

    def gathered(self) -> tuple[list[int], dict[str, list[dict[str, Any]]]]:
        """``(image ids, {iou type: results})`` of every process, each image once (an image
        processed by several processes keeps the results of the lowest rank; within a process
        :meth:`process` already kept only the first)."""
        shares = distributed.all_gather_object((self._image_ids, self._results))
        image_ids: list[int] = []
        results: dict[str, list[dict[str, Any]]] = {t: [] for t in self.iou_types}
        owner: dict[int, int] = {}
        for rank, (ids, _) in enumerate(shares):
            for i in ids:
                owner.setdefault(i, rank)
        for rank, (_, share) in enumerate(shares):
            for kind in self.iou_types:
                results[kind] += [r for r in share[kind] if owner[r["image_id"]] == rank]
        image_ids = sorted(owner)
        return image_ids, results

    def summarize(self) -> dict[str, float]:
        image_ids, results = self.gathered()
        metrics: dict[str, float] = {}
        tables = []
        for kind in self.iou_types:
            prefix = "" if kind == "bbox" else f"{kind}_"
            values, table = self._score(kind, image_ids, results[kind])
            metrics.update({prefix + k: v for k, v in values.items()})
            tables.append(f"{kind}:\n{table}")
        self.table = "\n".join(tables)
        return metrics

    def _segm_gt(self) -> Any:
        """The ground truth for ``segm``: ``coco_gt`` itself, or (when some annotations have no
        ``segmentation``) a copy in which those get their box as a rectangle polygon, the mask
        :class:`~torchdcn.data.CocoDetection` trains them with."""
        anns = self.coco_gt.dataset.get("annotations", [])
        if all(a.get("segmentation") for a in anns):
            return self.coco_gt
        from pycocotools.coco import COCO

        filled = []
        for a in anns:
            if not a.get("segmentation"):
                x, y, w, h = (float(v) for v in a["bbox"])
                a = {**a, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
            filled.append(a)
        gt = COCO()
        gt.dataset = {**self.coco_gt.dataset, "annotations": filled}
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
        return gt

    def _score(
        self, kind: str, image_ids: list[int], results: list[dict[str, Any]]
    ) -> tuple[dict[str, float], str]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        names = metric_names(("bbox",))
        if not image_ids:
            return dict.fromkeys(names, -1.0), "(no images processed)"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            if results:
                # loadRes writes into the dicts (ids, areas, boxes): give it copies
                coco_dt = self.coco_gt.loadRes([dict(r) for r in results])
            else:  # loadRes cannot take an empty list; every ground truth box is then missed
                coco_dt = COCO()
                coco_dt.dataset = {
                    "images": list(self.coco_gt.dataset["images"]),
                    "categories": list(self.coco_gt.dataset["categories"]),
                    "annotations": [],
                }
                coco_dt.createIndex()
            coco_gt = self._segm_gt() if kind == "segm" else self.coco_gt
            coco_eval = COCOeval(coco_gt, coco_dt, kind)
            coco_eval.params.imgIds = image_ids
            if self.area_ranges is not None:
                small, large = self.area_ranges
                coco_eval.params.areaRng = [[0, 1e10], [0, small], [small, large], [large, 1e10]]
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        values = {name: float(coco_eval.stats[i]) for i, name in SUMMARY_NAMES.items()}
        for iou in VOC_IOUS:
            values[f"mAP@{iou}"] = voc_map(coco_eval, iou)
        table = "\n".join(line for line in out.getvalue().splitlines() if "Average" in line)
        return values, table


def voc_map(coco_eval: Any, iou: float, max_dets: int = 100) -> float:
    """Mean over categories of the 101-point interpolated AP at IoU ``iou`` (all areas,
    ``max_dets`` detections per image), read from an accumulated ``COCOeval``'s
    ``eval["precision"]`` (shape [T, R, K, A, M]) exactly as COCOeval averages AP50; -1 when no
    category has ground truth."""
    params = coco_eval.params
    hits = np.flatnonzero(np.isclose(params.iouThrs, iou))
    if not len(hits):
        raise ValueError(f"iou {iou} is not one of COCOeval's thresholds {list(params.iouThrs)}")
    area = list(params.areaRngLbl).index("all")
    dets = list(params.maxDets).index(max_dets)
    precision = coco_eval.eval["precision"][hits[0], :, :, area, dets]  # [R, K]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0
