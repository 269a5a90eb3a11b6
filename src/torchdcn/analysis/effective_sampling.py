"""Effective sampling locations (v2 paper, section 2, Fig. 1-2).

The sampling locations of a deformable layer (:func:`~torchdcn.analysis.effective_dilation.
sampling_grid`: every output position's ``kh x kw`` points, in cells of the layer's input) each
get a weight: the gradient of a node's response (:mod:`~torchdcn.analysis.erf`) with respect to
that location, ``|d response / d p|`` (2-norm over ``(y, x)``). A location moves by its offset, so
this is the gradient with respect to the offset, taken from the recorded offset tensor (hooks,
:mod:`~torchdcn.analysis.probe`). The node may sit on the layer itself (then only its own ``K``
points have a weight) or on any layer above it (then every position of its receptive field
contributes). For modulated (v2) layers the gradient with respect to each mask is returned too.
Points map to image pixels as ``cell * s`` (``s``: the stride of the layer's input).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops import deform_conv2d
from ..ops._checks import real_scalar
from .effective_dilation import sampling_grid
from .erf import node_response
from .probe import (
    Forward,
    Recorded,
    check_images,
    default_forward,
    evaluating,
    feature_stride,
    layer_output,
    record_offsets,
    require_deformable,
)


@dataclass
class EffectiveSampling:
    """Result of :func:`effective_sampling_locations` for a batch.

    Attributes:
        points: ``Tensor[N, P, 2]`` ``(y, x)`` image pixels of the ``P = G * kh * kw * H_out *
            W_out`` sampling locations (order of :func:`sampling_grid`).
        cells: the same in cells of the deformable layer's input.
        weights: ``Tensor[N, P]``: ``|d response / d location|``.
        offset_grad: ``Tensor[N, 2 * G * kh * kw, H_out, W_out]``: the gradient per offset.
        mask_grad: ``Tensor[N, G * kh * kw, H_out, W_out]`` (v2) or ``None``.
        stride: image pixels per cell of the layer's input.
        layer: name of the deformable layer.
        call: which call of the layer (0: its first in the forward pass).
    """

    points: Tensor
    cells: Tensor
    weights: Tensor
    offset_grad: Tensor
    mask_grad: Tensor | None
    stride: int
    layer: str
    call: int = 0


def effective_sampling_locations(
    model: nn.Module,
    images: Tensor,
    layer: str,
    node: tuple[int, int] | None = None,
    below: str | None = None,
    channel: int | None = None,
    forward: Forward = default_forward,
    call: int | None = None,
) -> EffectiveSampling:
    """Weighted sampling locations of deformable layer ``below`` for a node of ``layer``.

    Args:
        model: a model with deformable layers (eval mode inside; left as it was).
        images: ``Tensor[N, C, H, W]`` as ``forward`` takes them.
        layer: qualified name of the module whose output holds the node.
        node: ``(y, x)`` in that output (default its centre).
        below: the deformable layer whose locations are weighted (default ``layer`` itself when it
            is deformable, else the last deformable layer, by first call, that ran before
            ``layer``'s output).
        channel: one channel, or ``None`` for the sum over channels.
        forward: how the model is run.
        call: which call of ``below`` before ``layer``'s output (0 first), for a layer called
            several times (a head shared by pyramid levels); ``None``: its only call (a
            ``ValueError`` when it ran several times).

    Returns:
        :class:`EffectiveSampling`. ``ValueError`` for a model without deformable layers.
    """
    check_images(images)
    require_deformable(model, "effective_sampling_locations")
    with torch.enable_grad(), evaluating(model), record_offsets(model, track=True) as rec:
        feats = layer_output(model, images.detach(), layer, forward)
        if below is None:
            below = layer if layer in rec else (list(rec)[-1] if rec else None)
        if below not in rec:
            raise ValueError(
                f"below must name a deformable layer that runs before {layer!r}'s output, got "
                f"{below!r} (ran: {', '.join(rec) or 'none'})"
            )
        call = _call_index(len(rec[below]), below, layer, call)
        r = rec[below][call]
        response = node_response(feats, node, channel).sum()
        # gradients with respect to the tensors the layer consumed (a slice taken here would be
        # a new view outside the graph): the predictor's raw output, or the offset/mask
        # arguments; a Pack layer's own mask is out of reach: its output's gradient is taken
        # (no output: the pass stopped inside the layer, the node does not depend on it)
        pack_mask = r.mask is not None and r.raw_mask is None and r.output is not None
        wanted = [r.raw] + ([r.raw_mask] if r.raw_mask is not None else [])
        wanted += [r.output] if pack_mask else []
        grads = [
            torch.zeros_like(t) if g is None else g
            for t, g in zip(wanted, torch.autograd.grad(response, wanted, allow_unused=True))
        ]
        n_off = r.offset.shape[1]
        off_grad = grads[0][:, :n_off]
        mask_grad = None
        if r.raw_mask is not None:
            mask_grad = grads[1]
        elif pack_mask:
            mask_grad = _pack_mask_grad(r, grads[1])
        elif r.mask is not None:
            mask_grad = torch.zeros_like(r.mask)
    geo = r.geometry
    cells = sampling_grid(r.offset.detach().float(), geo)  # [N, G, kh, kw, H, W, 2]
    n = cells.shape[0]
    kh, kw = geo.kernel_size
    g = cells.shape[1]
    h, w = off_grad.shape[-2:]
    gy_gx = off_grad.detach().float().reshape(n, g, kh, kw, 2, h, w).movedim(4, -1)
    weights = gy_gx.norm(dim=-1).flatten(1)  # [N, P] (N may be 0: no reshape(n, -1))
    stride = feature_stride(images.shape[-2], r.input_size[0])
    cells = cells.flatten(1, -2)  # [N, P, 2]
    return EffectiveSampling(
        cells * stride,
        cells,
        weights,
        off_grad.detach(),
        None if mask_grad is None else mask_grad.detach(),
        stride,
        below,
        call,
    )


def _pack_mask_grad(r: Recorded, out_grad: Tensor) -> Tensor:
    """``d response / d mask`` ``[N, G * kh * kw, H_out, W_out]`` of a modulated Pack layer,
    given ``out_grad`` ``= d response / d output``: the layer is run again from its recorded
    input, offsets and masks (all detached, the mask a fresh leaf) and the output's gradient
    pulled back to the mask. Going through the predictor's logits instead divides by the
    sigmoid's slope ``m (1 - m)``, which is 0 where the mask saturates (``m == 1.0`` in float32
    from logits of about 17): the gradient was lost there."""
    layer, mask = r.layer, r.mask.detach().requires_grad_()
    with torch.enable_grad():
        out = deform_conv2d(
            r.input.detach(), r.offset.detach(), layer.weight.detach(), None, layer.stride,
            layer.padding, layer.dilation, mask,
        )  # fmt: skip
        (grad,) = torch.autograd.grad(out, mask, out_grad)
    return grad


def _call_index(calls: int, below: str, layer: str, call: int | None) -> int:
    """``call``, checked against the ``calls`` calls of ``below`` (``None``: the only one)."""
    if call is None:
        if calls > 1:
            raise ValueError(
                f"below {below!r} ran {calls} times before {layer!r}'s output (a layer shared by "
                f"several inputs): pass call= 0 to {calls - 1} to choose one"
            )
        return 0
    call = real_scalar(call, "call", integral=True)  # TypeError for a non-integer
    if not 0 <= call < calls:
        raise ValueError(
            f"call must be an int in [0, {calls}) ({below!r} ran {calls} times before "
            f"{layer!r}'s output), got {call!r}"
        )
    return call
