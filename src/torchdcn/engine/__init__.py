"""Training and evaluation: configuration, schedules, optimizer groups, checkpoints, DDP, logs.

Typical use (what ``torchdcn train`` does)::

    from torchdcn.engine import TrainConfig, Trainer, init_distributed, seed_everything
    init_distributed()                      # no-op unless launched by torchrun
    seed_everything(0)
    model = ...
    Trainer(model, train_set, TrainConfig(epochs=6, output_dir="runs/x")).fit()

The loop is task-agnostic: ``compute_losses`` gives it a dict of named losses (a classifier's
logits through :class:`ClassificationLoss`, or a detector's own losses through
:func:`model_losses`), data comes through a DataLoader over any map-style Dataset, batches of any
nesting move to the device with :func:`to_device`, and evaluation follows the
:class:`Evaluator` protocol (``reset / process / summarize``).
"""

from .checkpoint import CheckpointError, CheckpointMismatchError, load_checkpoint, save_checkpoint
from .coco_eval import CocoEvaluator
from .config import OptimConfig, ScheduleConfig, TrainConfig
from .device import resolve_device, to_device
from .distributed import DistInfo, init_distributed
from .evaluate import evaluate, evaluate_accuracy
from .evaluator import AccuracyEvaluator, Evaluator
from .init_weights import InitReport, load_model_weights, read_model_weights
from .logger import MetricLogger, read_metrics
from .losses import ClassificationLoss, check_losses, model_losses, total_loss
from .miou import MIoUEvaluator
from .optim import build_optimizer
from .sampler import ShardSampler, TrainBatchSampler, epoch_batches, rank_slice
from .schedule import apply_lr, lr_factor
from .seeding import seed_everything
from .trainer import Trainer, TrainResult

__all__ = [
    "AccuracyEvaluator",
    "CheckpointError",
    "CheckpointMismatchError",
    "ClassificationLoss",
    "CocoEvaluator",
    "DistInfo",
    "Evaluator",
    "InitReport",
    "MIoUEvaluator",
    "MetricLogger",
    "OptimConfig",
    "ScheduleConfig",
    "ShardSampler",
    "TrainBatchSampler",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "apply_lr",
    "build_optimizer",
    "check_losses",
    "epoch_batches",
    "evaluate",
    "evaluate_accuracy",
    "init_distributed",
    "load_checkpoint",
    "load_model_weights",
    "lr_factor",
    "model_losses",
    "rank_slice",
    "read_metrics",
    "read_model_weights",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "to_device",
    "total_loss",
]
