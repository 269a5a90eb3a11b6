"""Fast CPU deformable convolution: Numba sampling kernels around PyTorch's own matrix product,
in cache-sized blocks (kernels and column layout: :mod:`._deform_conv_cpu_kernels`).

The output positions are processed in blocks of whole output rows whose columns
``[rows * W_out, groups * K * C/groups]`` take about :data:`BLOCK_BYTES` (on one thread, whole
small images about :data:`ONE_THREAD_BLOCK_BYTES`): a block is sampled and at once multiplied by
the weight while it is still in cache, and one block buffer serves the whole call. Writing all of
an image's columns instead costs a trip to memory, and past glibc's 32 MiB mmap ceiling fresh
page faults on every call. Backward recomputes each block's columns instead of keeping them, in
the same pass over the input as its input, offset and mask gradients.

The products are PyTorch's own, one call per block (:class:`_Product`): the forward multiplies
the columns into rows ``[positions, C_out]`` that one transposing copy moves to the NCHW output (a
block inside a big image writes each image's part the same way); the backward reads the output
gradient as rows for blocks of whole images (one transposing copy) and as a strided view of the
NCHW tensor read in place for blocks inside an image. With more than one thread the forward is a
1x1 convolution over the columns seen as a channels-last image (oneDNN for float32; PyTorch's
``_slow_conv2d`` for float64 or with mkldnn off), on one thread ``torch.mm`` per conv group, or
for float32 blocks of :data:`GRID_BYTES` and more a ``(kh, kw)``-strided convolution over the
columns written as a tiled image (the *grid*, :class:`_Product`); the backward's products
(columns' and weight gradients) are ``torch.mm`` always. These are plain
APIs on PyTorch's thread pool: no optional package, no raw pointers
(benchmarks/bench_deform_conv.py measures the op against onnxruntime's and OpenVINO's,
benchmarks/bench_cpu_products.py the product routes).

Memory beyond the inputs and results, per batch chunk (:func:`_item_bytes`; the chunk is as many
images as fit :func:`~torchdcn.ops.set_workspace_limit`, at least one): forward, a padded
channels-last copy of the chunk's input, one column block (:data:`BLOCK_BYTES`) and its product
rows; backward, the padded copy, the input-gradient accumulator (one per Numba thread unless a
block holds at least one image per thread: :func:`_blocks`), two column blocks and the product
rows. So the bound is about ``max(workspace limit, one image's share) + 2 * BLOCK_BYTES``
(benchmarks/bench_memory.py); where the padded copy pads first
(:func:`_padded_channels_last`) an NCHW padded temporary of the chunk's input exists while it is
made.
"""

from __future__ import annotations

import numba
import torch
import torch.nn.functional as F
from torch import Tensor

from ._backend import batch_chunks
from ._deform_conv_cpu_kernels import (
    column_places,
    columns_kernel,
    grad_kernel_images,
    grad_kernel_parts,
    runs,
)
from ._numba_threads import thread_budget

BLOCK_BYTES = 16 << 20

#: On one thread, blocks of whole images take about this many bytes instead (when an image fits):
#: with no hand-offs between threads to amortise, a block that stays in cache pays off. On this
#: project's VM, one thread, forward products on ``torch.mm``, batches of small images took
#: 0.70-0.80x their 16 MiB forward time and 0.63-0.86x their forward+backward time at 2 MiB
#: (0.78-0.85x / 0.76-1.08x at 4 MiB), while single big images took 1.13x / 0.93x and 0.78x /
#: 0.72x, within this VM's noise, and keep 16 MiB row blocks
#: (benchmarks/bench_block_bytes.py --threads 1 --route mm, benchmarks/RESULTS.md).
ONE_THREAD_BLOCK_BYTES = 2 << 20

#: Channel planes of a multiple of this many bytes are padded before the transposing copy
#: (:func:`_padded_channels_last`).
PAD_FIRST_BYTES = 2048

#: How the forward's block products run (:class:`_Product`): ``"auto"`` (the default: ``"conv"``
#: with more than one torch thread; on one, ``"grid"`` for float32 with PyTorch's mkldnn backend
#: on and blocks of :data:`GRID_BYTES` or more, else ``"mm"``), ``"mm"`` (``torch.mm``),
#: ``"conv"`` (oneDNN's 1x1 convolution) or ``"grid"`` (the columns as a tiled image, a
#: ``(kh, kw)``-strided convolution). Private: tests and benchmarks/bench_cpu_products.py set it
#: to take each route on any machine.
PRODUCTS = "auto"
ROUTES = ("mm", "conv", "grid")

#: ``"auto"`` takes the grid route for forward column blocks of at least this many bytes (on one
#: thread, in practice images whose columns do not fit :data:`ONE_THREAD_BLOCK_BYTES`). On this
#: project's VM, one thread, the op's forward on the grid took 0.82x and 0.77x ``torch.mm``'s time
#: on the 16 MiB row blocks of (1, 256, 38x50) and (1, 128, 75x100), 0.74-0.85x for (8, 64,
#: 32x32) at 2-4 MiB, but 1.07-1.29x for (64, 32, 12x12) and (16, 64, 24x24) at 2-4 MiB
#: (benchmarks/bench_block_bytes.py --route mm|grid); the threshold sits between the sizes
#: measured, not at a measured optimum.
GRID_BYTES = 8 << 20


def _setup(input, offset, weight, stride, padding, dilation):
    """``(groups, offset_groups, geom, w2)`` of a call."""
    c_out, cq, kh, kw = weight.shape
    k = kh * kw
    geom = (kh, kw, *stride, *padding, *dilation)
    # the weight as a matrix [C_out, (kernel point, channel)] matching one group's columns
    w2 = weight.permute(0, 2, 3, 1).reshape(c_out, k * cq).contiguous()
    return input.shape[1] // cq, offset.shape[1] // (2 * k), geom, w2


def _padded_channels_last(input: Tensor) -> Tensor:
    """``[N, C, H, W]`` -> ``[N, H + 2, W + 2, C]`` with a zero border, contiguous.

    When a channel plane is a multiple of :data:`PAD_FIRST_BYTES` (16 x 32 float32, ...) the
    transposing copy's reads of one pixel's channels fall in a few L1 cache sets; padding first
    moves the planes (H + 2)(W + 2) apart. On this project's VM, 2 threads, that took 0.45-0.76x
    the direct copy's time for planes of 2, 4, 6 and 8 KiB with 64-128 channels (0.94x at 2 KiB
    with 32), and 1.08-1.65x for planes of 576, 1600 and 30000 bytes
    (benchmarks/bench_cpu_products.py --part copies). Padding first allocates an NCHW padded
    temporary besides the result."""
    n, c, h, w = input.shape
    if (h * w * input.element_size()) % PAD_FIRST_BYTES == 0:
        return F.pad(input, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()
    xpad = input.new_zeros(n, h + 2, w + 2, c)
    xpad[:, 1:-1, 1:-1].copy_(input.permute(0, 2, 3, 1))
    return xpad


def _blocks(images: int, ho: int, row_bytes: int) -> tuple[list[tuple[int, int]], int]:
    """Row blocks ``(t0, t1)`` of about :data:`BLOCK_BYTES` (:data:`ONE_THREAD_BLOCK_BYTES` on
    one thread when an image fits in it) and the images per block.

    When one image's rows fit, blocks are whole images (``k`` per block, a multiple of the thread
    count when more fit) and ``k`` is returned; else blocks of rows (a multiple of the thread
    count when long) cut through images and ``0`` is returned."""
    threads = numba.get_num_threads()
    rows = images * ho
    limit = BLOCK_BYTES
    if threads == 1 and ho * row_bytes <= ONE_THREAD_BLOCK_BYTES:
        limit = min(limit, ONE_THREAD_BLOCK_BYTES)
    k = limit // max(1, ho * row_bytes)
    if k >= 1:
        k = min(k, images)
        if k > threads:
            k -= k % threads
        step = k * ho
    else:
        step = max(1, limit // max(1, row_bytes))
        if step > threads:
            step -= step % threads
    return [(t0, min(rows, t0 + step)) for t0 in range(0, rows, step)], k


def _segments(t0: int, t1: int, ho: int, wo: int):
    """The images a block of rows ``[t0, t1)`` touches: ``(n, block positions, image
    positions)`` as slices (``n`` relative to the chunk)."""
    for n in range(t0 // ho, (t1 - 1) // ho + 1):
        a, b = max(t0, n * ho), min(t1, (n + 1) * ho)
        yield n, slice((a - t0) * wo, (b - t0) * wo), slice((a - n * ho) * wo, (b - n * ho) * wo)


def _as_image(rows: Tensor) -> Tensor:
    """Rows ``[P, C]`` (unit stride along C) as a channels-last image ``[1, C, 1, P]`` of the
    same memory, the layout oneDNN's 1x1 convolution reads in place."""
    return rows.unsqueeze(0).unsqueeze(0).permute(0, 3, 1, 2)


class _Product:
    """The block products of one call for ``groups`` conv groups; ``w2`` ``[C_out, K * Cq]``
    (the weight's channels-last memory), ``kernel = (kh, kw)``.

    A block's columns in the product layout are ``[P, groups * K * Cq]``, which is also a
    channels-last image of ``P`` pixels and ``groups * K * Cq`` channels. The forward product runs
    (:data:`PRODUCTS`) as a 1x1 convolution over that image (all groups in one call) with more
    than one thread, as ``torch.mm`` per group on one: on this project's 2-core VM, 2 threads,
    the convolution took 0.79-0.96x ``torch.mm``'s time on the forward blocks of the benchmark
    shapes and the op's forward 0.76-0.98x (v2, five shapes, three runs); on one thread it was no
    faster (blocks 0.94-1.05x, the op's forward 0.99-1.11x; a later VM's one-thread tables gave
    0.84-1.06x and 0.68-1.08x, within their noise): benchmarks/bench_cpu_products.py,
    RESULTS.md. On one thread the *grid* route is faster on big blocks (:data:`GRID_BYTES`): the
    forward's columns are written as ``[rows, kh, W_out, kw, C]`` (:func:`column_places`), a
    channels-last image in which each output position's kernel points form a ``kh x kw`` tile,
    and the layer's own weight convolves it with stride ``(kh, kw)``, which oneDNN runs as a
    direct convolution, not as a GEMM (float32; float64 or mkldnn off would run it as im2col +
    GEMM, so ``"auto"`` keeps ``mm`` there). The backward's products stay ``torch.mm``: the 1x1
    convolution's weight backward, tried as a route, changed the op's forward+backward by
    0.92-1.07x in two runs while allocating a weight-sized gradient per block, and its input
    backward was no faster on the blocks (0.88-1.04x on two threads, 1.03-1.45x on one); on the
    grid, one thread, the weight backward took 1.26-3.66x ``torch.mm``'s time and the input
    backward 0.83-1.45x (benchmarks/bench_cpu_products.py --part blocks).

    The forward returns *rows* ``[P, C_out]`` (the caller moves them to NCHW). The backward reads
    the output gradient as rows too (blocks of whole images, after one transposing copy) or as one
    image's *segment* ``[C_out, P]``, a strided view of the NCHW tensor read in place (blocks
    inside big images)."""

    def __init__(
        self,
        w2: Tensor,
        groups: int,
        bias: Tensor | None,
        kernel: tuple[int, int],
        route: str | None = None,
        block: int = 0,
    ) -> None:
        """``route``: one of :data:`PRODUCTS`'s values (default: :data:`PRODUCTS`); ``block``:
        bytes of a forward column block (``"auto"`` takes the grid from :data:`GRID_BYTES` on;
        the backward, whose products are ``torch.mm`` on every route, passes none)."""
        self.groups, self.co, self.kc = groups, w2.shape[0] // groups, w2.shape[1]
        self.w = [w2[q * self.co : (q + 1) * self.co] for q in range(groups)]
        route = PRODUCTS if route is None else route
        if route == "auto":
            route = "conv" if torch.get_num_threads() > 1 else "mm"
            onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            if route == "mm" and w2.dtype == torch.float32 and onednn and block >= GRID_BYTES:
                route = "grid"
        if route not in ROUTES:
            raise ValueError(f"route must be auto, mm, conv or grid, got {route!r}")
        self.route, self.kernel = route, kernel
        if route == "conv":  # a view: [C_out, K * Cq, 1, 1] is channels-last already
            self.w4 = w2[:, :, None, None].contiguous(memory_format=torch.channels_last)
        elif route == "grid":  # [C_out, kh, kw, Cq] memory: the weight in channels-last
            kh, kw = kernel
            self.w4 = w2.view(w2.shape[0], kh, kw, -1).permute(0, 3, 1, 2)
        self.bias = bias
        self.g_w = torch.zeros_like(w2)

    @property
    def grid(self) -> bool:
        """Whether the forward reads its columns in the grid layout (:func:`column_places`)."""
        return self.route == "grid"

    def _slices(self):
        for q in range(self.groups):
            yield q, slice(q * self.co, (q + 1) * self.co), slice(q * self.kc, (q + 1) * self.kc)

    def forward(self, cols: Tensor, images: int = 0) -> Tensor:
        """``cols @ W^T (+ bias)`` as rows ``[P, C_out]`` (unit stride along C_out). ``cols``:
        ``[rows, W_out, groups * K * Cq]``, in the grid layout on the grid route, where
        ``images > 0`` says the rows are that many whole images (a batch of grid images, which
        oneDNN ran 0.86-0.99x as long as one tall image on one thread in a throwaway timing),
        else one tall image."""
        rows, wo, width = cols.shape
        if self.route == "grid":
            kh, kw = self.kernel
            n = images or 1
            image = cols.view(n, rows // n * kh, wo * kw, -1).permute(0, 3, 1, 2)
            out = F.conv2d(image, self.w4, self.bias, stride=(kh, kw), groups=self.groups)
            return out.permute(0, 2, 3, 1).reshape(rows * wo, -1)  # a view when channels-last
        cols = cols.view(rows * wo, width)
        if self.route == "conv":
            out = F.conv2d(_as_image(cols), self.w4, self.bias, groups=self.groups)
            return out[0, :, 0].t().contiguous()  # a view of oneDNN's channels-last result
        out = cols.new_empty(cols.shape[0], self.groups * self.co)
        for q, o, c in self._slices():  # rows straight: 0.89-0.98x W @ cols^T's time (RESULTS)
            if self.bias is None:
                torch.mm(cols[:, c], self.w[q].t(), out=out[:, o])
            else:
                torch.addmm(self.bias[o], cols[:, c], self.w[q].t(), out=out[:, o])
        return out

    def grad_columns(self, g_out: Tensor, g_cols: Tensor, rows: bool) -> None:
        """``g_cols = g_out @ W`` (rows ``[P, C_out]``) or ``g_out^T @ W`` (segment ``[C_out, P]``)
        into ``g_cols`` ``[P, groups * K * Cq]``."""
        for q, o, c in self._slices():
            g = g_out[:, o] if rows else g_out[o].t()  # [P, C_out/groups] either way
            torch.mm(g, self.w[q], out=g_cols[:, c])

    def grad_weight(self, g_out: Tensor, cols: Tensor, rows: bool) -> None:
        """``g_W += g_out^T @ cols`` (rows) or ``g_out @ cols`` (segment)."""
        for _, o, c in self._slices():
            g = g_out[:, o].t() if rows else g_out[o]  # [C_out/groups, P] either way
            self.g_w[o].addmm_(g, cols[:, c])


def _item_bytes(input: Tensor, backward: bool = False) -> int:
    """Working bytes per image: the padded copy (forward); for the backward also a padded
    accumulator per thread (an upper bound: whole-image blocks need one in all)."""
    _, c, h, w = input.shape
    padded = c * (h + 2) * (w + 2) * input.element_size()
    return (1 + numba.get_num_threads()) * padded if backward else padded


@thread_budget
def forward(input, offset, mask, weight, bias, stride, padding, dilation) -> Tensor:
    """Deformable convolution on CPU float32/float64 tensors (arguments as the reference);
    returns the output ``[N, C_out, H_out, W_out]``, contiguous."""
    input, offset, weight = input.contiguous(), offset.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    use_mask = mask is not None
    mask = (mask if use_mask else offset[:, :1]).contiguous()
    groups, offset_groups, geom, w2 = _setup(input, offset, weight, stride, padding, dilation)
    n, c_out = input.shape[0], weight.shape[0]
    ho, wo = offset.shape[2:]
    out = input.new_empty(n, c_out, ho * wo)
    kernel = geom[:2]
    width = groups * w2.shape[1]  # columns per position
    row_bytes = wo * width * input.element_size()
    chunks = list(batch_chunks(n, _item_bytes(input)))
    first = _blocks(chunks[0][1] - chunks[0][0], ho, row_bytes)[0][0] if chunks else (0, 0)
    product = _Product(w2, groups, bias, kernel, block=(first[1] - first[0]) * row_bytes)
    places = column_places(input.shape[1], groups, offset_groups, kernel, wo, product.grid)
    for a, b in chunks:
        xpad = _padded_channels_last(input[a:b])
        off, m = offset[a:b].numpy(), mask[a:b].numpy()
        blocks, per_block = _blocks(b - a, ho, row_bytes)
        buf = input.new_empty((blocks[0][1] - blocks[0][0]) * wo * width)
        for t0, t1 in blocks:
            cols = buf[: (t1 - t0) * wo * width].view(t1 - t0, wo, width)
            columns_kernel(xpad.numpy(), off, m, use_mask, *places, geom, t0,
                           cols.view(t1 - t0, -1).numpy())  # fmt: skip
            # one product per block into rows [P, C_out], then to NCHW: one copy for whole
            # images, one per image otherwise
            r = product.forward(cols, (t1 - t0) // ho if per_block else 0)
            if per_block:
                n0 = a + t0 // ho
                out[n0 : n0 + (t1 - t0) // ho].copy_(r.view(-1, ho * wo, c_out).transpose(1, 2))
            else:
                for i, in_block, in_image in _segments(t0, t1, ho, wo):
                    out[a + i][:, in_image].copy_(r[in_block].t())
        xpad = buf = cols = r = None  # freed before the next chunk allocates its own
    return out.view(n, c_out, ho, wo)


@thread_budget
def backward(grad, input, offset, mask, weight, bias, stride, padding, dilation):
    """Gradients ``(input, offset, mask, weight, bias)``; ``mask``'s is None without a mask.

    ``grad`` ``[N, C_out, H_out, W_out]`` may have any strides (expanded, channels-last, ...):
    it is made dense NCHW here and read in place."""
    grad, input = grad.contiguous(), input.contiguous()
    offset, weight = offset.contiguous(), weight.contiguous()
    use_mask = mask is not None
    mask = (mask if use_mask else offset[:, :1]).contiguous()
    groups, offset_groups, geom, w2 = _setup(input, offset, weight, stride, padding, dilation)
    layout = runs(input.shape[1], groups, offset_groups, geom[0] * geom[1])[1:]  # (table, step)
    threads = numba.get_num_threads()
    n, c_out = input.shape[0], weight.shape[0]
    ho, wo = offset.shape[2:]
    g_input = torch.empty_like(input)
    g_offset = torch.zeros_like(offset)
    g_mask = torch.zeros_like(mask)
    g_rows = grad.view(n, c_out, ho * wo)
    product = _Product(w2, groups, None, geom[:2])
    width = groups * w2.shape[1]  # columns per position
    row_bytes = 2 * wo * width * input.element_size()
    for a, b in batch_chunks(n, _item_bytes(input, backward=True)):
        xpad = _padded_channels_last(input[a:b])
        blocks, per_block = _blocks(b - a, ho, row_bytes)
        by_image = threads > 1 and per_block >= threads  # one accumulator, a thread per image
        gxpad = xpad.new_zeros(1 if by_image else threads, *xpad.shape)
        off, m = offset[a:b].numpy(), mask[a:b].numpy()
        g_off, g_m = g_offset[a:b].numpy(), g_mask[a:b].numpy()
        size = (blocks[0][1] - blocks[0][0]) * wo * width
        bufs = (input.new_empty(size), input.new_empty(size))
        rows = input.new_empty(per_block * ho * wo, c_out) if per_block else None
        for t0, t1 in blocks:
            size = (t1 - t0) * wo * width
            cols = bufs[0][:size].view(t1 - t0, wo, width)
            g_cols = bufs[1][:size].view(t1 - t0, wo, width)
            cols2, g_cols2 = cols.view(-1, width), g_cols.view(-1, width)
            if per_block:  # whole images: NCHW -> rows [P, C_out], one product
                n0 = a + t0 // ho
                r = rows[: (t1 - t0) * wo]
                r.view(-1, ho * wo, c_out).copy_(g_rows[n0 : n0 + (t1 - t0) // ho].transpose(1, 2))
                parts = [(r, cols2, g_cols2)]
            else:  # each image's segment of the block, read in place
                parts = [(g_rows[a + i][:, in_image], cols2[in_block], g_cols2[in_block])
                         for i, in_block, in_image in _segments(t0, t1, ho, wo)]  # fmt: skip
            for g, _, g_c in parts:
                product.grad_columns(g, g_c, rows=bool(per_block))
            # input, offset and mask gradients; the pass also samples the block's columns
            if by_image:
                grad_kernel_images(g_cols.numpy(), xpad.numpy(), off, m, use_mask, *layout, geom,
                                   t0, gxpad[0].numpy(), g_off, g_m, cols.numpy())  # fmt: skip
            else:
                grad_kernel_parts(g_cols.numpy(), xpad.numpy(), off, m, use_mask, *layout, geom,
                                  t0, gxpad.numpy(), g_off, g_m, cols.numpy())  # fmt: skip
            for g, c, _ in parts:
                product.grad_weight(g, c, rows=bool(per_block))
        # sum the per-thread accumulators straight into the result (no summed temporary)
        g_chunk = g_input[a:b]
        g_chunk.copy_(gxpad[0, :, 1:-1, 1:-1].permute(0, 3, 1, 2))
        for j in range(1, gxpad.shape[0]):
            g_chunk += gxpad[j, :, 1:-1, 1:-1].permute(0, 3, 1, 2)
        xpad = gxpad = bufs = cols = g_cols = cols2 = g_cols2 = rows = None  # freed per chunk
    kh, kw = geom[0], geom[1]
    g_weight = product.g_w.view(c_out, kh, kw, -1).permute(0, 3, 1, 2).contiguous()
    g_bias = None if bias is None else grad.sum((0, 2, 3))
    return g_input, g_offset, g_mask if use_mask else None, g_weight, g_bias
