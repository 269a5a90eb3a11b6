"""The VOC colour map, label PNGs and the overlay blend, against values written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchdcn.analysis.label_overlay import label_image, label_palette, overlay_labels

pytest.importorskip("PIL")


def test_palette_is_vocs():
    p = label_palette()
    assert p.shape == (256, 3) and p.dtype == np.uint8
    # VOC's SegmentationClass colours: background, aeroplane, bicycle, bird, boat, ..., person
    assert p[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert p[15].tolist() == [192, 128, 128] and p[255].tolist() == [224, 224, 192]


def test_label_image_and_overlay_by_hand():
    labels = torch.tensor([[0, 1], [2, 255]])
    png = label_image(labels)
    assert png.mode == "P" and np.asarray(png).tolist() == [[0, 1], [2, 255]]
    assert np.asarray(png.convert("RGB"))[1, 0].tolist() == [0, 128, 0]
    photo = np.full((2, 2, 3), 100, np.uint8)
    out = np.asarray(overlay_labels(photo, labels, alpha=0.25))
    assert out[0, 0].tolist() == [100, 100, 100]  # background untouched
    assert out[0, 1].tolist() == [107, 75, 75]  # 0.75 * 100 + 0.25 * (128, 0, 0)
    assert out[1, 1].tolist() == [131, 131, 123]  # 255: 0.75 * 100 + 0.25 * (224, 224, 192)
    tensor_photo = torch.full((3, 2, 2), 100 / 255)
    assert np.array_equal(np.asarray(overlay_labels(tensor_photo, labels, 0.25)), out)
    with pytest.raises(ValueError, match="alpha"):
        overlay_labels(photo, labels, 1.5)
    with pytest.raises(ValueError, match="labels are"):
        overlay_labels(photo, torch.zeros(3, 3, dtype=torch.long))
