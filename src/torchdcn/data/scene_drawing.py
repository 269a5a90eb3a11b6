"""How one digit scene is drawn: digit geometry, placement without touching ink, clutter.

:func:`make_scene` draws a ``canvas x canvas`` uint8 image of digits of a :class:`DigitPool`, their
masks, tight boxes and a semantic class map; :mod:`torchdcn.data.digit_scenes` writes whole
splits of them as COCO data (its docstring describes the scenes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IGNORE_LABEL = 255


@dataclass(frozen=True)
class Geometry:
    """Distribution of one digit's geometry.

    Attributes:
        heights: ranges ``(lo, hi)`` of the digit's height in pixels (its ink, before rotation);
            a range is picked uniformly, then the height log-uniformly in it.
        aspect: ``(lo, hi)``: width factor (on top of the digit's own width at that height),
            log-uniform.
        rotation: ranges ``(lo, hi)`` of the angle's magnitude in degrees, ``0 <= lo <= hi <=
            180`` (a range picked uniformly, the magnitude uniform in it, the sign random).
    """

    heights: tuple[tuple[float, float], ...] = ((16.0, 44.0),)
    aspect: tuple[float, float] = (0.75, 1.33)
    rotation: tuple[tuple[float, float], ...] = ((0.0, 20.0),)

    def __post_init__(self) -> None:
        # a rotation's magnitude beyond 180 degrees is the same angle as 360 minus it
        for name, ranges, low, high in (
            ("heights", self.heights, 2.0, math.inf),
            ("rotation", self.rotation, 0, 180),
        ):
            if not ranges or any(len(r) != 2 or not low <= r[0] <= r[1] <= high for r in ranges):
                bound = "" if high == math.inf else f" <= {high}"
                raise ValueError(
                    f"{name} must be a non-empty tuple of (lo, hi) with {low} <= lo <= hi{bound}, "
                    f"got {ranges!r}"
                )
        if len(self.aspect) != 2 or not 0 < self.aspect[0] <= self.aspect[1]:
            raise ValueError(f"aspect must be (lo, hi) with 0 < lo <= hi, got {self.aspect!r}")

    def sample(self, rng: np.random.Generator) -> tuple[float, float, float]:
        """``(height px, aspect, rotation degrees)`` of one digit."""
        lo, hi = self.heights[rng.integers(len(self.heights))]
        height = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        aspect = math.exp(rng.uniform(math.log(self.aspect[0]), math.log(self.aspect[1])))
        lo, hi = self.rotation[rng.integers(len(self.rotation))]
        angle = rng.uniform(lo, hi) * (1.0 if rng.random() < 0.5 else -1.0)
        return height, aspect, angle


#: held-out geometry: smaller and larger digits than any in training, rotated more
HELDOUT_GEOMETRY = Geometry(heights=((9.0, 13.0), (52.0, 64.0)), rotation=((30.0, 45.0),))


@dataclass(frozen=True)
class SceneConfig:
    """Generator parameters (all written into the JSON ``info``).

    Attributes:
        canvas: side of the square images in pixels.
        digits: ``(lo, hi)``: digits drawn per scene, uniform (fewer if some find no place).
        geometry, heldout_geometry: digit geometry of the in-distribution and held-out splits.
        max_iou: largest IoU between two digit boxes of a scene.
        min_gap: smallest distance in pixels between the inks of two digits (and clutter).
        max_tries: positions tried per digit before it is left out.
        clutter: ``(lo, hi)`` clutter fragments per scene, uniform; ``(0, 0)`` for none.
        mask_level: a pixel is on the mask if at least this fraction of the digit's brightest.
        val_per_class: validation digits per class carved from the training digits.
    """

    canvas: int = 128
    digits: tuple[int, int] = (2, 6)
    geometry: Geometry = field(default_factory=Geometry)
    heldout_geometry: Geometry = HELDOUT_GEOMETRY
    max_iou: float = 0.15
    min_gap: int = 1
    max_tries: int = 50
    clutter: tuple[int, int] = (0, 3)
    mask_level: float = 0.5
    val_per_class: int = 50

    def __post_init__(self) -> None:
        if self.canvas < 32:
            raise ValueError(f"canvas must be at least 32 pixels, got {self.canvas}")
        for name in ("digits", "clutter"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi or (name == "digits" and lo < 1):
                raise ValueError(f"{name} must be (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}")
        if not 0 <= self.max_iou < 1:
            raise ValueError(f"max_iou must be in [0, 1), got {self.max_iou}")
        if self.min_gap < 0 or self.max_tries < 1:
            raise ValueError(
                f"min_gap must be >= 0 and max_tries >= 1, got {self.min_gap}, {self.max_tries}"
            )
        if not 0 < self.mask_level < 1:
            raise ValueError(f"mask_level must be in (0, 1), got {self.mask_level}")
        if not 1 <= self.val_per_class < 400:
            raise ValueError(f"val_per_class must be in 1..399, got {self.val_per_class}")
        for g in (self.geometry, self.heldout_geometry):
            if max(hi for _, hi in g.heights) * g.aspect[1] > self.canvas:
                raise ValueError(f"digits of {g} may not fit on a {self.canvas} px canvas")

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> SceneConfig:
        """The config of a JSON ``info["config"]`` (lists back to tuples): regenerates a set."""

        def geometry(g: dict[str, Any]) -> Geometry:
            return Geometry(
                heights=tuple(tuple(r) for r in g["heights"]),
                aspect=tuple(g["aspect"]),
                rotation=tuple(tuple(r) for r in g["rotation"]),
            )

        values = dict(config)
        for key in ("geometry", "heldout_geometry"):
            values[key] = geometry(values[key])
        for key in ("digits", "clutter"):
            values[key] = tuple(values[key])
        return cls(**values)


@dataclass
class Scene:
    """One generated scene (numpy, in memory).

    Attributes:
        image: uint8 ``[H, W]``; semantic: uint8 ``[H, W]`` (0, 1..10, 255).
        masks: bool ``[K, H, W]``; labels: int64 ``[K]`` digits 0..9;
        boxes: float64 ``[K, 4]`` ``(x1, y1, x2, y2)`` pixel edges of each mask's tight box.
        params: per digit ``{"height", "aspect", "rotation", "digit_index"}``.
        dropped: digits drawn but left out for want of space; clutter: fragments drawn.
    """

    image: np.ndarray
    semantic: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    params: list[dict[str, float | int]]
    dropped: int = 0
    clutter: int = 0


@dataclass(frozen=True)
class DigitPool:
    """Digits a split draws from: uint8 ``[N, 28, 28]`` images, int64 labels and their row
    ``indices`` in ``mnist_5k.csv.gz``."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray


def _ink_crop(digit: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(digit)
    if len(ys) == 0:
        return digit
    return digit[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def draw_digit(crop: np.ndarray, height: float, aspect: float, rotation: float) -> np.ndarray:
    """A digit (uint8 ``[h, w]`` cropped to its ink) resized so its ink is ``height`` px tall and
    ``aspect`` times its natural width, then rotated by ``rotation`` degrees counter-clockwise;
    uint8 trimmed to its non-zero pixels. Resizing is anti-aliased (Pillow), rotation bilinear."""
    from PIL import Image

    pad = 2  # zero border so the resized edges fade out instead of being cut
    src = np.pad(crop, pad)
    sy = height / crop.shape[0]
    sx = sy * aspect
    size = (max(1, round(src.shape[1] * sx)), max(1, round(src.shape[0] * sy)))
    img = Image.fromarray(src).resize(size, Image.Resampling.BILINEAR)
    img = img.rotate(rotation, resample=Image.Resampling.BILINEAR, expand=True)
    out = np.asarray(img)
    ys, xs = np.nonzero(out)
    if len(ys) == 0:
        return np.zeros((1, 1), np.uint8)
    return out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Square dilation by ``r`` pixels (output ``r`` larger on every side)."""
    h, w = mask.shape
    out = np.zeros((h + 2 * r, w + 2 * r), bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out[dy : dy + h, dx : dx + w] |= mask
    return out


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0)
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + areas - inter)


class _Canvas:
    """Occupancy bookkeeping of one scene while digits and clutter are placed."""

    def __init__(self, size: int, gap: int) -> None:
        self.size, self.gap = size, gap
        self.image = np.zeros((size, size), np.uint8)
        # ink of everything placed, dilated by `gap`, with a `gap` border so slices never clip
        self.taken = np.zeros((size + 2 * gap, size + 2 * gap), bool)

    def fits(self, grown: np.ndarray, y: int, x: int) -> bool:
        """Whether ink ``grown`` (a patch's ink dilated by ``gap``) at ``(y, x)`` is free."""
        h, w = grown.shape
        return not (self.taken[y : y + h, x : x + w] & grown).any()

    def put(self, patch: np.ndarray, y: int, x: int) -> None:
        g, (h, w) = self.gap, patch.shape
        self.taken[y : y + h + 2 * g, x : x + w + 2 * g] |= _dilate(patch > 0, g)
        region = self.image[y : y + h, x : x + w]
        np.maximum(region, patch, out=region)


def _place(
    canvas: _Canvas,
    patch: np.ndarray,
    rng: np.random.Generator,
    tries: int,
    box_of: Any,
    boxes: np.ndarray,
    max_iou: float,
) -> tuple[int, int] | None:
    """A position ``(y, x)`` where ``patch`` touches no ink and its box (``box_of(y, x)``) has IoU
    at most ``max_iou`` with ``boxes``; ``None`` after ``tries`` draws."""
    h, w = patch.shape
    if h > canvas.size or w > canvas.size:
        return None
    grown = _dilate(patch > 0, canvas.gap)
    for _ in range(tries):
        y = int(rng.integers(canvas.size - h + 1))
        x = int(rng.integers(canvas.size - w + 1))
        if len(boxes) and _iou(box_of(y, x), boxes).max() > max_iou:
            continue
        if canvas.fits(grown, y, x):
            return y, x
    return None


def make_scene(
    pool: DigitPool, geometry: Geometry, config: SceneConfig, rng: np.random.Generator
) -> Scene:
    """Draw one scene from ``pool`` with ``geometry`` (see the module docstring)."""
    size = config.canvas
    canvas = _Canvas(size, config.min_gap)
    semantic = np.zeros((size, size), np.uint8)
    masks, labels, boxes, params = [], [], [], []
    n = int(rng.integers(config.digits[0], config.digits[1] + 1))
    dropped = 0
    for _ in range(n):
        k = int(rng.integers(len(pool.labels)))
        height, aspect, angle = geometry.sample(rng)
        patch = draw_digit(_ink_crop(pool.images[k]), height, aspect, angle)
        mask = patch >= max(1, math.ceil(config.mask_level * int(patch.max())))
        if not mask.any():  # nothing left to see (cannot happen for heights >= 2 px)
            dropped += 1
            continue
        ys, xs = np.nonzero(mask)
        local = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)

        def box_of(y: int, x: int, local: np.ndarray = local) -> np.ndarray:
            return local + np.array([x, y, x, y], np.float64)

        placed = np.array(boxes).reshape(-1, 4)
        where = _place(canvas, patch, rng, config.max_tries, box_of, placed, config.max_iou)
        if where is None:
            dropped += 1
            continue
        y, x = where
        canvas.put(patch, y, x)
        full = np.zeros((size, size), bool)
        full[y : y + patch.shape[0], x : x + patch.shape[1]] = mask
        label = int(pool.labels[k])
        sem = semantic[y : y + patch.shape[0], x : x + patch.shape[1]]
        sem[(patch > 0) & ~mask] = IGNORE_LABEL
        sem[mask] = label + 1
        masks.append(full)
        labels.append(label)
        boxes.append(box_of(y, x))
        params.append(
            {
                "height": round(height, 3),
                "aspect": round(aspect, 4),
                "rotation": round(angle, 3),
                "digit_index": int(pool.indices[k]),
            }
        )
    clutter = _add_clutter(canvas, pool, geometry, config, rng, np.array(boxes).reshape(-1, 4))
    return Scene(
        image=canvas.image,
        semantic=semantic,
        masks=np.array(masks, bool).reshape(-1, size, size),
        labels=np.array(labels, np.int64),
        boxes=np.array(boxes, np.float64).reshape(-1, 4),
        params=params,
        dropped=dropped,
        clutter=clutter,
    )


def _add_clutter(
    canvas: _Canvas,
    pool: DigitPool,
    geometry: Geometry,
    config: SceneConfig,
    rng: np.random.Generator,
    boxes: np.ndarray,
) -> int:
    """Fragments of random pool digits, drawn like digits, placed touching no ink and outside
    every digit box (IoU 0 and no intersection). Returns how many were placed."""
    count = int(rng.integers(config.clutter[0], config.clutter[1] + 1))
    placed = 0
    for _ in range(count):
        crop = _ink_crop(pool.images[int(rng.integers(len(pool.labels)))])
        h, w = crop.shape
        fh = min(h, max(2, round(h * rng.uniform(0.35, 0.65))))
        fw = min(w, max(2, round(w * rng.uniform(0.35, 0.65))))
        y0, x0 = int(rng.integers(h - fh + 1)), int(rng.integers(w - fw + 1))
        piece = crop[y0 : y0 + fh, x0 : x0 + fw]
        height, aspect, angle = geometry.sample(rng)
        if not piece.any():
            continue
        patch = draw_digit(_ink_crop(piece), height * fh / h, aspect, angle)

        def box_of(y: int, x: int, patch: np.ndarray = patch) -> np.ndarray:
            return np.array([x, y, x + patch.shape[1], y + patch.shape[0]], np.float64)

        # max_iou -1 would refuse everything; 0 < IoU means intersection, so ask for IoU <= 0
        where = _place(canvas, patch, rng, config.max_tries, box_of, boxes, 0.0)
        if where is not None:
            canvas.put(patch, *where)
            placed += 1
    return placed
