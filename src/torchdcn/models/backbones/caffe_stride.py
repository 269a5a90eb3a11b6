"""Caffe-style bottlenecks: the stride of a downsampling block in its first 1x1 conv.

torchdcn's :class:`~torchdcn.models.backbones.resnet.Bottleneck` strides in its 3x3 conv
(torchvision's "ResNet v1.5", mmdetection's ``style='pytorch'``, detectron2's
``STRIDE_IN_1X1=False``). MSRA's original ResNets, detectron2's default configs
(``STRIDE_IN_1X1=True``) and mmdetection's ``style='caffe'`` put it in ``conv1`` instead. The
weights have the same shapes either way, so a checkpoint of the other kind loads but computes
something else until the strides are moved: :func:`stride_in_1x1` does that in place.
"""

from __future__ import annotations

from torch import nn

from ...nn import DeformConv2dPack
from .resnet import Bottleneck


def stride_in_1x1(model: nn.Module) -> nn.Module:
    """Move the stride of every strided bottleneck from its 3x3 conv to its 1x1 ``conv1``.

    Args:
        model: a :class:`~torchdcn.models.ResNet` (or any module holding
            :class:`~torchdcn.models.backbones.resnet.Bottleneck` blocks), plain or deformable.

    Returns:
        ``model``, changed in place: ``conv1.stride`` takes the 3x3 conv's stride, which (with
        the stride of its offset predictor, ``conv2.conv_offset``) becomes 1. Every map keeps its
        size (``ceil(H / 2)`` both ways). Calling it twice changes nothing more.

    Raises:
        TypeError: ``model`` holds no bottleneck (ResNet-18/34 have no 1x1 conv to stride).

    Example:
        >>> model = stride_in_1x1(resnet50(deform=deform_from_detectron2([0, 1, 1, 1], True)))
    """
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    if not blocks:
        raise TypeError(
            f"stride_in_1x1 needs a bottleneck ResNet (50 layers or more), got "
            f"{type(model).__name__} without Bottleneck blocks"
        )
    for block in blocks:
        stride = block.conv2.stride
        if stride == (1, 1):
            continue
        block.conv1.stride = stride
        block.conv2.stride = (1, 1)
        if isinstance(block.conv2, DeformConv2dPack):
            block.conv2.conv_offset.stride = (1, 1)
    return model
