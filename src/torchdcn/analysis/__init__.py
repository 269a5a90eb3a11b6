"""Analysis tools of the papers (SPEC section 8).

- :mod:`~torchdcn.analysis.sampling`: sampling locations of stacked deformable layers (v1 Fig. 5).
- :mod:`~torchdcn.analysis.complexity`: parameters and multiply-adds of plain vs deformable models
  (v1 Table 4); loaded on first use, so ``python -m torchdcn.analysis.complexity`` runs cleanly.

Plotting needs matplotlib (``pip install torchdcn[plot]``); it is imported only when drawing.
"""

from importlib import import_module
from typing import Any

from .sampling import (
    LayerGeometry,
    Panel,
    compose_sampling_locations,
    plot_sampling_locations,
    sampling_locations_from_inputs,
    spread,
    stacked_sampling_locations,
)

_COMPLEXITY = ("complexity_table", "count_flops", "count_parameters", "flop_breakdown")

__all__ = [
    "LayerGeometry",
    "Panel",
    "complexity_table",
    "compose_sampling_locations",
    "count_flops",
    "count_parameters",
    "flop_breakdown",
    "plot_sampling_locations",
    "sampling_locations_from_inputs",
    "spread",
    "stacked_sampling_locations",
]


def __getattr__(name: str) -> Any:
    if name in _COMPLEXITY:
        return getattr(import_module(".complexity", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
