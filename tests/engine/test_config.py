"""The settings dataclasses refuse values no run means, naming the setting, what it got and what
it wanted (a fractional epoch count, a negative or raising schedule factor, a NaN rate)."""

from __future__ import annotations

import re

import pytest

from torchdcn.engine import OptimConfig, ScheduleConfig, TrainConfig


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        # epochs=1.5 computed the schedule for 7.5 steps of 5 and ran 10
        (lambda: TrainConfig(epochs=1.5), TypeError, "epochs must be an int, got 1.5 (float)"),
        (lambda: TrainConfig(epochs=True), TypeError, "epochs must be an int, got True"),
        (lambda: TrainConfig(batch_size="8"), TypeError, "batch_size must be an int, got '8'"),
        (lambda: TrainConfig(log_every=0), ValueError, "log_every must be >= 1, got 0"),
        (lambda: TrainConfig(num_workers=-1), ValueError, "num_workers must be >= 0, got -1"),
        (lambda: TrainConfig(seed=-3), ValueError, "seed must be >= 0, got -3"),
        (
            lambda: TrainConfig(clip_grad_norm=float("inf")),
            ValueError,
            "clip_grad_norm must be a finite number > 0, got inf",
        ),
        (
            lambda: TrainConfig(optim={"lr": 0.1}),
            TypeError,
            "optim must be a OptimConfig, got dict",
        ),
        (
            lambda: OptimConfig(lr=float("nan")),
            ValueError,
            "lr must be a finite number > 0, got nan",
        ),
        (lambda: OptimConfig(lr="0.1"), TypeError, "lr must be a number, got '0.1' (str)"),
        (
            lambda: OptimConfig("sgd", momentum=-1),
            ValueError,
            "momentum must be a finite number in [0, 1), got -1.0",
        ),
        (
            lambda: OptimConfig(betas=(2, 0)),
            ValueError,
            "betas[0] must be a finite number in [0, 1), got 2.0",
        ),
        (lambda: OptimConfig(betas=(0.9,)), TypeError, "betas must be a pair (beta1, beta2)"),
        (
            lambda: OptimConfig(weight_decay=-1e-4),
            ValueError,
            "weight_decay must be a finite number >= 0",
        ),
        # min_factor -1 gave negative rates, 5 a cosine that raises the rate
        (
            lambda: ScheduleConfig(min_factor=-1),
            ValueError,
            "min_factor must be a finite number in [0, 1], got -1.0",
        ),
        (
            lambda: ScheduleConfig(min_factor=5),
            ValueError,
            "min_factor must be a finite number in [0, 1], got 5.0",
        ),
        (
            lambda: ScheduleConfig(gamma=-1),
            ValueError,
            "gamma must be a finite number in (0, 1], got -1.0",
        ),
        (
            lambda: ScheduleConfig(warmup_steps=2.5),
            TypeError,
            "warmup_steps must be an int, got 2.5 (float)",
        ),
        (
            lambda: ScheduleConfig(warmup_factor=1.5),
            ValueError,
            "warmup_factor must be a finite number in [0, 1], got 1.5",
        ),
        (
            lambda: ScheduleConfig(milestones=3),
            TypeError,
            "milestones must be a sequence of epochs, got 3 (int)",
        ),
        (
            lambda: ScheduleConfig(milestones=(1, float("nan"))),
            ValueError,
            "milestones must be a finite number >= 0, got nan",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_name_and_the_range(make, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make()


def test_valid_settings_are_kept_as_given():
    # the fingerprint of a checkpoint compares these values: the checks do not convert them
    optim = OptimConfig("sgd", lr=1, momentum=0, betas=[0.5, 0.9])
    assert optim.lr == 1 and isinstance(optim.lr, int) and optim.betas == (0.5, 0.9)
    schedule = ScheduleConfig("step", milestones=[3, 1.5], gamma=1, min_factor=1)
    assert schedule.milestones == (1.5, 3.0)
    config = TrainConfig(epochs=2, schedule=schedule, optim=optim)
    assert config.fingerprint()["optim"]["lr"] == 1
