"""The training loop: exact resume after a kill mid-epoch, logs, AMP and clipping."""

from __future__ import annotations

import re

import pytest
import torch

from torchdcn.engine import OptimConfig, Trainer, read_metrics


class Killed(Exception):
    """Stands for SIGKILL: the process stops and everything in memory is lost."""


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_after_kill_mid_epoch_gives_identical_weights(
    tmp_path, optimizer, tiny_model, tiny_data, tiny_config
):
    # 48 samples / batch 8 = 6 steps per epoch, 3 epochs; checkpoints every 4 steps
    kw = dict(epochs=3, checkpoint_every=4, optim=OptimConfig(optimizer, lr=0.02))
    full = Trainer(tiny_model(), tiny_data(), tiny_config(output_dir=str(tmp_path / "a"), **kw))
    full.fit()

    cfg = tiny_config(output_dir=str(tmp_path / "b"), **kw)
    first = Trainer(tiny_model(), tiny_data(), cfg)

    def kill_at_step_11(trainer):  # epoch 1, batch 5 of 6; last checkpoint after step 8
        if trainer.step == 11:
            raise Killed

    first.hooks.append(kill_at_step_11)
    with pytest.raises(Killed):
        first.fit()
    # a new process: other initial weights, nothing carried over but the checkpoint
    second = Trainer(tiny_model(seed=123), tiny_data(), cfg)
    result = second.fit(resume=True)
    assert result.resumed_from_step == 8 and result.steps == 18
    a, b = _weights(full.model), _weights(second.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    events = [e["event"] for e in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert events[0] == "start" and "resume" in events and events[-1] == "end"


def test_metrics_log_and_result(tmp_path, tiny_model, tiny_data, tiny_config):
    cfg = tiny_config(epochs=2, output_dir=str(tmp_path), log_every=2)
    data = tiny_data()
    result = Trainer(tiny_model(), data, cfg, eval_sets={"train": data}).fit()
    log = read_metrics(tmp_path / "metrics.jsonl")
    train = [e for e in log if e["event"] == "train"]
    assert [e["step"] for e in train] == [2, 4, 6, 8, 10, 12]
    assert all(e["img_per_s"] > 0 and e["lr"] >= 0 for e in train)
    evals = [e for e in log if e["event"] == "eval"]
    assert len(evals) == 2 and 0 <= evals[-1]["accuracy"]["train"] <= 100
    assert result.accuracy == evals[-1]["accuracy"]
    assert result.checkpoint == tmp_path / "last.pt" and result.checkpoint.exists()


def test_training_learns_with_amp_and_clipping(tiny_model, tiny_data, tiny_config):
    cfg = tiny_config(epochs=6, amp=True, clip_grad_norm=1.0, optim=OptimConfig("adamw", lr=0.03))
    data = tiny_data(64)
    trainer = Trainer(tiny_model(), data, cfg, eval_sets={"train": data}, eval_every=0)
    result = trainer.fit()
    assert result.accuracy["train"] > 80  # 4 classes: chance is 25 %
    assert trainer.amp_dtype == torch.bfloat16


def test_non_finite_loss_stops_with_a_clear_error(tiny_model, tiny_data, tiny_config):
    cfg = tiny_config(epochs=1, optim=OptimConfig("sgd", lr=1e30))
    with pytest.raises(FloatingPointError, match="learning rate"):
        Trainer(tiny_model(), tiny_data(), cfg).fit()


def test_batch_larger_than_data_is_rejected(tiny_model, tiny_data, tiny_config):
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(tiny_model(), tiny_data(4), tiny_config(batch_size=8))


def test_warmup_not_shorter_than_the_run_warns_and_logs(
    tmp_path, tiny_model, tiny_data, tiny_config
):
    import json
    import math
    import warnings

    from torchdcn.engine import ScheduleConfig

    # 48 samples, batch 8, 1 epoch: a 6-step cosine run under 50 warm-up steps.
    schedule = ScheduleConfig("cosine", warmup_steps=50, warmup_factor=0.001)
    cfg = tiny_config(epochs=1, schedule=schedule, output_dir=str(tmp_path))
    peak = max((0.001 + 0.999 * t / 50) * 0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(6))
    with pytest.warns(UserWarning) as record:
        trainer = Trainer(tiny_model(), tiny_data(), cfg)
    message = str(record[0].message)
    assert "warm-up (50 steps) is not shorter than the run (6 steps)" in message
    assert f"at most {peak:.3g} times it" in message
    assert trainer.config.schedule.warmup_steps == 50  # kept as configured, not clamped
    trainer.fit()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["message"] for e in events if e["event"] == "warning"] == [message]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warm-up shorter than the run warns nothing
        short = tiny_config(epochs=1, schedule=ScheduleConfig("cosine", warmup_steps=5))
        assert Trainer(tiny_model(), tiny_data(), short).setting_warnings == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tpu", "device must be cpu, cuda, cuda:N or auto, got 'tpu'"),
        ("auto:1", "got 'auto:1'"),
        ("cuda:x", "got 'cuda:x'"),
        ("cuda:99", "cuda"),
    ],
)
def test_resolve_device_refuses_unknown_or_absent_devices(name, message):
    from torchdcn.engine.trainer import resolve_device

    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_device(name)
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda_is_refused_when_the_trainer_is_built(tiny_model, tiny_data, tiny_config):
    with pytest.raises(ValueError, match=r"'cuda' asked for, but .*; use cpu or auto"):
        Trainer(tiny_model(), tiny_data(), tiny_config(device="cuda"))


class _FailingEvaluator:
    """An evaluator that crashes on its first batch."""

    def reset(self):
        pass

    def process(self, outputs, targets):
        raise RuntimeError("evaluator crashed")

    def summarize(self):
        return {}


def test_a_failing_evaluation_loses_no_epoch(tmp_path, tiny_model, tiny_data, tiny_config):
    # 48 samples / batch 8 = 6 steps per epoch; no checkpoints within the epochs
    data = tiny_data()
    cfg = tiny_config(epochs=2, output_dir=str(tmp_path / "a"))
    full = Trainer(tiny_model(), data, cfg, eval_sets={"train": data})
    full.fit()
    cfg = tiny_config(epochs=2, output_dir=str(tmp_path / "b"))
    failing = Trainer(
        tiny_model(), data, cfg, eval_sets={"train": data}, evaluator=_FailingEvaluator
    )
    with pytest.raises(RuntimeError, match="evaluator crashed"):
        failing.fit()
    assert failing.step == 6
    # the first epoch's checkpoint was written before its evaluation failed
    resumed = Trainer(tiny_model(seed=5), data, cfg, eval_sets={"train": data})
    result = resumed.fit(resume=True)
    assert result.resumed_from_step == 6 and result.steps == 12 and "train" in result.accuracy
    a, b = _weights(full.model), _weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
