"""Learning-rate schedules and the offset multipliers reaching the optimizer."""

from __future__ import annotations

import math

import pytest

from torchdcn.engine import OptimConfig, ScheduleConfig, Trainer, apply_lr, build_optimizer
from torchdcn.engine.schedule import lr_factor


def test_cosine_values():
    cfg = ScheduleConfig("cosine")
    assert lr_factor(0, 100, 10, cfg) == 1.0
    assert lr_factor(50, 100, 10, cfg) == pytest.approx(0.5)
    assert lr_factor(25, 100, 10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(100, 100, 10, cfg) == pytest.approx(0.0, abs=1e-12)
    floor = ScheduleConfig("cosine", min_factor=0.1)
    assert lr_factor(100, 100, 10, floor) == pytest.approx(0.1)
    assert lr_factor(50, 100, 10, floor) == pytest.approx(0.55)


def test_warmup_multiplies_main_schedule():
    cfg = ScheduleConfig("cosine", warmup_steps=10, warmup_factor=0.1)
    assert lr_factor(0, 100, 10, cfg) == pytest.approx(0.1)
    main5 = 0.5 * (1 + math.cos(math.pi * 5 / 100))
    assert lr_factor(5, 100, 10, cfg) == pytest.approx(main5 * (0.1 + 0.9 * 0.5))
    main10 = 0.5 * (1 + math.cos(math.pi * 10 / 100))
    assert lr_factor(10, 100, 10, cfg) == pytest.approx(main10)


def test_step_schedule_milestones_in_epochs():
    # SPEC 6: lr divided by 10 at epochs 10 and 14 (here 4 steps per epoch)
    cfg = ScheduleConfig("step", milestones=(14, 10), gamma=0.1)
    assert cfg.milestones == (10.0, 14.0)
    assert lr_factor(39, 64, 4, cfg) == 1.0
    assert lr_factor(40, 64, 4, cfg) == pytest.approx(0.1)
    assert lr_factor(55, 64, 4, cfg) == pytest.approx(0.1)
    assert lr_factor(56, 64, 4, cfg) == pytest.approx(0.01)


def test_bad_schedule_settings():
    with pytest.raises(ValueError, match="schedule"):
        ScheduleConfig("linear")
    with pytest.raises(ValueError, match="warmup"):
        ScheduleConfig(warmup_steps=-1)
    with pytest.raises(ValueError, match="optimizer"):
        OptimConfig("adam")


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_offset_multipliers_reach_the_optimizer(name, tiny_model):
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(name, lr=0.2))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert all(lr_of[id(p)] == pytest.approx(0.2) for p in model.v1.offset_parameters())
    assert all(lr_of[id(p)] == pytest.approx(0.02) for p in model.v2.offset_parameters())
    assert lr_of[id(model.v2.weight)] == pytest.approx(0.2)
    assert lr_of[id(model.fc.weight)] == pytest.approx(0.2)
    assert len(lr_of) == sum(1 for _ in model.parameters())
    apply_lr(opt, 0.5)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.v2.conv_offset.weight)] == pytest.approx(0.01)
    assert lr_of[id(model.conv.weight)] == pytest.approx(0.1)


def test_trainer_sets_scheduled_rates_per_group(tiny_model, tiny_data, tiny_config):
    cfg = tiny_config(epochs=1, schedule=ScheduleConfig("cosine", warmup_steps=2))
    trainer = Trainer(tiny_model(), tiny_data(), cfg)
    seen = []
    trainer.hooks.append(
        lambda t: seen.append(sorted({round(g["lr"], 12) for g in t.optimizer.param_groups}))
    )
    trainer.fit()
    total = trainer.total_steps
    for step, lrs in enumerate(seen):
        f = lr_factor(step, total, trainer.steps_per_epoch, cfg.schedule)
        assert lrs == sorted({round(0.05 * f * 0.1, 12), round(0.05 * f, 12)})


def test_milestones_not_before_the_end_of_the_run_warn(tiny_model, tiny_data, tiny_config):
    import warnings

    # 48 samples / batch 8 = 6 steps per epoch, 1 epoch: epoch 1 is step 6, after the last step
    late = tiny_config(epochs=1, schedule=ScheduleConfig("step", milestones=(0.5, 1, 9)))
    with pytest.warns(UserWarning) as record:
        trainer = Trainer(tiny_model(), tiny_data(), late)
    assert [str(r.message) for r in record] == trainer.setting_warnings
    (message,) = trainer.setting_warnings
    assert message.startswith(
        "milestones 1, 9 (epochs) not before the end of the run (1 epoch, 6 steps)"
    )
    assert "never multiplies the rate by gamma" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # milestones inside the run, or a cosine run, warn nothing
        inside = tiny_config(epochs=2, schedule=ScheduleConfig("step", milestones=(0.5, 1.5)))
        assert Trainer(tiny_model(), tiny_data(), inside).setting_warnings == []


def test_the_logged_lr_is_the_base_rate_and_each_multiplier_has_its_own(
    tmp_path, tiny_data, tiny_config
):
    import torch
    from torch import nn

    from torchdcn.engine import read_metrics
    from torchdcn.nn import DeformConv2dPack

    torch.manual_seed(0)
    # the offset predictor at 10x sorts first among the groups: it was logged as "lr"
    model = nn.Sequential(
        DeformConv2dPack(1, 4, 3, padding=1, offset_lr_mult=10.0),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 4),
    )
    cfg = tiny_config(epochs=1, output_dir=str(tmp_path), log_every=1)
    trainer = Trainer(model, tiny_data(), cfg)
    trainer.fit()
    train = [e for e in read_metrics(tmp_path / "metrics.jsonl") if e["event"] == "train"]
    assert [e["step"] for e in train] == [1, 2, 3, 4, 5, 6]
    for e in train:
        base = 0.05 * lr_factor(e["step"] - 1, 6, 6, cfg.schedule)
        assert e["lr"] == pytest.approx(base)
        assert e["lr_groups"] == pytest.approx({"lr_mult=10": 10 * base, "lr_mult=1": base})
