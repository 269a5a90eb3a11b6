"""torchdcn: Deformable ConvNets v1 and v2 for PyTorch, with no compiler and no build step."""

import os
import sys

# PyTorch's and Numba's OpenMP runtimes each keep their threads spinning after a parallel region;
# on few cores the CPU kernels' hand-offs (Numba sampling <-> GEMM <-> small torch ops) then fight
# the spinning pool, measured up to 1.7x slower end to end (benchmarks/RESULTS.md). Passive waiting
# is read when the runtimes start, so it is set here only if torch is not imported yet and only
# if the user has not chosen: OMP_WAIT_POLICY=ACTIVE keeps the spinning.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import nn, ops

__version__ = "0.1.0"
__all__ = ["__version__", "nn", "ops"]
