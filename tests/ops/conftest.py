"""Shared by the op tests: the ONNX test modules silence the exporters' progress logging."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True, scope="module")
def _quiet_onnx_exporter(request):
    """``torch.onnx`` logs each export's steps at INFO; the ONNX test modules keep errors only."""
    if "onnx" in request.module.__name__:
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    yield
