"""What every kernel of the RoI pooling family shares: RoI geometry, plane layout, dispatch.

Geometry (SPEC sections 1 and 4), written once so the reference and the fast kernels cannot drift:

* Integer bins (``roi_pool``, ``ps_roi_pool``, v1 Eq. 5): :func:`integer_bins`.
* Real-valued bins with a grid of bilinear samples (``roi_align`` and everything built on it):
  :func:`aligned_geometry` and :func:`sample_coords`.

Planes: the position-sensitive ops read, for bin ``(i, j)`` of output channel ``c``, input channel
``(c * ph + i) * pw + j``. :func:`as_planes` regroups the input into ``P`` planes of ``C_out``
channels (``P = N`` for the plain ops, ``P = N * ph * pw`` for the PS ones, plane ``n * ph * pw +
i * pw + j``), so every kernel reads "plane ``plane_index[r, i, j]``, all its channels" and the PS
ops are the plain ones with another plane index (the ``plane`` of :mod:`._bilinear`).

Dispatch: :func:`run` calls ``forward_<op>``/``backward_<op>`` of the kernel module chosen by
:func:`._backend.select_backend` (``_roi_cpu`` for Numba, ``_roi_triton`` for Triton), falling
back to the readable reference ``_roi_ref`` for any function a module does not define.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _backend


def batch_index(rois: Tensor) -> Tensor:
    """``[R]`` long: the image of each RoI (column 0 of ``rois [R, 5]``)."""
    return rois[:, 0].long()


def _round_half_away(v: Tensor) -> Tensor:
    """C's ``round``: halves away from zero (Caffe and torchvision round RoIs this way)."""
    return torch.sign(v) * torch.floor(v.abs() + 0.5)


def integer_bins(
    rois: Tensor, spatial_scale: float, pooled: tuple[int, int], height: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Integer bins of v1 Eq. 5, clipped to the map.

    The scaled corners are rounded (halves away from zero) to cells ``x1..x2`` (inclusive), so the
    RoI is ``w = max(x2 - x1 + 1, 1)`` cells wide; bin ``j`` spans ``x1 + floor(j * w / pw) <= x <
    x1 + ceil((j + 1) * w / pw)`` (rows likewise), clipped to ``[0, width)``.

    Returns:
        ``y_lo, y_hi`` (``[R, ph]``) and ``x_lo, x_hi`` (``[R, pw]``), long: bin ``(i, j)`` covers
        rows ``y_lo[r, i] <= y < y_hi[r, i]`` and columns ``x_lo[r, j] <= x < x_hi[r, j]``;
        ``hi >= lo`` always, an empty range where the bin lies off the map.
    """
    # clamped first so absurd coordinates cannot overflow int64
    corners = _round_half_away(rois[:, 1:] * spatial_scale).clamp(-(2**31), 2**31).long()
    x1, y1, x2, y2 = corners.unbind(1)

    def edges(start: Tensor, end: Tensor, bins: int, limit: int) -> tuple[Tensor, Tensor]:
        size = (end - start + 1).clamp(min=1)[:, None]
        k = torch.arange(bins, device=rois.device)
        lo = (start[:, None] + (k * size) // bins).clamp(0, limit)
        hi = (start[:, None] - ((-(k + 1) * size) // bins)).clamp(0, limit)  # ceil division
        return lo, torch.maximum(hi, lo)

    return (*edges(y1, y2, pooled[0], height), *edges(x1, x2, pooled[1], width))


def aligned_geometry(
    rois: Tensor,
    spatial_scale: float,
    pooled: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """RoIAlign geometry in feature cells, all ``[R]`` (input's dtype; grids long).

    ``y1 = rois_y1 * spatial_scale - 0.5`` (no shift when ``aligned`` is False), ``roi_h = y2 - y1``
    at least 0 (``aligned``) or 1 (not ``aligned``, the legacy Detectron rule); an inverted RoI is
    therefore a line at its first corner. The grid has ``sampling_ratio`` rows per bin, or
    ``max(1, ceil(roi_h / ph))`` when ``sampling_ratio <= 0`` (at least one sample, so a
    zero-height RoI samples its line rather than reading nothing).

    Returns:
        ``y1, x1, roi_h, roi_w, grid_h, grid_w``.
    """
    shift = 0.5 if aligned else 0.0
    box = rois[:, 1:] * spatial_scale - shift
    x1, y1, x2, y2 = box.unbind(1)
    least = 0.0 if aligned else 1.0
    roi_h = (y2 - y1).clamp(min=least)
    roi_w = (x2 - x1).clamp(min=least)
    if sampling_ratio > 0:
        grid_h = torch.full_like(batch_index(rois), sampling_ratio)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / pooled[0]).long().clamp(min=1)
        grid_w = torch.ceil(roi_w / pooled[1]).long().clamp(min=1)
    return y1, x1, roi_h, roi_w, grid_h, grid_w


def sample_coords(start: Tensor, size: Tensor, bins: int, grid: int) -> Tensor:
    """``[R, bins, grid]`` sample positions along one axis for RoIs sharing one grid size:
    ``start + i * bin + (g + 0.5) * bin / grid`` with ``bin = size / bins``."""
    bin_size = (size / bins)[:, None, None]
    i = torch.arange(bins, device=start.device, dtype=start.dtype)[None, :, None]
    g = torch.arange(grid, device=start.device, dtype=start.dtype)[None, None, :]
    return start[:, None, None] + i * bin_size + (g + 0.5) * bin_size / grid


def as_planes(input: Tensor, pooled: tuple[int, int], position_sensitive: bool) -> Tensor:
    """``[N, C, H, W]`` -> planes ``[P, C_out, H, W]`` (a view; see the module docstring)."""
    if not position_sensitive:
        return input
    n, c, h, w = input.shape
    k = pooled[0] * pooled[1]
    return input.view(n, c // k, k, h, w).transpose(1, 2).reshape(n * k, c // k, h, w)


def from_planes(grad_cl: Tensor, pooled: tuple[int, int], position_sensitive: bool) -> Tensor:
    """Gradient of the planes, channels-last ``[P, H, W, C_out]`` -> ``[N, C, H, W]``."""
    p, h, w, c = grad_cl.shape
    if not position_sensitive:
        return grad_cl.permute(0, 3, 1, 2).contiguous()
    k = pooled[0] * pooled[1]
    # [N, k, H, W, C_out] -> [N, C_out, k, H, W]: input channel c * k + bin
    return grad_cl.reshape(p // k, k, h, w, c).permute(0, 4, 1, 2, 3).reshape(p // k, c * k, h, w)


def plane_index(rois: Tensor, pooled: tuple[int, int], position_sensitive: bool) -> Tensor:
    """``[R, ph, pw]`` long: the plane (of :func:`as_planes`) bin ``(i, j)`` of RoI ``r`` reads."""
    ph, pw = pooled
    b = batch_index(rois)[:, None, None]
    if not position_sensitive:
        return b.expand(-1, ph, pw)
    bins = torch.arange(ph * pw, device=rois.device).view(1, ph, pw)
    return b * (ph * pw) + bins


# --------------------------------------------------------------------------------------------
# Dispatch and the autograd glue of the registered ops.


def kernel_function(name: str, device: torch.device, dtype: torch.dtype) -> Callable[..., Any]:
    """``name`` (e.g. ``"forward_roi_align"``) from the kernel module for ``device``/``dtype``.

    Numba on CPU for float32/float64, Triton on CUDA (float64 runs the reference); a function the
    chosen module lacks (the Triton module may implement only some) falls back to the reference.
    """
    from . import _roi_ref

    backend = _backend.select_backend(device, dtype)
    module = None
    if backend == "numba" and dtype in (torch.float32, torch.float64):
        from . import _roi_cpu as module
    elif backend == "triton" and dtype != torch.float64:
        try:
            from . import _roi_triton as module
        except ModuleNotFoundError as err:
            if not (err.name or "").endswith("_roi_triton"):
                raise
    fn = getattr(module, name, None) if module is not None else None
    return fn if fn is not None else getattr(_roi_ref, name)


def run(name: str, *args: Any) -> Any:
    """Call kernel function ``name`` for the device and dtype of the first tensor argument."""
    first = next(a for a in args if isinstance(a, Tensor))
    fn = kernel_function(name, first.device, first.dtype)
    if name.startswith("forward_"):
        with torch.no_grad():
            return fn(*args)
    return fn(*args)


def register_autograd(op: Any, backward_op: Any, n_tensors: int, n_grads: int) -> None:
    """Autograd of a registered RoI op whose first ``n_tensors`` arguments are tensors (``input``,
    ``rois``, then optional ``offset``, ``mask``) and the rest are plain values.

    ``backward_op(grad, *tensors, *values)`` returns the gradient of ``input`` (``n_grads == 1``)
    or a tuple for ``input`` and the tensors after ``rois``, empty tensors for absent ones.
    """

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensors])
        ctx.values = inputs[n_tensors:]

    def backward(ctx, grad):
        tensors = ctx.saved_tensors
        grads = backward_op(grad.contiguous(), *tensors, *ctx.values)
        if n_grads == 1:
            grads = (grads,)
        # input, then rois (no gradient), then offset/mask where present
        out = [grads[0], None]
        for t, g in zip(tensors[2:], grads[1:]):
            out.append(None if t is None else g)
        return (*out, *([None] * len(ctx.values)))

    op.register_autograd(backward, setup_context=setup_context)
