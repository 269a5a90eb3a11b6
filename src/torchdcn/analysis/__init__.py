"""Analysis tools of the papers (SPEC section 8).

- :mod:`~torchdcn.analysis.sampling`: sampling locations of stacked deformable layers (v1 Fig. 5).
- :mod:`~torchdcn.analysis.effective_dilation`: effective dilation per layer and object size
  (v1 Table 2).
- :mod:`~torchdcn.analysis.erf`: effective receptive fields, the gradient of a node w.r.t. the
  image (v2 section 2).
- :mod:`~torchdcn.analysis.effective_sampling`: sampling locations weighted by the node's gradient
  (v2).
- :mod:`~torchdcn.analysis.saliency`: error-bounded saliency regions (v2).
- :mod:`~torchdcn.analysis.roi_bins`: deformed RoI pooling bins (v1 Fig. 7) and their weights;
  :mod:`~torchdcn.analysis.roi_bins_overlay`: one detection's bins drawn on its image.
- :mod:`~torchdcn.analysis.probe`: the hooks and eval-mode helpers the tools share (a model is
  never changed); :mod:`~torchdcn.analysis.figures`: their pictures.
- :mod:`~torchdcn.analysis.complexity`: parameters and multiply-adds of plain vs deformable models
  (v1 Table 4); loaded on first use, so ``python -m torchdcn.analysis.complexity`` runs cleanly.

Plotting needs matplotlib (``pip install torchdcn[plot]``); it is imported only when drawing.
"""

from importlib import import_module
from typing import Any

from .effective_dilation import DilationTable, effective_dilation, filter_dilation
from .effective_sampling import EffectiveSampling, effective_sampling_locations
from .erf import effective_receptive_field
from .probe import deformable_layers, detector_forward, layer_output, record_offsets
from .roi_bins import RoIBins, bin_boxes, deformed_bins, record_roi_inputs
from .saliency import SaliencyRegions, saliency_regions
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
    "DilationTable",
    "EffectiveSampling",
    "LayerGeometry",
    "Panel",
    "RoIBins",
    "SaliencyRegions",
    "bin_boxes",
    "complexity_table",
    "compose_sampling_locations",
    "count_flops",
    "count_parameters",
    "deformable_layers",
    "deformed_bins",
    "detector_forward",
    "effective_dilation",
    "effective_receptive_field",
    "effective_sampling_locations",
    "filter_dilation",
    "flop_breakdown",
    "layer_output",
    "plot_sampling_locations",
    "record_offsets",
    "record_roi_inputs",
    "saliency_regions",
    "sampling_locations_from_inputs",
    "spread",
    "stacked_sampling_locations",
]


def __getattr__(name: str) -> Any:
    if name in _COMPLEXITY:
        return getattr(import_module(".complexity", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
