"""The readable reference of deformable convolution v1/v2 (SPEC sections 2-3), in plain PyTorch.

It runs on any device, is differentiable by autograd (its gradients are the exact derivatives of
SPEC's zero-padding bilinear sampling) and is what every fast kernel is tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backend import batch_chunks
from ._bilinear import bilinear_gather, to_table


def sampling_grid(
    out_size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Regular sampling positions ``p0 + p_k`` before offsets, each ``[K, Ho, Wo]`` (y, then x)."""
    (ho, wo), (kh, kw) = out_size, kernel
    oy = torch.arange(ho, device=device, dtype=dtype) * stride[0] - padding[0]
    ox = torch.arange(wo, device=device, dtype=dtype) * stride[1] - padding[1]
    ky = torch.arange(kh, device=device, dtype=dtype) * dilation[0]
    kx = torch.arange(kw, device=device, dtype=dtype) * dilation[1]
    y = (ky[:, None, None, None] + oy[None, None, :, None]).expand(kh, kw, ho, wo)
    x = (kx[None, :, None, None] + ox[None, None, None, :]).expand(kh, kw, ho, wo)
    return y.reshape(kh * kw, ho, wo), x.reshape(kh * kw, ho, wo)


def sample_columns(
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """The deformable im2col: ``[N, C, K, Ho, Wo]``, each input channel sampled at its K points.

    ``offset`` is ``[N, 2*G*K, Ho, Wo]`` (dy, dx per kernel point), ``mask`` ``[N, G*K, Ho, Wo]``.
    """
    n, c, h, w = input.shape
    k = kernel[0] * kernel[1]
    groups = offset.shape[1] // (2 * k)
    ho, wo = offset.shape[2:]
    base_y, base_x = sampling_grid(
        (ho, wo), kernel, stride, padding, dilation, input.device, input.dtype
    )
    off = offset.view(n, groups, k, 2, ho, wo)
    y = base_y + off[:, :, :, 0]  # [N, G, K, Ho, Wo]
    x = base_x + off[:, :, :, 1]
    # one plane per (image, offset group); each plane's table row holds that group's channels
    table = to_table(input.reshape(n * groups, c // groups, h, w))
    plane = torch.arange(n * groups, device=input.device).view(n, groups, 1, 1, 1)
    cols = bilinear_gather(table, plane, y, x, h, w, "zero")  # [N, G, K, Ho, Wo, C/G]
    if mask is not None:
        cols = cols * mask.view(n, groups, k, ho, wo, 1)
    return cols.permute(0, 1, 5, 2, 3, 4).reshape(n, c, k, ho, wo)


def deform_conv2d_reference(
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """``y(p0) = sum_k w_k * x(p0 + p_k + dp_k) * m_k + b``; arguments as :func:`deform_conv2d`.

    The batch is processed in chunks so the columns stay within the workspace limit.
    """
    n, c, _, _ = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = c // c_per_group
    ho, wo = offset.shape[2:]
    k = kh * kw
    w = weight.reshape(groups, c_out // groups, c_per_group * k)
    # the gather holds 4 corner copies of the columns at once
    per_item = 6 * c * k * ho * wo * input.element_size()
    outs = []
    for start, stop in batch_chunks(n, per_item):
        cols = sample_columns(
            input[start:stop],
            offset[start:stop],
            None if mask is None else mask[start:stop],
            (kh, kw),
            stride,
            padding,
            dilation,
        )
        cols = cols.reshape(stop - start, groups, c_per_group * k, ho * wo)
        outs.append(torch.einsum("gok,ngkp->ngop", w, cols).reshape(stop - start, c_out, ho, wo))
    out = torch.cat(outs) if outs else input.new_zeros(0, c_out, ho, wo)
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1)
    return out
