"""torchdcn: Deformable ConvNets v1 and v2 for PyTorch, with no compiler and no build step."""

from . import ops

__version__ = "0.1.0"
__all__ = ["__version__", "ops"]
