"""mIoU from a confusion matrix: a hand-computed case, the evaluator on padded batches, the
ignore label, classes absent from the set, and the sum over two DDP processes."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from torchdcn.engine.evaluator import Evaluator
from torchdcn.engine.miou import (
    MIoUEvaluator,
    confusion_matrix,
    iou_table,
    scores_from_confusion,
)

# 8 pixels, K = 3 labels; the 7th pixel is ignored (255)
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 255, 2])
PREDS = torch.tensor([0, 1, 0, 1, 2, 2, 1, 0])
#: counted by hand, [true, predicted]
HAND = torch.tensor([[2, 1, 0], [0, 1, 1], [1, 0, 1]])
#: IoU = tp / (row + column - tp): 2 / (3 + 3 - 2), 1 / (2 + 2 - 1), 1 / (2 + 2 - 1)
HAND_IOU = [0.5, 1 / 3, 1 / 3]


def test_confusion_matrix_by_hand():
    got = confusion_matrix(PREDS, LABELS, 3)
    assert torch.equal(got, HAND)
    # shapes are free: the same pixels as a 2 x 4 map
    assert torch.equal(confusion_matrix(PREDS.view(2, 4), LABELS.view(2, 4), 3), HAND)


def test_scores_by_hand():
    s = scores_from_confusion(HAND)
    assert s["iou"].tolist() == pytest.approx(HAND_IOU)
    assert s["miou"] == pytest.approx(sum(HAND_IOU) / 3)
    assert s["pixel_accuracy"] == pytest.approx(4 / 7)
    assert s["mean_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)


def test_absent_classes_are_left_out_of_the_mean():
    # label 3 never occurs but is predicted once; labels 2 and 4 neither occur nor are predicted
    labels = torch.tensor([0, 0, 1, 1])
    preds = torch.tensor([0, 3, 1, 1])
    s = scores_from_confusion(confusion_matrix(preds, labels, 5))
    assert s["present"].tolist() == [True, True, False, False, False]
    assert s["iou"][[0, 1, 3]].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert math.isnan(s["iou"][2]) and math.isnan(s["iou"][4])
    assert s["miou"] == pytest.approx(0.75)
    table = iou_table(s, ["bg", "a", "b", "c", "d"]).splitlines()
    assert [ln.split() for ln in table[1:4]] == [["bg", "50.0"], ["a", "100.0"], ["c", "0.0", "*"]]
    assert table[4].split() == ["mIoU", "75.0"]
    assert table[-1] == "(2 classes neither present nor predicted are not listed)"


def test_bad_labels_and_shapes_are_refused():
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        confusion_matrix(torch.tensor([0]), torch.tensor([3]), 3)
    with pytest.raises(ValueError, match="one shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(4), 3)
    with pytest.raises(ValueError, match="num_classes"):
        MIoUEvaluator(0)
    with pytest.raises(ValueError, match="3 score maps"):
        MIoUEvaluator(2).process(torch.zeros(1, 4, 2, 2), [{"semantic": torch.zeros(2, 2)}])


def _one_hot_scores(preds: torch.Tensor, k: int) -> torch.Tensor:
    """Scores [k, H, W] whose argmax is ``preds`` [H, W]."""
    return torch.nn.functional.one_hot(preds, k).permute(2, 0, 1).float()


def test_evaluator_on_padded_batches_equals_the_hand_case():
    evaluator = MIoUEvaluator(2, ["cat", "dog"])
    assert isinstance(evaluator, Evaluator)
    # the 8 pixels split over three images of two batches; scores padded beyond the batch's
    # largest size with label 2 everywhere outside the images (it must not count); the targets
    # record their image sizes, as the data sets do, which is what explains that padding
    maps = [
        (LABELS[:4].view(2, 2), PREDS[:4].view(2, 2)),
        (LABELS[4:6].view(1, 2), PREDS[4:6].view(1, 2)),
    ]
    batch1 = torch.full((2, 3, 2, 3), 0.0)
    batch1[:, 2] = 5.0  # padding votes for label 2
    targets1 = []
    for i, (label, pred) in enumerate(maps):
        h, w = label.shape
        batch1[i, :, :h, :w] = _one_hot_scores(pred, 3)
        targets1.append({"semantic": label, "size": (h, w)})
    evaluator.reset()
    evaluator.process(batch1, targets1)
    evaluator.process(PREDS[6:].view(1, 1, 2), LABELS[6:].view(1, 1, 2))  # labels, not scores
    m = evaluator.summarize()
    assert torch.equal(evaluator.confusion, HAND)
    assert m["miou"] == pytest.approx(sum(HAND_IOU) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 7)
    assert m["iou/background"] == pytest.approx(0.5)
    assert m["iou/cat"] == pytest.approx(1 / 3) and m["iou/dog"] == pytest.approx(1 / 3)
    lines = evaluator.table.splitlines()
    assert lines[1].split() == ["background", "50.0"]
    assert lines[2].split() == ["cat", "33.3"]
    assert lines[-2].split() == ["mIoU", "38.9"]
    evaluator.reset()  # forgets everything
    assert evaluator.summarize()["miou"] == 0.0


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torchdcn.engine import distributed
    from torchdcn.engine.miou import MIoUEvaluator

    info = distributed.init_distributed()
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 255, 2])
    preds = torch.tensor([0, 1, 0, 1, 2, 2, 1, 0])
    half = slice(0, 4) if info.rank == 0 else slice(4, 8)
    evaluator = MIoUEvaluator(2)
    evaluator.process(preds[half].view(1, 1, 4), labels[half].view(1, 1, 4))
    metrics = evaluator.summarize()
    torch.save({"world": info.world_size, "metrics": metrics, "confusion": evaluator.confusion},
               f"{sys.argv[1]}.{info.rank}")
    distributed.cleanup()
    """
)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_sum_their_confusion_matrices(tmp_path):
    script = tmp_path / "ddp_miou.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(script), str(tmp_path / "out.pt")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        got = torch.load(Path(tmp_path / f"out.pt.{rank}"), weights_only=True)
        assert got["world"] == 2
        assert torch.equal(got["confusion"], HAND)
        assert got["metrics"]["miou"] == pytest.approx(sum(HAND_IOU) / 3)


def test_label_maps_at_another_resolution_are_refused():
    full = torch.zeros(8, 8, dtype=torch.int64)
    full[:, 4:] = 1
    scores = _one_hot_scores(full, 3)[None]  # a perfect prediction [1, 3, 8, 8]
    half = full[::2, ::2]  # the same label map at 4 x 4: used to score miou 0.25 silently
    evaluator = MIoUEvaluator(2)
    with pytest.raises(ValueError, match=r"targets\[0\]\['semantic'\] is 4x4 but the outputs "
                       r"are 8x8"):  # fmt: skip
        evaluator.process(scores, [{"semantic": half}])
    # a recorded image size that the label map does not match
    with pytest.raises(ValueError, match=r"targets\[0\]\['size'\] .* is 8x8"):
        evaluator.process(scores, [{"semantic": half, "size": (8, 8)}])
    # a batch of two whose second map is at half resolution, its size recorded
    two = torch.cat([scores, scores])
    with pytest.raises(ValueError, match=r"targets\[1\]\['semantic'\] is 4x4 but "
                       r"targets\[1\]\['size'\]"):  # fmt: skip
        evaluator.process(
            two, [{"semantic": full, "size": (8, 8)}, {"semantic": half, "size": (8, 8)}]
        )
    with pytest.raises(ValueError, match="at the resolution"):
        evaluator.process(scores, [{"semantic": torch.zeros(9, 8, dtype=torch.int64)}])
    assert evaluator.summarize()["miou"] == 0.0  # nothing was counted
    evaluator.process(scores, [{"semantic": full}])
    assert evaluator.summarize()["miou"] == 1.0


def test_padded_batches_are_still_scored():
    # DeepLab's outputs of a batch end at its largest image: smaller maps sit top-left
    big = torch.zeros(8, 8, dtype=torch.int64)
    big[:, 4:] = 1
    small = torch.ones(4, 6, dtype=torch.int64)
    scores = torch.zeros(2, 3, 8, 8)
    scores[0] = _one_hot_scores(big, 3)
    scores[1, :, :4, :6] = _one_hot_scores(small, 3)
    scores[1, 2, 4:, :] = scores[1, 2, :, 6:] = 9.0  # padding votes for label 2: not counted
    for targets in (
        [{"semantic": big}, {"semantic": small}],  # no sizes: explained by the largest image
        [{"semantic": big, "size": (8, 8)}, {"semantic": small, "size": (4, 6)}],
    ):
        evaluator = MIoUEvaluator(2)
        evaluator.process(scores, targets)
        assert evaluator.summarize()["miou"] == 1.0
        assert int(evaluator.confusion.sum()) == 64 + 24
    # padded beyond the largest image (to a multiple of a stride): needs the recorded sizes
    wide = torch.zeros(2, 3, 16, 16)
    wide[:, :, :8, :8] = scores
    evaluator = MIoUEvaluator(2)
    with pytest.raises(ValueError, match=r"no label map of the batch is 16 high and 16 wide"):
        evaluator.process(wide, [{"semantic": big}, {"semantic": small}])
    evaluator.process(
        wide, [{"semantic": big, "size": (8, 8)}, {"semantic": small, "size": [4, 6]}]
    )
    assert evaluator.summarize()["miou"] == 1.0
