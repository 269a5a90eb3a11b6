"""Training settings as plain dataclasses: the optimizer, the learning-rate schedule, the run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass
class OptimConfig:
    """The optimizer.

    Attributes:
        name: ``"sgd"`` (with momentum) or ``"adamw"``.
        lr: base learning rate; every offset predictor gets ``lr * offset_lr_mult``
            (:func:`torchdcn.nn.param_groups`).
        weight_decay: L2 (SGD) or decoupled (AdamW) weight decay.
        momentum: SGD momentum.
        betas: AdamW betas.
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
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )
        self.betas = tuple(self.betas)  # type: ignore[assignment]


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
        warmup_factor: the factor at step 0 of the warm-up.
        milestones: epochs (may be fractional) where ``"step"`` multiplies the rate by ``gamma``.
        gamma: the step schedule's factor per milestone.
        min_factor: the cosine schedule's final factor.
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
        if self.warmup_steps < 0 or not 0 <= self.warmup_factor <= 1:
            raise ValueError(
                f"need warmup_steps >= 0 and 0 <= warmup_factor <= 1, got {self.warmup_steps}, "
                f"{self.warmup_factor}"
            )
        self.milestones = tuple(sorted(float(m) for m in self.milestones))
        if any(m < 0 for m in self.milestones):
            raise ValueError(f"milestones must be >= 0 epochs, got {self.milestones}")


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        epochs: passes over the training set (each drops its last partial batch).
        batch_size: the *global* batch: split evenly over the processes of a distributed run, so
            ``N`` processes with ``batch_size`` train like one process with ``batch_size``.
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

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"need epochs >= 1 and batch_size >= 1, got {self.epochs}, {self.batch_size}"
            )
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"clip_grad_norm must be positive or None, got {self.clip_grad_norm}")
        if self.checkpoint_every < 0 or self.log_every < 1 or self.eval_batch_size < 1:
            raise ValueError("need checkpoint_every >= 0, log_every >= 1, eval_batch_size >= 1")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")

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
        d["optim"]["betas"] = list(d["optim"]["betas"])
        d["schedule"]["milestones"] = list(d["schedule"]["milestones"])
        return d
