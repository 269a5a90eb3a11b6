"""The training loop: one object that owns the model, optimizer, schedule, checkpoints and logs.

A run is a fixed sequence of optimizer steps. Step ``t`` of epoch ``e`` reads global batch
``t mod steps_per_epoch`` of epoch ``e``'s seeded permutation (each process its slice, through a
:class:`~torch.utils.data.DataLoader` with :class:`~.sampler.TrainBatchSampler`), reseeds the
global RNG from ``(seed, t, rank)``, sets the learning rate from ``t``, and updates the weights.
Since nothing else carries over between steps except the model, optimizer and scaler states, a
run resumed from a checkpoint written after step ``t`` continues with exactly the steps an
uninterrupted run would have taken, and ends with the same weights.

The data set's part of that contract: sample ``i`` of epoch ``e`` must depend only on ``(seed,
e, i)``. Drawing from the global RNGs is fine: each sample is read with torch's CPU generator,
``random`` and ``numpy.random`` seeded from ``(seed, e, i)`` (one seed per batch, from its index
list, for a data set with ``__getitems__``), whether the main process or a worker reads it, and
their states are put back afterwards (:class:`~.seeded_data.SeededSamples`); so a ``torch.rand``
augmentation in ``__getitem__`` gives the same weights after a resume and with any
``num_workers``. What it must not do is keep state from one read to the next.

The loop knows no task: ``compute_losses(model, inputs, targets)`` returns a dict of named losses
(:mod:`~.losses`), whose sum it minimises and whose terms it logs; batches are moved to the
device whole (:func:`~.device.to_device`), whatever their structure; evaluation goes through an
:class:`~.evaluator.Evaluator`.

Example:
    >>> trainer = Trainer(model, train_set, TrainConfig(epochs=2, output_dir="runs/x"))
    >>> result = trainer.fit()                      # or trainer.fit(resume=True) after a kill
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data.collate import stack_collate
from ..data.source import as_dataset
from . import distributed
from .checkpoint import CheckpointError, CheckpointMismatchError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .device import DEVICE_PATTERN, resolve_device, to_device
from .evaluate import evaluate
from .evaluator import AccuracyEvaluator, Evaluator
from .logger import MetricLogger, progress_bar
from .losses import ClassificationLoss, LossFunction, check_losses, total_loss
from .optim import build_optimizer
from .sampler import TrainBatchSampler, mix_seed, steps_per_epoch
from .schedule import apply_lr, lr_factor
from .seeded_data import SeededSamples
from .sync_batchnorm import batch_statistics_layers, convert_sync_batchnorm

__all__ = ["CHECKPOINT_NAME", "DEVICE_PATTERN", "TrainResult", "Trainer", "resolve_device"]

CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        steps: optimizer steps done in total (including those before a resume).
        loss: mean training loss (the sum of the terms) of the last logging window.
        losses: mean of each loss term over the last logging window.
        accuracy: top-1 accuracy (percent) per evaluation set after the last step (sets whose
            evaluator reports ``"accuracy"``).
        metrics: everything each evaluation set's evaluator reported after the last step.
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
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


class Trainer:
    """Trains ``model`` on ``train_set`` as ``config`` says (see the module docstring).

    Args:
        model: in training, what ``compute_losses`` calls; in evaluation (eval mode)
            ``model(inputs) -> outputs`` for the evaluator.
        train_set: a map-style :class:`~torch.utils.data.Dataset` (see
            :mod:`torchdcn.data.source`; ``set_epoch`` is called before each epoch), or an
            object with ``get_batch(indices, epoch)``. Its samples are read with the global
            RNGs seeded per sample (see the module docstring), so random augmentation with
            them resumes exactly.
        config: the run's settings; ``config.batch_size`` is the global batch,
            ``config.num_workers`` the DataLoader workers.
        eval_sets: named sets to evaluate (every ``eval_every`` epochs and at the end).
        eval_every: epochs between evaluations (0: at the end only).
        run_info: JSON-able description of the model and data (stored in checkpoints and part of
            the fingerprint that a resumed run must match; :mod:`torchdcn.cli` uses it to rebuild
            the model for ``eval``).
        loss_fn: a classifier's criterion ``loss_fn(logits, labels) -> scalar`` (default
            cross-entropy); short for ``compute_losses=ClassificationLoss(loss_fn)``.
        compute_losses: ``compute_losses(model, inputs, targets) -> {name: scalar}``
            (:mod:`~.losses`); default :class:`~.losses.ClassificationLoss`. A detector that
            returns its own losses takes :func:`~.losses.model_losses`.
        evaluator: makes the evaluator of each evaluation set (called once per set); default
            :class:`~.evaluator.AccuracyEvaluator`.
        collate_fn: samples -> batch ``(inputs, targets)``; default
            :func:`~torchdcn.data.collate.stack_collate`,
            :func:`~torchdcn.data.collate.list_collate` for images of different sizes.
        name: label of the progress bar.

    The model must be built (and seeded) identically on every process; a distributed run wraps it
    in :class:`~torch.nn.parallel.DistributedDataParallel`, which averages gradients. With a
    global batch of ``B`` the update then equals the one of a single process reading all ``B``
    (to float rounding) when no BatchNorm layer normalises by batch statistics (GroupNorm, frozen
    or eval-mode BatchNorm), or with ``config.sync_bn``, which converts the model's BatchNorm
    layers in place (:func:`~.sync_batchnorm.convert_sync_batchnorm`) before wrapping it
    (otherwise each process normalises by its own ``B / N`` samples, and the trainer warns) --
    and when the training forward draws nothing at random: every process draws from its own RNG
    stream (seeded from ``(seed, step, rank)``), so the detectors, whose RPN and RoI heads
    sample anchors and RoIs, match one process in distribution, not weight for weight.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Any,
        config: TrainConfig,
        *,
        eval_sets: dict[str, Any] | None = None,
        eval_every: int = 1,
        run_info: dict[str, Any] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        compute_losses: LossFunction | None = None,
        evaluator: Callable[[], Evaluator] = AccuracyEvaluator,
        collate_fn: Callable[[list[Any]], Any] = stack_collate,
        name: str = "train",
    ) -> None:
        if loss_fn is not None and compute_losses is not None:
            raise ValueError("give loss_fn (a classifier's criterion) or compute_losses, not both")
        self.config = config
        self.dist = distributed.info()
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} (global) must be divisible by the "
                f"{self.dist.world_size} processes"
            )
        self.device = resolve_device(config.device, self.dist.local_rank)
        self.model = model.to(self.device)
        if config.sync_bn and self.dist.world_size > 1:
            self.model = convert_sync_batchnorm(self.model, self.device)
        self.train_set = train_set = as_dataset(train_set)
        self.eval_sets = {k: as_dataset(v) for k, v in (eval_sets or {}).items()}
        self.eval_every = eval_every
        self.compute_losses = compute_losses or ClassificationLoss(loss_fn)
        self.make_evaluator = evaluator
        self.collate_fn = collate_fn
        self.name = name
        self.steps_per_epoch = steps_per_epoch(len(train_set), config.batch_size)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training set has {len(train_set)} samples, fewer than one batch of "
                f"{config.batch_size}"
            )
        self.total_steps = config.epochs * self.steps_per_epoch
        #: problems with the settings, warned about here and logged as "warning" events by fit
        self.setting_warnings = self._check_schedule() + self._check_batch_norm()
        for message in self.setting_warnings if self.dist.is_main else ():
            warnings.warn(message, UserWarning, stacklevel=2)
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

    def _check_schedule(self) -> list[str]:
        """Settings kept as configured (they are the run's identity, see
        ``TrainConfig.fingerprint``) but warned about: a warm-up not shorter than the run keeps
        the rate below its base value throughout (50 warm-up steps in an 8-step cosine run: at
        most 0.042 of it), and a step-schedule milestone at or after the run's last step never
        lowers the rate."""
        schedule, total = self.config.schedule, self.total_steps
        found = []
        if schedule.warmup_steps >= total:
            peak = max(lr_factor(t, total, self.steps_per_epoch, schedule) for t in range(total))
            found.append(
                f"the warm-up ({schedule.warmup_steps} steps) is not shorter than the run ({total} "
                f"steps): the learning rate never reaches its base value (at most {peak:.3g} "
                "times it); lower warmup_steps or train longer"
            )
        late = [m for m in schedule.milestones if round(m * self.steps_per_epoch) >= total]
        if schedule.name == "step" and late:
            shown = ", ".join(f"{m:g}" for m in late)
            found.append(
                f"milestone{'s' if len(late) > 1 else ''} {shown} (epochs) not before the end of "
                f"the run ({self.config.epochs} epoch{'s' if self.config.epochs > 1 else ''}, "
                f"{total} steps): the step schedule never "
                f"multiplies the rate by gamma there; lower the milestones or train longer"
            )
        return found

    def _check_batch_norm(self) -> list[str]:
        """With several processes and without ``sync_bn``, BatchNorm layers that normalise by
        batch statistics make the run differ from one process with the global batch."""
        if self.dist.world_size == 1 or self.config.sync_bn:
            return []
        layers = batch_statistics_layers(self.model)
        if not layers:
            return []
        share = self.config.batch_size // self.dist.world_size
        return [
            f"{len(layers)} BatchNorm layers (e.g. {layers[0]}) normalise by the statistics of "
            f"each process's {share} samples, not of the global batch of "
            f"{self.config.batch_size}: these {self.dist.world_size} processes do not train like "
            "one process; set sync_bn (torchdcn train --sync-bn) or freeze BatchNorm"
        ]

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
        try:
            state = load_checkpoint(path, self.fingerprint)
        except CheckpointMismatchError:
            raise
        except CheckpointError as err:
            advice = (
                "delete it to start over, or resume from another one; " if path.exists() else ""
            )
            raise CheckpointError(f"cannot resume: {err}; {advice}nothing was restarted") from err
        if state.get("steps_per_epoch") != self.steps_per_epoch:
            raise CheckpointError(
                f"checkpoint {path} has {state.get('steps_per_epoch')} steps per epoch, this run "
                f"{self.steps_per_epoch}"
            )
        self.load_state_dict(state)
        self.logger.log("resume", step=self.step, checkpoint=str(path))
        return self.step

    # -- training --------------------------------------------------------------------------

    def train_step(self, inputs: Any, targets: Any) -> tuple[float, dict[str, float]]:
        """One optimizer step on this process's share of a batch (moved to the device here);
        returns its local total loss and each term."""
        cfg = self.config
        inputs, targets = to_device((inputs, targets), self.device)
        apply_lr(
            self.optimizer,
            lr_factor(self.step, self.total_steps, self.steps_per_epoch, cfg.schedule),
        )
        torch.manual_seed(mix_seed(cfg.seed, self.step, self.dist.rank))
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=cfg.amp):
            losses = check_losses(self.compute_losses(self.net, inputs, targets))
            loss = total_loss(losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # one device-to-host copy for the total and every term (float64 holds each exactly)
        values = torch.stack([t.detach().reshape(()).double() for t in (loss, *losses.values())])
        value, *terms = values.tolist()
        if not math.isfinite(value) and not self.scaler.is_enabled():
            raise FloatingPointError(
                f"training loss is {value} at step {self.step}; lower the learning rate or set "
                "clip_grad_norm"
            )
        self.step += 1
        return value, dict(zip(losses, terms, strict=True))

    def evaluate_metrics(self) -> dict[str, dict[str, float]]:
        """Every evaluation set's metrics, ``{set name: evaluator.summarize()}``."""
        cfg = self.config
        return {
            name: evaluate(
                self.model,
                data,
                self.make_evaluator(),
                cfg.eval_batch_size,
                self.device,
                cfg.amp,
                self.collate_fn,
                cfg.num_workers,
            )
            for name, data in self.eval_sets.items()
        }

    def evaluate(self) -> dict[str, float]:
        """Top-1 accuracy (percent) on every evaluation set whose evaluator reports it."""
        return _accuracy(self.evaluate_metrics())

    def train_loader(self, epoch: int, start: int = 0) -> DataLoader:
        """This process's batches of ``epoch`` from batch ``start`` on (``set_epoch`` of the data
        set is called here). Worker seeds come from ``(seed, epoch)``, not the global RNG, and
        each sample is read with the global RNGs seeded from ``(seed, epoch, index)``
        (:class:`~.seeded_data.SeededSamples`)."""
        cfg = self.config
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        sampler = TrainBatchSampler(
            len(self.train_set), cfg.batch_size, cfg.seed, self.dist.rank, self.dist.world_size
        )
        sampler.set_epoch(epoch, start)
        return DataLoader(
            SeededSamples(self.train_set, cfg.seed, epoch),
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(mix_seed(cfg.seed, epoch, 0x10AD)),
        )

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
        for message in self.setting_warnings:
            self.logger.log("warning", step=self.step, message=message)
        first = self.step
        self.model.train()
        bar = progress_bar(
            self.total_steps, self.step, self.name, cfg.progress and self.dist.is_main
        )
        window: dict[str, float] = {}  # summed total ("") and terms of the logging window
        window_steps, window_start = 0, time.perf_counter()
        loss_avg, terms_avg = float("nan"), {}
        metrics: dict[str, dict[str, float]] = {}
        while self.step < self.total_steps:
            epoch, index = divmod(self.step, self.steps_per_epoch)
            for inputs, targets in self.train_loader(epoch, index):
                total, terms = self.train_step(inputs, targets)
                for key, value in (("", total), *terms.items()):
                    window[key] = window.get(key, 0.0) + value
                window_steps += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    means = self._mean_over_processes(window, window_steps)
                    loss_avg, terms_avg = means.pop(""), means
                    rate = window_steps * cfg.batch_size / (time.perf_counter() - window_start)
                    lr, group_lrs = self._last_rates()
                    shown = {k: f"{v:.4f}" for k, v in terms_avg.items()} if len(means) > 1 else {}
                    bar.set_postfix(
                        loss=f"{loss_avg:.4f}", **shown, img_s=f"{rate:.0f}", lr=f"{lr:.2e}"
                    )
                    self.logger.log(
                        "train",
                        step=self.step,
                        epoch=epoch,
                        loss=loss_avg,
                        losses=terms_avg,
                        lr=lr,
                        **({"lr_groups": group_lrs} if len(group_lrs) > 1 else {}),
                        img_per_s=round(rate, 1),
                    )
                    window, window_steps, window_start = {}, 0, time.perf_counter()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
                for hook in self.hooks:
                    hook(self)
            done = self.step == self.total_steps
            # the epoch's checkpoint first: an evaluation that fails loses no training (a
            # resumed run goes on from here; evaluating changes no weights and draws from no
            # RNG that a later step reads, so the order leaves the run as it was)
            self.save()
            if self.eval_sets and (
                done or (self.eval_every and (epoch + 1) % self.eval_every == 0)
            ):
                metrics = self.evaluate_metrics()
                self._log_eval("eval", metrics, epoch=epoch)
        bar.close()
        if not metrics and self.eval_sets:
            metrics = self.evaluate_metrics()  # a run resumed after its last step
        wall = time.perf_counter() - start_time
        self._log_eval("end", metrics, wall_time_s=round(wall, 2))
        self.logger.close()
        return TrainResult(
            steps=self.step,
            loss=loss_avg,
            accuracy=_accuracy(metrics),
            wall_time_s=wall,
            checkpoint=self.checkpoint_path,
            resumed_from_step=first,
            losses=terms_avg,
            metrics=metrics,
        )

    def _last_rates(self) -> tuple[float, dict[str, float]]:
        """The base rate of the last step (``optim.lr`` times the schedule's factor) and the rate
        of each learning-rate multiplier's groups, ``{"lr_mult=10": ...}`` (offset predictors
        train at the base rate times their multiplier)."""
        cfg = self.config
        factor = lr_factor(self.step - 1, self.total_steps, self.steps_per_epoch, cfg.schedule)
        groups = {
            f"lr_mult={g.get('lr_mult', 1.0):g}": g["lr"] for g in self.optimizer.param_groups
        }
        return cfg.optim.lr * factor, groups

    def _log_eval(self, event: str, metrics: dict[str, dict[str, float]], **fields: Any) -> None:
        """An ``eval``/``end`` event: ``accuracy`` ``{set: percent}`` as before, and every
        evaluator's numbers under ``metrics`` when they hold more than the accuracy."""
        if any(set(m) != {"accuracy"} for m in metrics.values()):
            fields["metrics"] = metrics
        self.logger.log(event, step=self.step, **fields, accuracy=_accuracy(metrics))

    def _mean_over_processes(self, sums: dict[str, float], steps: int) -> dict[str, float]:
        """``sums / steps`` averaged over the processes (keys in the same order everywhere)."""
        keys = sorted(sums)
        t = torch.tensor([sums[k] / steps for k in keys], dtype=torch.float64, device=self.device)
        values = (distributed.all_reduce_sum(t) / self.dist.world_size).tolist()
        return dict(zip(keys, values, strict=True))


def _accuracy(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{set: metrics[set]["accuracy"]}`` for the sets that report an accuracy."""
    return {name: m["accuracy"] for name, m in metrics.items() if "accuracy" in m}
