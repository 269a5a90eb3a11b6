"""Training settings as plain dataclasses: the optimizer, the learning-rate schedule, the run."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


def _int(name: str, value: Any, at_least: int) -> None:
    """Check that ``value`` is an integer >= ``at_least``: TypeError for a bool, float or text
    (``1.5`` epochs would run a schedule computed for a fractional number of steps), ValueError
    below the bound."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < at_least:
        raise ValueError(f"{name} must be >= {at_least}, got {value}")


def _real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a ``float`` after checking that it is finite and lies between ``low`` and
    ``high`` (``None``: no bound; ``*_open``: the bound itself is excluded). TypeError for a bool
    or text, ValueError for NaN, infinity or a value outside; the message names the range. The
    settings keep the value as given (the fingerprint of a checkpoint compares them)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or too_low or too_high:
        if low is not None and high is not None:
            wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            wanted = f"{'>' if low_open else '>='} {low:g}"
        else:
            wanted = f"{'<' if high_open else '<='} {high:g}"
        raise ValueError(f"{name} must be a finite number {wanted}, got {value}")
    return value


@dataclass
class OptimConfig:
    """The optimizer.

    Attributes:
        name: ``"sgd"`` (with momentum) or ``"adamw"``.
        lr: base learning rate; every offset predictor gets ``lr * offset_lr_mult``
            (:func:`torchdcn.nn.param_groups`).
        weight_decay: L2 (SGD) or decoupled (AdamW) weight decay.
        momentum: SGD momentum, in ``[0, 1)``.
        betas: AdamW betas, each in ``[0, 1)``.
        no_decay_norm_and_bias: no weight decay on 1-D parameters (biases, norm scales).
    """

    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    no_decay_norm_and_bias: bool = False

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.name!r}")
        _real("lr", self.lr, 0, low_open=True)
        _real("weight_decay", self.weight_decay, 0)
        _real("momentum", self.momentum, 0, 1, high_open=True)
        try:
            betas = tuple(self.betas)
        except TypeError:
            betas = ()
        if len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        for i, beta in enumerate(betas):
            _real(f"betas[{i}]", beta, 0, 1, high_open=True)
        self.betas = betas  # type: ignore[assignment]


@dataclass
class ScheduleConfig:
    """The learning-rate factor of every optimizer step (see :mod:`torchdcn.engine.schedule`).

    Attributes:
        name: ``"cosine"`` (from 1 down to ``min_factor`` over the run) or ``"step"`` (times
            ``gamma`` at each milestone).
        warmup_steps: linear warm-up from ``warmup_factor`` to 1 over this many steps, multiplied
            onto the main schedule. A warm-up not shorter than the whole run is kept as given
            (never clamped: the settings identify the run) and :class:`~torchdcn.engine.Trainer`
            warns about it, since the rate then never reaches its base value.
        warmup_factor: the factor at step 0 of the warm-up, in ``[0, 1]``.
        milestones: epochs (may be fractional) where ``"step"`` multiplies the rate by ``gamma``;
            one not before the end of the run never takes effect and
            :class:`~torchdcn.engine.Trainer` warns about it.
        gamma: the step schedule's factor per milestone, in ``(0, 1]``.
        min_factor: the cosine schedule's final factor, in ``[0, 1]``.
    """

    name: Literal["cosine", "step"] = "cosine"
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in ("cosine", "step"):
            raise ValueError(f"schedule must be 'cosine' or 'step', got {self.name!r}")
        _int("warmup_steps", self.warmup_steps, 0)
        _real("warmup_factor", self.warmup_factor, 0, 1)
        if isinstance(self.milestones, str | bytes) or not hasattr(self.milestones, "__iter__"):
            raise TypeError(
                f"milestones must be a sequence of epochs, got {self.milestones!r} "
                f"({type(self.milestones).__name__})"
            )
        self.milestones = tuple(sorted(_real("milestones", m, 0) for m in self.milestones))
        # factors above 1 would raise the rate: at a milestone, or at the end of a cosine run
        _real("gamma", self.gamma, 0, 1, low_open=True)
        _real("min_factor", self.min_factor, 0, 1)


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        epochs: passes over the training set (each drops its last partial batch); an ``int``, as
            every other count here.
        batch_size: the *global* batch, split evenly over the processes of a distributed run.
            ``N`` processes then train like one process with ``batch_size`` (to float rounding)
            when (1) no BatchNorm layer normalises by batch statistics (GroupNorm, frozen or
            eval-mode BatchNorm), or ``sync_bn`` is set, otherwise each process's BatchNorm sees
            only its ``batch_size / N`` samples and :class:`~torchdcn.engine.Trainer` warns; and
            (2) the model's training forward draws nothing at random: the detectors' RPN and RoI
            heads sample anchors and RoIs from each process's own RNG stream (a step's seed
            mixes in the rank), so their distributed runs match one process in distribution,
            not weight for weight.
        sync_bn: with several processes, BatchNorm statistics over the global batch
            (:func:`~torchdcn.engine.sync_batchnorm.convert_sync_batchnorm`: torch's
            ``SyncBatchNorm`` on CUDA, an all-reduce BatchNorm on CPU); no effect in one
            process. Part of the fingerprint only when set, so earlier checkpoints resume.
        seed: seeds model initialisation (by the caller), data order and every step's RNG.
        optim, schedule: see :class:`OptimConfig`, :class:`ScheduleConfig`.
        amp: automatic mixed precision (float16 with loss scaling on CUDA, bfloat16 on CPU).
        clip_grad_norm: clip the global gradient norm to this (``None``: no clipping).
        output_dir: where checkpoints and ``metrics.jsonl`` go (``None``: nowhere).
        checkpoint_every: also checkpoint every this many steps (0: at epoch ends only).
        log_every: log the training loss every this many steps.
        eval_batch_size: batch size of evaluation (per process).
        progress: show a tqdm progress bar (main process only).
        tensorboard: also log to TensorBoard under ``output_dir/tb`` (needs ``tensorboard``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``..., or ``"auto"`` (CUDA when available; a
            distributed run uses its local rank's GPU).
        num_workers: DataLoader worker processes per training process (0: read the data in the
            training process). Does not change the trained weights, so a run may resume with
            another count.
    """

    epochs: int = 6
    batch_size: int = 64
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    amp: bool = False
    clip_grad_norm: float | None = None
    output_dir: str | None = None
    checkpoint_every: int = 0
    log_every: int = 10
    eval_batch_size: int = 250
    progress: bool = True
    tensorboard: bool = False
    device: str = "auto"
    num_workers: int = 0
    sync_bn: bool = False

    def __post_init__(self) -> None:
        _int("epochs", self.epochs, 1)
        _int("batch_size", self.batch_size, 1)
        _int("seed", self.seed, 0)
        for name, kind in (("optim", OptimConfig), ("schedule", ScheduleConfig)):
            if not isinstance(getattr(self, name), kind):
                got = type(getattr(self, name)).__name__
                raise TypeError(f"{name} must be a {kind.__name__}, got {got}")
        if self.clip_grad_norm is not None:
            _real("clip_grad_norm", self.clip_grad_norm, 0, low_open=True)
        _int("checkpoint_every", self.checkpoint_every, 0)
        _int("log_every", self.log_every, 1)
        _int("eval_batch_size", self.eval_batch_size, 1)
        _int("num_workers", self.num_workers, 0)
        for name in ("amp", "progress", "tensorboard", "sync_bn"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide the trained weights (a resumed run must match them)."""
        d = asdict(self)
        for key in (
            "output_dir",
            "checkpoint_every",
            "log_every",
            "eval_batch_size",
            "progress",
            "tensorboard",
            "device",
            "num_workers",
        ):
            d.pop(key)
        if not d["sync_bn"]:  # runs from before the option had none
            d.pop("sync_bn")
        d["optim"]["betas"] = list(d["optim"]["betas"])
        d["schedule"]["milestones"] = list(d["schedule"]["milestones"])
        return d
