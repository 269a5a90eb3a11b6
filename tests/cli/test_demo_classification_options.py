"""The classification demo's per-model options and its offsets-zeroed control rows."""

from __future__ import annotations

import json

import pytest
import torch

from torchdcn.cli.demo import MODEL_OPTIONS, DemoConfig, DemoResult, accuracy_table, run_demo
from torchdcn.data import DataNotFoundError, find_mnist5k
from torchdcn.data.distorted_mnist import distorted_mnist
from torchdcn.engine.evaluate import evaluate_accuracy
from torchdcn.models.classification.mnist_cnn import mnist_cnn


def _has_data() -> bool:
    try:
        find_mnist5k()
    except DataNotFoundError:
        return False
    return True


def test_model_kwargs_merge_width_and_the_model_options():
    cfg = DemoConfig(width=16, model_options={"v2": {"offset_lr_mult": 0.5, "mask_init": 0.9}})
    assert cfg.model_kwargs(None) == {"width": 16}
    assert cfg.model_kwargs("v1") == {"width": 16}
    assert cfg.model_kwargs("v2") == {"width": 16, "offset_lr_mult": 0.5, "mask_init": 0.9}
    assert DemoConfig().model_options == MODEL_OPTIONS
    assert DemoConfig().model_options is not MODEL_OPTIONS  # each config owns its copy


def test_table_adds_the_offsets_zeroed_rows_after_the_models():
    acc = {
        "plain": {"train-like": [90.0, 92.0], "scale 0.5": [50.0, 52.0]},
        "v1": {"train-like": [95.0, 95.0], "scale 0.5": [60.0, 64.0]},
    }
    zeroed = {"v1": {"train-like": [30.0, 40.0], "scale 0.5": [10.0, 12.0]}}
    table = accuracy_table(DemoResult(DemoConfig(seeds=(0, 1)), accuracy=acc, zeroed=zeroed))
    rows = [line.split(" | ")[0] for line in table.splitlines()[2:]]
    assert rows == ["| plain", "| v1", "| v1, offsets zeroed"]
    assert "| v1, offsets zeroed | 35.0 ± 7.1 | 11.0 ± 1.4 | 11.0 ± 1.4 |" in table


@pytest.mark.skipif(not _has_data(), reason="needs the mnist5k data file")
def test_zeroed_row_is_the_plain_cnn_with_the_deformable_weights(tmp_path):
    pytest.importorskip("matplotlib")
    cfg = DemoConfig(
        seeds=(0,),
        epochs=1,
        warmup_steps=0,
        limit_train=64,
        limit_test=20,
        jobs=1,
        threads=1,
        plain_long_factor=0,
        progress=False,
        out_dir=str(tmp_path),
        model_options={"v1": {"offset_lr_mult": 3.0}, "v2": {"offset_lr_mult": 3.0}},
    )
    result = run_demo(cfg)
    assert set(result.zeroed) == {"v1", "v2"}
    info = json.loads((tmp_path / "results.json").read_text())
    assert info["config"]["model_options"]["v1"] == {"offset_lr_mult": 3.0}
    _, tests = distorted_mnist(limit_test=20)
    state = torch.load(tmp_path / "v1-seed0" / "last.pt", weights_only=False)["model"]
    plain = mnist_cnn(None, width=cfg.width)
    plain.load_state_dict({k: v for k, v in state.items() if "conv_offset" not in k})
    plain.eval()
    for level, data in tests.items():
        assert result.zeroed["v1"][level] == [evaluate_accuracy(plain, data)]
