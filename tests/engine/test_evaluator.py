"""The evaluation protocol: accuracy counts against a hand count, the run over a data set, and
evaluate_accuracy's public behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.data import TensorSource
from torchdcn.engine import AccuracyEvaluator, Evaluator, evaluate, evaluate_accuracy


def test_accuracy_and_topk_against_a_hand_count():
    logits = torch.tensor(
        [[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3], [0.6, 0.1, 0.3]]
    )
    labels = torch.tensor([2, 0, 2, 2, 1])
    # top-1 hits: rows 1, 2 -> 2 of 5; top-2 hits: rows 0, 1, 2, (3: 0.3 ties, topk picks one)
    ev = AccuracyEvaluator(topk=(1, 2))
    assert isinstance(ev, Evaluator)
    ev.process(logits[:2], labels[:2])
    ev.process(logits[2:], labels[2:])
    top2 = (logits.topk(2, 1).indices == labels[:, None]).any(1).sum().item()
    assert ev.summarize() == {"accuracy": 40.0, "top2": 100.0 * top2 / 5}
    ev.reset()
    assert ev.summarize() == {"accuracy": 0.0, "top2": 0.0}  # empty: 0, not a division error


def test_accuracy_evaluator_refuses_bad_shapes():
    ev = AccuracyEvaluator()
    with pytest.raises(ValueError, match=r"outputs must be logits \[B, classes\], got \(4,\)"):
        ev.process(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must be labels \[B\] = \[4\], got \(3,\)"):
        ev.process(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="topk"):
        AccuracyEvaluator(topk=(0,))


class Recorder:
    """An evaluator that keeps everything it is given (as a COCO evaluator would)."""

    def reset(self):
        self.outputs, self.targets = [], []

    def process(self, outputs, targets):
        self.outputs.append(outputs)
        self.targets.append(targets)

    def summarize(self):
        return {"batches": float(len(self.outputs))}


def test_evaluate_feeds_every_sample_once_in_eval_mode_and_restores_training():
    x, y = torch.randn(23, 3), torch.randint(0, 3, (23,))
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train()
    rec = Recorder()
    assert evaluate(model, TensorSource(x, y), rec, batch_size=10) == {"batches": 3.0}
    assert model.training  # put back
    assert torch.equal(torch.cat(rec.targets), y)
    with torch.no_grad():
        # dropout off, in the same batches of 10 (a GEMM's rounding may depend on its rows)
        expected = torch.cat([model.eval()(chunk) for chunk in x.split(10)])
    torch.testing.assert_close(torch.cat(rec.outputs), expected, rtol=0, atol=0)
    acc = evaluate_accuracy(model, TensorSource(x, y), batch_size=7)
    assert acc == 100.0 * (expected.argmax(1) == y).sum().item() / 23
