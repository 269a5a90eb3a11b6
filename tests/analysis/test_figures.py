"""The overlay figures of the analysis tools."""

from __future__ import annotations

import pytest
import torch

from torchdcn.analysis.figures import Overlay, draw_overlays


@pytest.mark.parametrize("columns", [1, 2, 4])
def test_a_long_suptitle_fits_the_figure(tmp_path, monkeypatch, columns):
    # with 2 images a row, effective_sampling.png's caption ran off both sides of the figure
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    seen = []
    save = Figure.savefig

    def savefig(fig, *args, **kwargs):
        save(fig, *args, **kwargs)  # drawn: the title's extent is known
        box = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
        seen.append((box, fig.bbox, fig._suptitle.get_text()))

    monkeypatch.setattr(Figure, "savefig", savefig)
    caption = (
        "effective sampling locations: dot size and opacity by |d node / d location|; node on "
        "backbone.layer4.1.conv2, locations of backbone.layer4.1.conv1"
    )
    row = [Overlay(torch.rand(8, 8), title=f"image {i}") for i in range(columns)]
    draw_overlays([row], tmp_path / "f.png", caption)
    ((box, page, text),) = seen
    assert box.x0 >= 0 and box.x1 <= page.width and box.y1 <= page.height
    assert text.replace("\n", " ") == caption
