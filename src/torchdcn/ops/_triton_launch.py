"""What every Triton kernel launch of torchdcn shares: the device guard, the interpreter flag and
the launch constants."""

from __future__ import annotations

import contextlib

import torch
import triton
from torch import Tensor

# TRITON_INTERPRET=1 (read when triton is first imported) runs the kernels on CPU, for tests
INTERPRET = bool(triton.knobs.runtime.interpret)
NUM_WARPS = 4


def on_device(t: Tensor) -> contextlib.AbstractContextManager:
    """A context launching on ``t``'s GPU (Triton launches on the current device); CPU tensors
    need the interpreter."""
    if t.device.type == "cpu" and not INTERPRET:
        raise ValueError(
            "backend 'triton' got CPU tensors: set TRITON_INTERPRET=1 before torchdcn's Triton "
            "kernels are first used to run them on CPU (slow; for tests), or move to CUDA"
        )
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def tile_blocks(rows: int, channels: int) -> tuple[int, int]:
    """``(BLOCK_B, BLOCK_C)`` of a ``[rows, channels]`` tile: every row (next power of two) and a
    channel block keeping the tile at most 4096 elements."""
    block_b = triton.next_power_of_2(rows)
    return block_b, max(1, min(32, triton.next_power_of_2(channels), 4096 // block_b))
