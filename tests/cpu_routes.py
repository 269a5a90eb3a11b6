"""The routes a CPU deform_conv2d call can take, as contexts the tests parametrize over.

Which route runs depends on the shapes and the thread count (``torchdcn.ops._deform_conv_cpu``):

- ``numba``: the defaults, but the forward's block products always on oneDNN's 1x1-convolution
  route (``PRODUCTS = "conv"``, the default only with more than one thread). With N >= 2 images
  a column block holds whole images, the products write rows and one copy moves them to NCHW,
  and the backward scatters into one input-gradient accumulator with a thread per image; at
  N = 1 the block is the one image and the backward uses a per-thread accumulator.
- ``numba-rowblocks``: blocks of a few output rows (a tiny ``BLOCK_BYTES``), as for big images:
  blocks cut through images, each image's part of a product is a strided NCHW segment, the
  backward uses per-thread accumulators over row runs; the forward's columns in the grid layout
  and its products as strided convolutions (``PRODUCTS = "grid"``), for every dtype.
- ``numba-1thread``: one thread (``torch.set_num_threads(1)``), one accumulator, and the
  forward's products as one thread takes them by default: ``torch.mm`` at these sizes (the grid
  only from ``GRID_BYTES`` of columns per block, which tests reach by forcing it, as above, or
  by lowering it: ``tests/ops/test_deform_conv_products.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from torchdcn.ops import _deform_conv_cpu, use_backend

CPU_ROUTES = ("numba", "numba-rowblocks", "numba-1thread")


@contextlib.contextmanager
def cpu_route(route: str) -> Iterator[None]:
    """Run the ``with`` block on ``route`` (one of :data:`CPU_ROUTES`, or ``"reference"``)."""
    backend = "reference" if route == "reference" else "numba"
    block, threads = _deform_conv_cpu.BLOCK_BYTES, torch.get_num_threads()
    products = _deform_conv_cpu.PRODUCTS
    if route == "numba":  # the 1x1-convolution route even on a 1-core machine
        _deform_conv_cpu.PRODUCTS = "conv"
    if route == "numba-rowblocks":
        _deform_conv_cpu.BLOCK_BYTES = 4096
        _deform_conv_cpu.PRODUCTS = "grid"
    elif route == "numba-1thread":
        torch.set_num_threads(1)
    elif route not in ("numba", "reference"):
        raise ValueError(f"unknown route {route!r}")
    try:
        with use_backend(backend):
            yield
    finally:
        _deform_conv_cpu.BLOCK_BYTES = block
        _deform_conv_cpu.PRODUCTS = products
        torch.set_num_threads(threads)
