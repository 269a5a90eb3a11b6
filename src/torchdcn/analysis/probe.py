"""Looking inside a model without changing it: eval mode for a while, hooks that record what
deformable layers compute, and the output of one named layer.

Every analysis tool runs the model through these helpers, so none edits the model: the training
flags are put back as they were (:func:`evaluating`), hooks are removed on the way out (also on an
error), and no parameter's value, ``requires_grad`` or ``.grad`` is touched (gradients are taken
with :func:`torch.autograd.grad` with respect to the image or recorded activations only).

Offsets are recorded with forward hooks: on the offset predictor ``conv_offset`` of the layers that
own one (:class:`~torchdcn.nn.DeformConv2dPack`, :class:`~torchdcn.nn.ModulatedDeformConv2dPack`),
and on the arguments ``(input, offset, mask)`` of the layers that are given them
(:class:`~torchdcn.nn.DeformConv2d`, :class:`~torchdcn.nn.ModulatedDeformConv2d`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn import DeformConv2d

#: ``forward(model, images [N, C, H, W])``: how a tool runs the model (its output is ignored)
Forward = Callable[[nn.Module, Tensor], object]


def default_forward(model: nn.Module, images: Tensor) -> object:
    """``model(images)``: a classifier of a batch tensor."""
    return model(images)


def detector_forward(model: nn.Module, images: Tensor) -> object:
    """``model(list(images))``: a detector of :mod:`torchdcn.models.detection`."""
    return model(list(images))


@dataclass(frozen=True)
class LayerGeometry:
    """Kernel, stride, top/left padding and dilation of a conv, each ``(h, w)`` (also in
    :mod:`torchdcn.analysis.sampling`)."""

    kernel_size: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)

    @classmethod
    def of(cls, layer: nn.Module) -> LayerGeometry:
        """The geometry of an ``nn.Conv2d`` or a ``torchdcn.nn`` deformable conv. ``padding``
        ``'valid'`` is ``(0, 0)``; ``'same'`` pads ``dilation * (kernel - 1) // 2`` at the top
        and left (the odd extra row or column goes at the bottom or right, as ``nn.Conv2d``)."""
        kernel = tuple(int(v) for v in _pair(layer.kernel_size))
        stride = tuple(int(v) for v in _pair(layer.stride))
        dilation = tuple(int(v) for v in _pair(layer.dilation))
        padding = layer.padding
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
        elif isinstance(padding, str):
            raise ValueError(f"layer.padding must be ints, 'same' or 'valid', got {padding!r}")
        return cls(kernel, stride, tuple(int(v) for v in _pair(padding)), dilation)  # type: ignore[arg-type]


def _pair(value: object) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; every module's training flag is restored on the way out."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def deformable_layers(model: nn.Module) -> dict[str, DeformConv2d]:
    """The deformable convs of ``model`` (any :class:`~torchdcn.nn.DeformConv2d`) by qualified
    name, in registration order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DeformConv2d)}


def require_deformable(model: nn.Module, tool: str) -> dict[str, DeformConv2d]:
    """:func:`deformable_layers`, or a ``ValueError`` naming ``tool`` when there is none."""
    layers = deformable_layers(model)
    if not layers:
        raise ValueError(
            f"{tool} needs a model with deformable layers (torchdcn.nn.DeformConv2d and its "
            f"subclasses), but {type(model).__name__} has none: a plain model has no offsets"
        )
    return layers


def named_module(model: nn.Module, name: str) -> nn.Module:
    """``model``'s sub-module called ``name``; ``ValueError`` listing some names otherwise."""
    modules = dict(model.named_modules())
    if name not in modules:
        some = ", ".join(n for n in list(modules)[1:12] if n)
        raise ValueError(f"layer must name a sub-module of the model, got {name!r} (e.g. {some})")
    return modules[name]


@dataclass
class Recorded:
    """What a deformable layer computed in one call (a forward pass may call a layer several
    times: :func:`record_offsets` keeps each).

    Attributes:
        name: the layer's qualified name.
        layer: the module.
        input_size: ``(H, W)`` of its input.
        offset: ``Tensor[N, 2 * G * kh * kw, H_out, W_out]`` (``(dy, dx)`` pairs), in the graph.
        mask: ``Tensor[N, G * kh * kw, H_out, W_out]`` (v2) or ``None``.
        raw: the tensor the offsets were read from (``conv_offset``'s output for the Pack layers,
            else the offset argument): take gradients with respect to it (a slice taken
            afterwards, like ``offset`` of a Pack layer, is a new view outside the graph).
        raw_mask: the mask argument of a layer given its masks, else ``None``.
        input: ``Tensor[N, C_in, H, W]`` the layer's input, and ``output`` ``Tensor[N, C_out,
            H_out, W_out]`` its output, of a modulated Pack layer recorded with ``track=True``
            (the mask it computes inside is out of reach: its gradient is taken by running the
            layer again from these), else ``None``.
    """

    name: str
    layer: DeformConv2d
    input_size: tuple[int, int]
    offset: Tensor
    mask: Tensor | None
    raw: Tensor
    raw_mask: Tensor | None = None
    input: Tensor | None = None
    output: Tensor | None = None

    @property
    def geometry(self) -> LayerGeometry:
        return LayerGeometry.of(self.layer)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once what is wanted is recorded."""


@contextmanager
def record_offsets(
    model: nn.Module, names: list[str] | None = None, track: bool = False
) -> Iterator[dict[str, list[Recorded]]]:
    """Record the offsets (and masks) of the deformable layers during forward passes in the
    block: ``{name: [Recorded, ...]}``, every call of each layer in the order they ran (a layer
    shared by several inputs, e.g. a head applied to each pyramid level, has one record per call;
    ``names``: only these layers, default all; layers that did not run are absent).

    ``track=True`` makes each recorded tensor part of the autograd graph even when nothing
    upstream requires grad (it is then a fresh leaf of the same values), so gradients can be
    taken with respect to it.
    """
    layers = deformable_layers(model)
    if names is not None:
        missing = [n for n in names if n not in layers]
        if missing:
            raise ValueError(
                f"names must name deformable layers of the model, got {missing!r} not among them "
                f"(deformable layers: {', '.join(layers) or 'none'})"
            )
        layers = {n: layers[n] for n in names}
    out: dict[str, list[Recorded]] = {}
    handles = []

    def on_predictor(name: str, layer: DeformConv2d):
        def hook(module: nn.Module, args: tuple, output: Tensor):
            if track and not output.requires_grad:
                output = output.detach().requires_grad_()
            n_off = 2 * layer.offset_groups * layer.kernel_size[0] * layer.kernel_size[1]
            mask = output[:, n_off:].sigmoid() if layer.modulated else None
            size = (args[0].shape[-2], args[0].shape[-1])
            rec = Recorded(name, layer, size, output[:, :n_off], mask, output)
            if track and mask is not None:
                rec.input = args[0]
            out.setdefault(name, []).append(rec)
            return output

        return hook

    def on_output(name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            out[name][-1].output = output  # the call whose predictor just ran

        return hook

    def on_arguments(name: str, layer: DeformConv2d):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            args = list(args)
            offset = args[1] if len(args) > 1 else kwargs.get("offset")
            mask = args[2] if len(args) > 2 else kwargs.get("mask")
            if track and not offset.requires_grad:
                offset = offset.detach().requires_grad_()
            if track and mask is not None and not mask.requires_grad:
                mask = mask.detach().requires_grad_()
            if len(args) > 1:
                args[1] = offset
            else:
                kwargs["offset"] = offset
            if len(args) > 2:
                args[2] = mask
            elif mask is not None:
                kwargs["mask"] = mask
            size = (args[0].shape[-2], args[0].shape[-1])
            out.setdefault(name, []).append(Recorded(name, layer, size, offset, mask, offset, mask))
            return tuple(args), kwargs

        return hook

    try:
        for name, layer in layers.items():
            if hasattr(layer, "conv_offset"):
                handles.append(layer.conv_offset.register_forward_hook(on_predictor(name, layer)))
                if track and layer.modulated:
                    handles.append(layer.register_forward_hook(on_output(name)))
            else:
                handles.append(
                    layer.register_forward_pre_hook(on_arguments(name, layer), with_kwargs=True)
                )
        yield out
    finally:
        for handle in handles:
            handle.remove()


def layer_output(
    model: nn.Module,
    images: Tensor,
    layer: str,
    forward: Forward = default_forward,
    stop: bool = True,
) -> Tensor:
    """The output of sub-module ``layer`` when ``forward(model, images)`` runs, in the autograd
    graph of ``images``. With ``stop`` the pass ends right after that layer (the rest of the model
    is not computed). A layer that returns something other than a Tensor is a ``TypeError``."""
    module = named_module(model, layer)
    got: list[Tensor] = []

    def hook(mod: nn.Module, args: tuple, output: object) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(f"layer {layer!r} must output a Tensor, got {type(output).__name__}")
        got.append(output)
        if stop:
            raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        forward(model, images)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not got:
        raise ValueError(f"layer {layer!r} did not run in the forward pass")
    return got[0]


def check_images(images: Tensor, name: str = "images") -> Tensor:
    """``images`` must be a float ``Tensor[N, C, H, W]``."""
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else images
        raise ValueError(f"{name} must be a float Tensor[N, C, H, W], got {got}")
    return images


def check_boxes(boxes: object, name: str = "boxes") -> Tensor:
    """``boxes`` must be a ``Tensor[M, 4]`` ``(x1, y1, x2, y2)`` (``M`` may be 0): RoIs ``[K, 5]``
    with the batch index first (torchvision's layout) are a ``ValueError``, not reshaped."""
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        got = list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        hint = ""
        if isinstance(boxes, Tensor) and boxes.dim() == 2 and boxes.shape[1] == 5:
            hint = " (RoIs [K, 5] have the batch index first: pass rois[:, 1:] per image)"
        raise ValueError(f"{name} must be a Tensor[M, 4] (x1, y1, x2, y2), got {got}{hint}")
    return boxes


def feature_stride(image_size: int, feature_size: int) -> int:
    """The power of two nearest to ``image_size / feature_size``: image pixels per cell of a
    feature map (cell ``i`` is centred on pixel ``stride * i``, as for stride-2 convs padded by
    ``kernel // 2``)."""
    if feature_size <= 0:
        raise ValueError(f"feature_size must be positive, got {feature_size}")
    ratio = max(image_size / feature_size, 1.0)
    return int(2 ** round(torch.log2(torch.tensor(ratio)).item()))
