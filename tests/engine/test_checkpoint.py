"""Checkpoints: atomic writes, verified reads, clear errors for corrupt or mismatched files."""

from __future__ import annotations

import os

import pytest
import torch

from torchdcn.engine import (
    CheckpointError,
    CheckpointMismatchError,
    Trainer,
    load_checkpoint,
    save_checkpoint,
)
from torchdcn.engine.checkpoint import FORMAT


def _state():
    return {"model": {"w": torch.arange(1000, dtype=torch.float32)}, "step": 7}


def test_roundtrip_and_no_temporary_files(tmp_path):
    path = save_checkpoint(tmp_path / "c" / "last.pt", _state(), {"lr": 0.1})
    got = load_checkpoint(path, {"lr": 0.1})
    assert got["step"] == 7 and torch.equal(got["model"]["w"], _state()["model"]["w"])
    assert got["format"] == FORMAT
    assert os.listdir(path.parent) == ["last.pt"]
    # a plain torch.load reads it too
    assert torch.load(path, weights_only=True)["step"] == 7


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", _state(), {})
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {**_state(), "step": 8}, {})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]


def test_truncated_checkpoint_is_an_error(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state(), {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_flipped_byte_in_tensor_data_is_caught_by_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state(), {})
    data = bytearray(path.read_bytes())
    # arange(1000) as float32: the bytes of 500.0 sit inside the tensor record
    pos = data.find(torch.tensor([500.0]).numpy().tobytes())
    assert pos > 0
    data[pos + 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a folder; name the file in it"):
        load_checkpoint(tmp_path)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a torchdcn training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_mismatched_settings_name_every_difference(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state(), {"train": {"lr": 0.1, "epochs": 6}})
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(path, {"train": {"lr": 0.2, "epochs": 6, "seed": 1}})
    msg = str(info.value)
    assert "train.lr: 0.1 -> 0.2" in msg and "train.seed" in msg and "epochs" not in msg


def test_trainer_refuses_checkpoint_of_other_run(tmp_path, tiny_model, tiny_data, tiny_config):
    Trainer(tiny_model(), tiny_data(), tiny_config(epochs=1, output_dir=str(tmp_path))).fit()
    other = tiny_config(epochs=1, output_dir=str(tmp_path), seed=99)
    with pytest.raises(CheckpointMismatchError, match="seed: 3 -> 99"):
        Trainer(tiny_model(), tiny_data(), other).fit(resume=True)


def test_resume_without_checkpoint_is_an_error_not_a_restart(
    tmp_path, tiny_model, tiny_data, tiny_config
):
    trainer = Trainer(tiny_model(), tiny_data(), tiny_config(output_dir=str(tmp_path)))
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.fit(resume=True)
    assert trainer.step == 0
    assert not (tmp_path / "last.pt").exists()


def test_unreadable_checkpoint_message_depends_on_the_use(
    tmp_path, tiny_model, tiny_data, tiny_config
):
    path = tmp_path / "last.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)  # a plain load: nothing about resuming
    assert "unreadable" in str(info.value) and "resum" not in str(info.value)
    trainer = Trainer(tiny_model(), tiny_data(), tiny_config(output_dir=str(tmp_path)))
    with pytest.raises(CheckpointError) as info:
        trainer.fit(resume=True)
    msg = str(info.value)
    assert msg.startswith("cannot resume: checkpoint") and "unreadable" in msg
    assert "delete it to start over" in msg and msg.endswith("nothing was restarted")
    assert trainer.step == 0
