"""The README's Python snippets run as written, and the numbers it states about them hold.

Every fenced ``python`` block of README.md runs in a fresh namespace, in a temporary folder that
holds the files the snippets name (``resnet50-imagenet.pth``: a torchvision-format ResNet-50
state dict written here). A block preceded by ``<!-- readme-test: skip (reason) -->`` is skipped
with that reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip\s*\(?(.*?)\)?\s*-->\s*$")


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(first line number, code, skip reason or None)`` of every fenced python block."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            previous = next((ln for ln in reversed(lines[: start - 1]) if ln.strip()), "")
            mark = SKIP_MARK.search(previous.strip())
            blocks.append((start + 1, "\n".join(body) + "\n", mark[1] if mark else None))
        i += 1
    return blocks


def _write_resnet50_checkpoint(path: Path) -> None:
    from torchdcn.models import resnet50

    torch.manual_seed(0)
    torch.save(resnet50().state_dict(), path)


FILES = {"resnet50-imagenet.pth": _write_resnet50_checkpoint}
"""Files a snippet may name, and how to make a stand-in."""

BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_snippets():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize(("line", "code", "skip"), BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_readme_snippet_runs(line, code, skip, tmp_path, monkeypatch):
    if skip:
        pytest.skip(skip)
    monkeypatch.chdir(tmp_path)
    for name, make in FILES.items():
        if name in code:
            make(tmp_path / name)
    namespace: dict = {"__name__": "readme_snippet"}
    exec(compile(code, f"{README}:{line}", "exec"), namespace)


def test_backbone_snippet_gives_what_its_comments_say(tmp_path, monkeypatch):
    """resnet50(deform="v2", features_only=True): conv3-conv5 modulated, output stride 16, the
    four stage maps; the checkpoint loads into it."""
    from torchdcn.models import load_pretrained, resnet50
    from torchdcn.nn import ModulatedDeformConv2dPack

    _write_resnet50_checkpoint(tmp_path / "r50.pth")
    backbone = resnet50(deform="v2", features_only=True)
    assert load_pretrained(backbone, tmp_path / "r50.pth").ok
    layers = backbone.deformable_layers()
    assert {name.split(".")[0] for name in layers} == {"layer2", "layer3", "layer4"}
    assert all(type(m) is ModulatedDeformConv2dPack for m in layers.values())
    with torch.no_grad():
        feats = backbone.eval()(torch.randn(1, 3, 64, 64))
    assert list(feats) == ["conv2", "conv3", "conv4", "conv5"]
    assert [f.shape[-1] for f in feats.values()] == [16, 8, 4, 4]  # strides 4, 8, 16, 16


@pytest.mark.parametrize(("n", "c", "size"), [(2, 64, 32), (1, 64, 32), (1, 256, 14)])
def test_fresh_layer_equals_conv2d_up_to_float_rounding(n, c, size):
    """The Usage snippet: a fresh predicting layer computes nn.Conv2d's output, within 4e-6 of
    the output's largest value in float32 (measured about 1e-6), and to 1e-13 in float64."""
    from torchdcn.nn import DeformConv2dPack

    torch.manual_seed(0)
    layer = DeformConv2dPack(c, c, kernel_size=3, padding=1)
    x = torch.randn(n, c, size, size)
    with torch.no_grad():
        out = layer(x)
        ref = F.conv2d(x, layer.weight, layer.bias, padding=1)
        assert (out - ref).abs().max() <= 4e-6 * ref.abs().max()
        layer = layer.double()
        out = layer(x.double())
        ref = F.conv2d(x.double(), layer.weight, layer.bias, padding=1)
        assert (out - ref).abs().max() <= 1e-13 * ref.abs().max()


def _readme_text() -> str:
    return " ".join(README.read_text().split())  # line breaks as spaces


def test_demo_paragraph_states_the_protocol_the_code_runs():
    from torchdcn.cli.demo import MODELS, DemoConfig
    from torchdcn.data.distorted_mnist import TEST_LEVELS, TRAIN_DISTORTION

    text = _readme_text()
    assert "three ways (plain, v1 deformable, v2 modulated)" in text
    assert list(MODELS) == ["plain", "v1", "v2"]
    assert (
        "on 4000 MNIST digits with mild distortion (scale 0.8-1.25, ±15°, ±3 px on a 48x48" in text
    )
    assert TRAIN_DISTORTION.scale == (0.8, 1.25) and TRAIN_DISTORTION.rotation == (0.0, 15.0)
    assert TRAIN_DISTORTION.translate == 3.0 and TRAIN_DISTORTION.canvas == 48
    assert "tests 1000 held-out digits at stronger scales (0.5-1.8) and rotations (30-60°)" in text
    held_out = [d for name, d in TEST_LEVELS.items() if name != "train-like"]
    scales = sorted({d.scale[0] for d in held_out if d.scale[0] == d.scale[1] != 1.0})
    rotations = sorted({d.rotation[0] for d in held_out if d.rotation[0] > 0})
    assert (scales[0], scales[-1]) == (0.5, 1.8) and (rotations[0], rotations[-1]) == (30, 60)
    assert "three seeds each" in text and DemoConfig().seeds == (0, 1, 2)
    assert "plain, 3x epochs (control)" in text and DemoConfig().plain_long_factor == 3
    # the 4000 / 1000 split itself: tests/data/test_mnist5k.py


def test_cli_paragraph_states_what_the_cli_does():
    from torchdcn import cli
    from torchdcn.cli.options import COMMANDS
    from torchdcn.engine.trainer import CHECKPOINT_NAME

    text = _readme_text()
    assert "`torchdcn eval --checkpoint runs/train/last.pt`" in text
    train_options = {o.name: o for o in COMMANDS["train"][1]}
    assert f"{train_options['output-dir'].default}/{CHECKPOINT_NAME}" == "runs/train/last.pt"
    assert "v1" in train_options["deform"].choices
    assert "Exit codes: 0 success, 1 failure, 2 bad arguments or config (an error" in text
    assert "3 missing or invalid input." in text
    # "its values are checked as the flags are, so `epochs: 1.7` is refused" and the warm-up
    # warning: tests/cli/test_main.py (test_config_values_are_checked_like_flags,
    # test_warmup_longer_than_the_run_warns_in_one_line)
    assert "so `epochs: 1.7` is refused" in text and "warned about" in text
    codes = (cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_USAGE, cli.EXIT_INPUT)
    assert codes == (0, 1, 2, 3)
