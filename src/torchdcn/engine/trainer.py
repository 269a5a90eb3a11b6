"""The training loop: one object that owns the model, optimizer, schedule, checkpoints and logs.

A run is a fixed sequence of optimizer steps. Step ``t`` of epoch ``e`` reads global batch
``t mod steps_per_epoch`` of epoch ``e``'s seeded permutation (each process its slice), reseeds the
global RNG from ``(seed, t, rank)``, sets the learning rate from ``t``, and updates the weights.
Since nothing else carries over between steps except the model, optimizer and scaler states, a
run resumed from a checkpoint written after step ``t`` continues with exactly the steps an
uninterrupted run would have taken, and ends with the same weights.

Example:
    >>> trainer = Trainer(model, train_set, TrainConfig(epochs=2, output_dir="runs/x"))
    >>> result = trainer.fit()                      # or trainer.fit(resume=True) after a kill
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..data.source import BatchSource
from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .evaluate import evaluate_accuracy
from .logger import MetricLogger, progress_bar
from .optim import build_optimizer
from .sampler import epoch_batches, mix_seed, rank_slice, steps_per_epoch
from .schedule import apply_lr, lr_factor

CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        steps: optimizer steps done in total (including those before a resume).
        loss: mean training loss of the last logging window.
        accuracy: top-1 accuracy (percent) per evaluation set after the last step.
        wall_time_s: seconds this call of ``fit`` took.
        checkpoint: the last checkpoint written (``None`` without ``output_dir``).
        resumed_from_step: the step the run resumed at (0 for a fresh run).
    """

    steps: int
    loss: float
    accuracy: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    checkpoint: Path | None = None
    resumed_from_step: int = 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> this process's GPU if CUDA is available, else the CPU; other names as given."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Trains ``model`` on ``train_set`` as ``config`` says (see the module docstring).

    Args:
        model: maps inputs ``[B, ...]`` to outputs that ``loss_fn`` compares with targets.
        train_set: a :class:`~torchdcn.data.source.BatchSource`.
        config: the run's settings; ``config.batch_size`` is the global batch.
        eval_sets: named sets to measure top-1 accuracy on (every ``eval_every`` epochs and at the
            end).
        eval_every: epochs between evaluations (0: at the end only).
        run_info: JSON-able description of the model and data (stored in checkpoints and part of
            the fingerprint that a resumed run must match; :func:`torchdcn.cli` uses it to rebuild
            the model for ``eval``).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; default cross-entropy.
        name: label of the progress bar.

    The model must be built (and seeded) identically on every process; a distributed run wraps it
    in :class:`~torch.nn.parallel.DistributedDataParallel`, which averages gradients, so with a
    global batch of ``B`` the update equals the one of a single process reading all ``B``.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: BatchSource,
        config: TrainConfig,
        *,
        eval_sets: dict[str, BatchSource] | None = None,
        eval_every: int = 1,
        run_info: dict[str, Any] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        name: str = "train",
    ) -> None:
        self.config = config
        self.dist = distributed.info()
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} (global) must be divisible by the "
                f"{self.dist.world_size} processes"
            )
        self.device = resolve_device(config.device, self.dist.local_rank)
        self.model = model.to(self.device)
        self.train_set = train_set
        self.eval_sets = dict(eval_sets or {})
        self.eval_every = eval_every
        self.loss_fn = loss_fn or F.cross_entropy
        self.name = name
        self.steps_per_epoch = steps_per_epoch(len(train_set), config.batch_size)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training set has {len(train_set)} samples, fewer than one batch of "
                f"{config.batch_size}"
            )
        self.total_steps = config.epochs * self.steps_per_epoch
        self.run_info = run_info or {}
        self.fingerprint = {
            "train": config.fingerprint(),
            "run": self.run_info,
            "train_samples": len(train_set),
        }
        self.net: nn.Module = self.model
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = build_optimizer(self.model, config.optim)
        use_scaler = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.step = 0
        #: called as ``hook(trainer)`` after every optimizer step (``trainer.step`` is done)
        self.hooks: list[Callable[[Trainer], None]] = []
        self.logger = MetricLogger(config.output_dir, self.dist.is_main, config.tensorboard)

    # -- checkpoints -----------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        """``<output_dir>/last.pt``, or ``None`` without an output folder."""
        out = self.config.output_dir
        return None if out is None else Path(out) / CHECKPOINT_NAME

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (see :mod:`torchdcn.engine.checkpoint`)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "run_info": self.run_info,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a model or optimizer that does not fit raises
        :class:`~torchdcn.engine.checkpoint.CheckpointError`."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"checkpoint does not fit this model/optimizer: {err}") from err
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])

    def save(self) -> Path | None:
        """Write ``last.pt`` (main process, atomically); every process waits for it."""
        path = self.checkpoint_path
        if path is not None and self.dist.is_main:
            save_checkpoint(path, self.state_dict(), self.fingerprint)
        distributed.barrier()
        return path

    def resume(self, path: str | Path | None = None) -> int:
        """Load ``path`` (default ``<output_dir>/last.pt``) after checking it belongs to this run;
        returns the step it continues from. Raises ``CheckpointError`` (never starts over)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise CheckpointError("nothing to resume: no checkpoint path and no output_dir")
        state = load_checkpoint(path, self.fingerprint)
        if state.get("steps_per_epoch") != self.steps_per_epoch:
            raise CheckpointError(
                f"checkpoint {path} has {state.get('steps_per_epoch')} steps per epoch, this run "
                f"{self.steps_per_epoch}"
            )
        self.load_state_dict(state)
        self.logger.log("resume", step=self.step, checkpoint=str(path))
        return self.step

    # -- training --------------------------------------------------------------------------

    def train_step(self, x: Tensor, y: Tensor) -> float:
        """One optimizer step on this process's share ``x``, ``y``; returns its local loss."""
        cfg = self.config
        apply_lr(
            self.optimizer,
            lr_factor(self.step, self.total_steps, self.steps_per_epoch, cfg.schedule),
        )
        torch.manual_seed(mix_seed(cfg.seed, self.step, self.dist.rank))
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=cfg.amp):
            loss = self.loss_fn(self.net(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        value = loss.item()
        if not math.isfinite(value) and not self.scaler.is_enabled():
            raise FloatingPointError(
                f"training loss is {value} at step {self.step}; lower the learning rate or set "
                "clip_grad_norm"
            )
        self.step += 1
        return value

    def evaluate(self) -> dict[str, float]:
        """Top-1 accuracy (percent) on every evaluation set."""
        return {
            name: evaluate_accuracy(
                self.model, source, self.config.eval_batch_size, self.device, self.config.amp
            )
            for name, source in self.eval_sets.items()
        }

    def fit(self, resume: bool | str | Path = False) -> TrainResult:
        """Run to the last step of the last epoch.

        Args:
            resume: ``True`` to continue from ``<output_dir>/last.pt``, a path to continue from
                that checkpoint, ``False`` to start fresh.
        """
        cfg = self.config
        start_time = time.perf_counter()
        if resume is not False:
            self.resume(None if resume is True else resume)
        else:
            self.logger.log("start", step=0, fingerprint=self.fingerprint)
        first = self.step
        self.model.train()
        bar = progress_bar(
            self.total_steps, self.step, self.name, cfg.progress and self.dist.is_main
        )
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        loss_avg = float("nan")
        accuracy: dict[str, float] = {}
        while self.step < self.total_steps:
            epoch, index = divmod(self.step, self.steps_per_epoch)
            batches = epoch_batches(len(self.train_set), cfg.batch_size, cfg.seed, epoch)
            for b in range(index, self.steps_per_epoch):
                idx = rank_slice(batches[b], self.dist.rank, self.dist.world_size)
                x, y = self.train_set.get_batch(idx, epoch)
                window_loss += self.train_step(x.to(self.device), y.to(self.device))
                window_steps += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    loss_avg = self._mean_over_processes(window_loss / window_steps)
                    rate = window_steps * cfg.batch_size / (time.perf_counter() - window_start)
                    lr = self.optimizer.param_groups[0]["lr"]
                    bar.set_postfix(loss=f"{loss_avg:.4f}", img_s=f"{rate:.0f}", lr=f"{lr:.2e}")
                    self.logger.log(
                        "train",
                        step=self.step,
                        epoch=epoch,
                        loss=loss_avg,
                        lr=lr,
                        img_per_s=round(rate, 1),
                    )
                    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
                for hook in self.hooks:
                    hook(self)
            done = self.step == self.total_steps
            if self.eval_sets and (
                done or (self.eval_every and (epoch + 1) % self.eval_every == 0)
            ):
                accuracy = self.evaluate()
                self.logger.log("eval", step=self.step, epoch=epoch, accuracy=accuracy)
            self.save()
        bar.close()
        if not accuracy and self.eval_sets:
            accuracy = self.evaluate()  # a run resumed after its last step
        wall = time.perf_counter() - start_time
        self.logger.log("end", step=self.step, wall_time_s=round(wall, 2), accuracy=accuracy)
        self.logger.close()
        return TrainResult(
            steps=self.step,
            loss=loss_avg,
            accuracy=accuracy,
            wall_time_s=wall,
            checkpoint=self.checkpoint_path,
            resumed_from_step=first,
        )

    def _mean_over_processes(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        return distributed.all_reduce_sum(t).item() / self.dist.world_size
