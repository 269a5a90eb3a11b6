"""Seeded geometric distortions of small digits: scale, rotation and translation on a canvas.

A 28 x 28 digit is drawn at the centre of a ``canvas x canvas`` image, scaled by ``s``, rotated by
``a`` and shifted by ``(tx, ty)`` canvas pixels, by bilinear resampling (zeros outside the digit).
The distortion of digit ``i`` in epoch ``e`` depends only on ``(seed, e, i)``: not on the batch
size, the batch order, the number of processes or how often the data was read before. That is
what lets an interrupted run resume exactly and a 2-process run see the same images as a 1-process
one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

DIGIT_SIZE = 28


@dataclass(frozen=True)
class Distortion:
    """The distribution of one set's distortions.

    Attributes:
        scale: ``(lo, hi)``: scale factor drawn log-uniformly (``(0.5, 0.5)`` fixes it).
        rotation: ``(lo, hi)`` in degrees: the angle's magnitude is uniform in it, its sign random
            (``(0, 15)`` is uniform in [-15, 15]; ``(45, 45)`` is +-45).
        translate: largest shift along each axis in canvas pixels, uniform in ``[-t, t]``.
        canvas: side of the square output image in pixels.
    """

    scale: tuple[float, float] = (1.0, 1.0)
    rotation: tuple[float, float] = (0.0, 0.0)
    translate: float = 0.0
    canvas: int = 48

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {self.scale}")
        lo, hi = self.rotation
        if not 0 <= lo <= hi:
            raise ValueError(f"rotation must be (lo, hi) with 0 <= lo <= hi, got {self.rotation}")
        if self.translate < 0:
            raise ValueError(f"translate must be >= 0, got {self.translate}")
        if self.canvas < 8:
            raise ValueError(f"canvas must be at least 8 pixels, got {self.canvas}")

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, Tensor]:
        """Parameters of ``n`` distortions: ``scale`` ``[n]``, ``angle`` ``[n]`` (radians,
        counter-clockwise) and ``shift`` ``[n, 2]`` (``(dx, dy)`` in canvas pixels)."""
        lo, hi = self.scale
        scale = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
        lo, hi = self.rotation
        angle = np.deg2rad(rng.uniform(lo, hi, n)) * rng.choice([-1.0, 1.0], n)
        shift = rng.uniform(-self.translate, self.translate, (n, 2))
        return {
            "scale": torch.as_tensor(scale, dtype=torch.float32),
            "angle": torch.as_tensor(angle, dtype=torch.float32),
            "shift": torch.as_tensor(shift, dtype=torch.float32),
        }


def render(digits: Tensor, scale: Tensor, angle: Tensor, shift: Tensor, canvas: int) -> Tensor:
    """Draw digits on a canvas.

    Args:
        digits (Tensor[N, 28, 28]): uint8 (0-255) or float (0-1) images.
        scale (Tensor[N]): scale factors; angle (Tensor[N]): radians, counter-clockwise as seen
            on screen; shift (Tensor[N, 2]): ``(dx, dy)`` of the digit centre in canvas pixels.
        canvas: output side in pixels.

    Returns:
        Tensor[N, 1, canvas, canvas], float32 in [0, 1].
    """
    x = digits.float()
    if digits.dtype == torch.uint8:
        x = x / 255.0
    x = x.unsqueeze(1)
    n = x.shape[0]
    # canvas point u (from the centre) reads digit point R(a) (u - t) / s; rows grow downwards,
    # so R(a) there turns the drawn digit counter-clockwise on screen. affine_grid works in
    # normalised coordinates: u / (canvas / 2) on the canvas, v / (28 / 2) on the digit.
    cos, sin = torch.cos(angle), torch.sin(angle)
    k = (canvas / DIGIT_SIZE) / scale
    a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    a = a * k[:, None, None]
    t = -(a @ (shift / (canvas / 2)).unsqueeze(-1))
    theta = torch.cat([a, t], -1)
    grid = F.affine_grid(theta, [n, 1, canvas, canvas], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def digit_centre(shift: Tensor, canvas: int) -> Tensor:
    """``[N, 2]`` ``(x, y)`` pixel coordinates (pixel centres at integers) of the digit centres
    drawn with ``shift`` ``[N, 2]`` on a ``canvas``-sized image."""
    return shift + (canvas - 1) / 2


class DistortedDigits(Dataset):
    """A set of digits, each redrawn with a fresh distortion every epoch.

    A map-style data set: ``ds[i]`` is ``(image [1, canvas, canvas] float32, label)`` of digit
    ``i`` as distorted in the current epoch (:meth:`set_epoch`; 0 until set), and a DataLoader
    reads a whole batch with one :meth:`__getitems__` (one resampling call). ``get_batch(indices,
    epoch)`` draws the digits ``indices`` as distorted in ``epoch``. The parameters of a whole
    epoch are drawn at once from a generator seeded with ``(seed, epoch)``.

    Args:
        images (Tensor[N, 28, 28]): uint8 digits; labels (Tensor[N]): int64 classes.
        distortion: the distribution to draw from.
        seed: the set's seed (a test set keeps one seed for every run, so runs compare).
    """

    def __init__(self, images: Tensor, labels: Tensor, distortion: Distortion, seed: int) -> None:
        if images.dim() != 3 or images.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE):
            raise ValueError(f"images must be [N, 28, 28], got {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be [N] = [{len(images)}], got {tuple(labels.shape)}")
        self.images, self.labels = images, labels
        self.distortion, self.seed = distortion, seed
        self.epoch = 0
        self._cache: tuple[int, dict[str, Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Draw the distortions of ``epoch`` from now on (``ds[i]``, :meth:`__getitems__`)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        """Samples ``indices`` of the current epoch, drawn with one :func:`render` call."""
        images, labels = self.get_batch(torch.as_tensor(indices, dtype=torch.int64), self.epoch)
        return list(zip(images, labels, strict=True))

    def params(self, epoch: int) -> dict[str, Tensor]:
        """Every digit's distortion in ``epoch`` (see :meth:`Distortion.sample`)."""
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._cache = (epoch, self.distortion.sample(len(self), rng))
        return self._cache[1]

    def get_batch(self, indices: Tensor, epoch: int = 0) -> tuple[Tensor, Tensor]:
        """``(images [B, 1, canvas, canvas] float32 in [0, 1], labels [B] int64)``."""
        p = self.params(epoch)
        img = render(
            self.images[indices],
            p["scale"][indices],
            p["angle"][indices],
            p["shift"][indices],
            self.distortion.canvas,
        )
        return img, self.labels[indices]
