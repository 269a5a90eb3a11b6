"""The demo CNN names its layers as the backbones do (``deformable_layers()``), and its body
convs, plain or not, ``body_layers()``."""

from __future__ import annotations

import pytest
from torch import nn

from torchdcn.models.classification import mnist_cnn
from torchdcn.nn import DeformConv2dPack, ModulatedDeformConv2dPack


@pytest.mark.parametrize(
    ("deform", "kind"),
    [(None, nn.Conv2d), ("v1", DeformConv2dPack), ("v2", ModulatedDeformConv2dPack)],
)
def test_body_and_deformable_layers(deform, kind):
    model = mnist_cnn(deform, width=8)
    body = model.body_layers()
    assert len(body) == 3 and all(type(m) is kind for m in body)
    assert body == [model.body[i] for i in range(3)]
    expected = {} if deform is None else {f"body.{i}": model.body[i] for i in range(3)}
    assert model.deformable_layers() == expected


def test_deform_must_be_a_preset():
    with pytest.raises(ValueError, match="deform must be None, 'v1' or 'v2'"):
        mnist_cnn("v3")
