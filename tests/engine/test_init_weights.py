"""A new run starts from another run's model weights: a torchdcn checkpoint or a state_dict file,
strict by default (every differing key listed, the model left unchanged), or what fits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.engine import CheckpointError, Trainer, load_model_weights, read_model_weights


def _equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_trained_checkpoint_initialises_a_fresh_model(
    tmp_path, tiny_model, tiny_data, tiny_config
):
    trained = Trainer(tiny_model(), tiny_data(), tiny_config(epochs=1, output_dir=str(tmp_path)))
    trained.fit()
    fresh = tiny_model(seed=7)
    report = load_model_weights(fresh, tmp_path / "last.pt")
    assert report.complete and report.loaded == len(fresh.state_dict())
    assert _equal(fresh, trained.model)


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module_prefix"])
def test_state_dict_files(tmp_path, tiny_model, wrap):
    source = tiny_model(seed=1)
    sd = source.state_dict()
    obj = {
        "plain": sd,
        "model": {"model": sd, "iteration": 3},  # detectron2's layout
        "state_dict": {"state_dict": sd, "meta": {}},  # mmdet's
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},  # a DDP model saved whole
    }[wrap]
    torch.save(obj, tmp_path / "w.pth")
    model = tiny_model(seed=2)
    load_model_weights(model, tmp_path / "w.pth")
    assert _equal(model, source)


class _Other(nn.Module):
    """TinyNet's layers, but 3 classes and an extra head."""

    def __init__(self, tiny):
        super().__init__()
        self.conv, self.v1, self.v2 = tiny.conv, tiny.v1, tiny.v2
        self.fc = nn.Linear(8, 3)
        self.extra = nn.Linear(8, 2)


def test_strict_refuses_what_does_not_fit_and_leaves_the_model_alone(tmp_path, tiny_model):
    torch.save(tiny_model(seed=1).state_dict(), tmp_path / "w.pth")
    model = _Other(tiny_model(seed=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_model_weights(model, tmp_path / "w.pth")
    message = str(err.value)
    assert "2 missing from the file: extra.weight, extra.bias" in message
    shapes = "2 of another shape (file vs model): fc.weight [4, 8] vs [3, 8], fc.bias [4] vs [3]"
    assert shapes in message and "the model was left unchanged" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = load_model_weights(model, tmp_path / "w.pth", strict=False)
    assert report.missing == ["extra.weight", "extra.bias"] and report.unexpected == []
    assert set(report.mismatched) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.conv.weight, torch.load(tmp_path / "w.pth")["conv.weight"])
    assert torch.equal(model.fc.weight, before["fc.weight"])  # kept its initialisation
    # keys the model lacks are listed too
    torch.save({**model.state_dict(), "head.w": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=r"1 not in the model: head\.w"):
        load_model_weights(model, tmp_path / "x.pth")


def test_unusable_files_are_named(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_model_weights(tmp_path / "gone.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(CheckpointError, match="unreadable"):
        read_model_weights(tmp_path / "junk.pt")
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="holds no model weights"):
        read_model_weights(tmp_path / "meta.pt")
    with pytest.raises(TypeError, match=r"model must be an nn\.Module, got dict"):
        load_model_weights({}, tmp_path / "meta.pt")
