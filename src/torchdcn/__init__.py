"""torchdcn: Deformable ConvNets v1 and v2 for PyTorch, with no compiler and no build step."""

from . import nn, ops

__version__ = "0.1.0"
__all__ = ["__version__", "nn", "ops"]
