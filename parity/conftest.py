"""The torchvision parity suite runs in its own environment (torch 2.14.1 + torchvision 0.29.1,
``make parity``), never in ``make test``: ``pytest`` from the repository root collects only
``tests/`` (``testpaths``), and this folder is skipped whole where torchvision is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

try:
    import torchvision  # noqa: F401
except ImportError:  # pragma: no cover - only outside the parity environment
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(params=["numba", "reference"])
def backend(request):
    from torchdcn.ops import use_backend

    with use_backend(request.param):
        yield request.param
