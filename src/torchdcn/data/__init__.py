"""Data: the MNIST sample, seeded geometric distortions, and the demo's train/test protocol.

Nothing downloads; see :mod:`torchdcn.data.mnist` for where the file is looked for.
"""

from .distort import DistortedDigits, Distortion, digit_centre, render
from .distorted_mnist import CANVAS, TEST_LEVELS, TRAIN_DISTORTION, distorted_mnist
from .mnist import (
    DATA_ENV,
    DataFormatError,
    DataNotFoundError,
    find_mnist5k,
    load_mnist5k,
    mnist5k_split,
    split_indices,
)
from .source import BatchSource, TensorSource

__all__ = [
    "CANVAS",
    "DATA_ENV",
    "TEST_LEVELS",
    "TRAIN_DISTORTION",
    "BatchSource",
    "DataFormatError",
    "DataNotFoundError",
    "DistortedDigits",
    "Distortion",
    "TensorSource",
    "digit_centre",
    "distorted_mnist",
    "find_mnist5k",
    "load_mnist5k",
    "mnist5k_split",
    "render",
    "split_indices",
]
