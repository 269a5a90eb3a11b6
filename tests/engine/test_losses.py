"""The loss-dict contract: a model that returns named losses trains through the same loop, the
terms are summed, logged to metrics.jsonl, and batches may be lists of differently sized images
with target dicts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchdcn.data import list_collate
from torchdcn.engine import (
    ClassificationLoss,
    Trainer,
    check_losses,
    epoch_batches,
    model_losses,
    read_metrics,
    total_loss,
)


class HalvedLosses(nn.Module):
    """Wraps a classifier: ``forward(x, y) -> {"loss_cls": CE / 2, "loss_aux": CE / 2}``. Halving
    is exact in floating point, and so is adding the halves (at the loss and at the logits'
    gradient), so training it must give bit for bit the classifier's weights."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x, y=None):
        logits = self.net(x)
        if y is None:
            return logits
        loss = F.cross_entropy(logits, y)
        return {"loss_cls": loss * 0.5, "loss_aux": loss * 0.5}


def test_loss_dict_model_sums_terms_like_the_classification_path(
    tmp_path, tiny_model, tiny_data, tiny_config
):
    plain = Trainer(tiny_model(), tiny_data(), tiny_config(output_dir=str(tmp_path / "a")))
    plain.fit()
    wrapped = HalvedLosses(tiny_model())
    cfg = tiny_config(output_dir=str(tmp_path / "b"), log_every=3)
    data = tiny_data()
    result = Trainer(
        wrapped, data, cfg, compute_losses=model_losses, eval_sets={"train": data}
    ).fit()
    a, b = plain.model.state_dict(), wrapped.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    train = [e for e in read_metrics(tmp_path / "b" / "metrics.jsonl") if e["event"] == "train"]
    assert [e["step"] for e in train] == [3, 6, 9, 12]
    for e in train:
        assert set(e["losses"]) == {"loss_cls", "loss_aux"}
        assert e["losses"]["loss_cls"] == e["losses"]["loss_aux"]
        assert e["loss"] == pytest.approx(e["losses"]["loss_cls"] * 2, rel=1e-12)
    assert result.losses == train[-1]["losses"] and result.loss == train[-1]["loss"]
    # eval mode calls model(inputs) and the default evaluator measures accuracy
    assert 0 <= result.accuracy["train"] <= 100 and result.metrics["train"].keys() == {"accuracy"}
    plain_log = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert next(e["losses"] for e in plain_log if e["event"] == "train").keys() == {"loss_cls"}


class SizedImages(torch.utils.data.Dataset):
    """Sample ``i``: an image ``[1, 4 + i % 3, 5 + i % 2]`` of value ``i`` and ``{"labels": [i %
    2], "index": i}``: sizes differ, so only a list collate can batch them."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i):
        image = torch.full((1, 4 + i % 3, 5 + i % 2), float(i))
        return image, {"labels": torch.tensor([i % 2]), "index": i}


class ListDetector(nn.Module):
    """A stand-in detector: ``forward(images: list, targets: list[dict]) -> {"loss_a", "loss_b"}``;
    remembers which samples (by pixel value) and sizes it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[list[int]] = []

    def forward(self, images, targets):
        assert isinstance(images, list) and isinstance(targets, list)
        self.seen.append([int(img[0, 0, 0]) for img in images])
        for img, t in zip(images, targets, strict=True):
            i = t["index"]
            assert img.shape == (1, 4 + i % 3, 5 + i % 2) and t["labels"].tolist() == [i % 2]
        score = torch.stack([self.scale * img.mean() / 24 for img in images])
        labels = torch.cat([t["labels"] for t in targets]).float()
        return {"loss_a": ((score - labels) ** 2).mean(), "loss_b": self.scale**2 * 1e-3}


def test_lists_of_images_of_different_sizes_and_target_dicts(tiny_config):
    model = ListDetector()
    cfg = tiny_config(epochs=2, batch_size=6)
    trainer = Trainer(
        model, SizedImages(), cfg, compute_losses=model_losses, collate_fn=list_collate
    )
    result = trainer.fit()
    expected = [b.tolist() for e in range(2) for b in epoch_batches(24, 6, cfg.seed, e)]
    assert model.seen == expected
    assert result.steps == 8 and set(result.losses) == {"loss_a", "loss_b"}


def test_bad_loss_outputs_name_what_came():
    with pytest.raises(TypeError, match=r"got Tensor .*ClassificationLoss"):
        check_losses(torch.tensor(1.0))
    with pytest.raises(ValueError, match="empty dict"):
        check_losses({})
    with pytest.raises(ValueError, match=r"loss 'loss_box' must be a scalar tensor, got \(2,\)"):
        check_losses({"loss_box": torch.ones(2)})
    with pytest.raises(ValueError, match="not both"):
        Trainer(nn.Linear(2, 2), [], None, loss_fn=F.mse_loss, compute_losses=model_losses)


def test_classification_loss_and_total():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    losses = ClassificationLoss()(nn.Identity(), logits, labels)
    assert list(losses) == ["loss_cls"] and torch.equal(
        losses["loss_cls"], F.cross_entropy(logits, labels)
    )
    assert total_loss(losses) is losses["loss_cls"]  # one term: no extra rounding
    terms = {"a": torch.tensor(1.5), "b": torch.tensor(2.25)}
    assert total_loss(terms).item() == 3.75
