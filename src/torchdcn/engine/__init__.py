"""Training and evaluation: configuration, schedules, optimizer groups, checkpoints, DDP, logs.

Typical use (what ``torchdcn train`` does)::

    from torchdcn.engine import TrainConfig, Trainer, init_distributed, seed_everything
    init_distributed()                      # no-op unless launched by torchrun
    seed_everything(0)
    model = ...
    Trainer(model, train_set, TrainConfig(epochs=6, output_dir="runs/x")).fit()
"""

from .checkpoint import CheckpointError, CheckpointMismatchError, load_checkpoint, save_checkpoint
from .config import OptimConfig, ScheduleConfig, TrainConfig
from .distributed import DistInfo, init_distributed
from .evaluate import evaluate_accuracy
from .logger import MetricLogger, read_metrics
from .optim import build_optimizer
from .sampler import epoch_batches, rank_slice
from .schedule import apply_lr, lr_factor
from .seeding import seed_everything
from .trainer import Trainer, TrainResult

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "DistInfo",
    "MetricLogger",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "apply_lr",
    "build_optimizer",
    "epoch_batches",
    "evaluate_accuracy",
    "init_distributed",
    "load_checkpoint",
    "lr_factor",
    "rank_slice",
    "read_metrics",
    "save_checkpoint",
    "seed_everything",
]
