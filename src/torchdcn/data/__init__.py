"""Data: the MNIST sample, seeded geometric distortions, the demo's train/test protocol, and the
data-set contract of the training loop (:mod:`.source`) with its collate functions.

Nothing downloads; see :mod:`torchdcn.data.mnist` for where the file is looked for.
"""

from .coco import CocoDetection, coco128, find_coco128
from .collate import list_collate, stack_collate
from .digit_scenes import SceneConfig, generate_digit_scenes
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
from .segmentation import CocoSegmentation, FolderSegmentation, segmentation_transforms
from .source import BatchSource, BatchSourceDataset, TensorSource, as_dataset
from .transforms import (
    Compose,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    detection_transforms,
)

__all__ = [
    "CANVAS",
    "DATA_ENV",
    "TEST_LEVELS",
    "TRAIN_DISTORTION",
    "BatchSource",
    "BatchSourceDataset",
    "CocoDetection",
    "CocoSegmentation",
    "Compose",
    "DataFormatError",
    "DataNotFoundError",
    "DistortedDigits",
    "Distortion",
    "FolderSegmentation",
    "RandomHorizontalFlip",
    "Resize",
    "SceneConfig",
    "TensorSource",
    "ToTensor",
    "as_dataset",
    "coco128",
    "detection_transforms",
    "digit_centre",
    "distorted_mnist",
    "find_coco128",
    "find_mnist5k",
    "generate_digit_scenes",
    "list_collate",
    "load_mnist5k",
    "mnist5k_split",
    "render",
    "segmentation_transforms",
    "split_indices",
    "stack_collate",
]
