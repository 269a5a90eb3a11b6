"""``torchdcn train``: options the optimizer or schedule does not read are refused, a preset's
milestones scale with ``--epochs`` and milestones after the run warn; a run starts from another
run's weights with ``--init-from``; ``results.json`` of a call that trained nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_args import settings as _settings

from torchdcn import cli
from torchdcn.cli.schedule_options import SCALED_FROM, resumed_milestones


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--milestones", "0.5"],  # the classifier's default schedule is cosine
            "--milestones applies to --schedule step, not to --schedule cosine",
        ),
        (["--gamma", "0.5"], "--gamma applies to --schedule step, not to --schedule cosine"),
        (["--momentum", "0.1"], "--momentum applies to --optimizer sgd, not to --optimizer adamw"),
        (
            ["--model", "faster_rcnn", "--min-lr-factor", "0.1"],  # detectors: step schedule
            "--min-lr-factor applies to --schedule cosine, not to --schedule step",
        ),
        (
            ["--model", "faster_rcnn", "--optimizer", "adamw", "--momentum", "0.8"],
            "--momentum applies to --optimizer sgd",
        ),
    ],
)
def test_options_the_schedule_or_optimizer_does_not_read_exit_2(tmp_path, capsys, argv, message):
    argv = ["train", *argv, "--data-root", str(tmp_path / "nodata")]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "ignored" in lines[0], err


def test_a_config_file_option_that_is_not_read_is_refused_and_read_ones_pass(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("optimizer: adamw\nmomentum: 0.5\n")
    with pytest.raises(cli.UsageError, match="--momentum applies to --optimizer sgd"):
        _settings(["train", "--config", str(cfg)])
    s = _settings(["train", "--config", str(cfg), "--optimizer", "sgd"])
    assert s["momentum"] == 0.5
    s = _settings(["train", "--schedule", "step", "--milestones", "2", "--gamma", "0.5"])
    assert s["milestones"] == [2.0] and s["gamma"] == 0.5


@pytest.mark.parametrize(
    ("argv", "milestones"),
    [
        (["--model", "faster_rcnn"], [8.0, 11.0]),  # the preset's 12 epochs: unchanged
        (["--model", "faster_rcnn", "--epochs", "6"], [4.0, 5.5]),  # 2/3 and 11/12 of the run
        (["--model", "rfcn", "--epochs", "24"], [16.0, 22.0]),
        (["--model", "deeplab", "--epochs", "3"], [2.0]),  # DeepLab: 2/3 of the run
        (["--model", "faster_rcnn", "--epochs", "6", "--milestones", "5"], [5.0]),  # given: kept
        (["--epochs", "3", "--schedule", "step"], []),  # the classifier has no preset milestones
    ],
)
def test_preset_milestones_scale_with_the_epochs(argv, milestones):
    s = _settings(["train", *argv])
    assert s["milestones"] == pytest.approx(milestones)
    scaled = s["milestones"] != [8.0, 11.0] and "--milestones" not in argv and milestones
    assert (SCALED_FROM in s) == bool(scaled)


def test_a_checkpoint_written_before_the_scaling_resumes_with_its_milestones(tmp_path):
    from torchdcn.engine import save_checkpoint

    s = _settings(["train", "--model", "faster_rcnn", "--epochs", "6"])
    ckpt = tmp_path / "last.pt"
    old = {"train": {"schedule": {"milestones": [8.0, 11.0]}}}
    save_checkpoint(ckpt, {"step": 1}, old)
    assert resumed_milestones(s, ckpt) == [8.0, 11.0]
    save_checkpoint(ckpt, {"step": 1}, {"train": {"schedule": {"milestones": [4.0, 5.5]}}})
    assert resumed_milestones(s, ckpt) is None  # a run that already scaled: nothing to keep
    assert resumed_milestones(s, tmp_path / "missing.pt") is None
    explicit = _settings(["train", "--model", "faster_rcnn", "--epochs", "6", "--milestones", "4"])
    save_checkpoint(ckpt, {"step": 1}, old)
    assert resumed_milestones(explicit, ckpt) is None  # given milestones are the run's


def write_coco(root: Path) -> Path:
    """Two 48x48 images with one box each (category 1)."""
    from PIL import Image

    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for i, (x, y) in enumerate([(6, 8), (20, 14)], start=1):
        pixels = np.full((48, 48, 3), 128, np.uint8)
        pixels[y : y + 20, x : x + 20] = (220, 40, 40)
        Image.fromarray(pixels).save(root / "train" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": 48, "width": 48})
        annotations.append(
            {"id": i, "image_id": i, "category_id": 1, "bbox": [x, y, 20, 20], "area": 400,
             "iscrowd": 0}
        )  # fmt: skip
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    return root


def test_detector_run_of_an_earlier_version_resumes_and_milestones_after_the_run_warn(
    tmp_path, capsys
):
    pytest.importorskip("pycocotools")
    root = write_coco(tmp_path / "data")
    out = tmp_path / "run"
    base = [
        "train", "--model", "rpn_detector", "--backbone", "resnet18", "--base-channels", "8",
        "--data-root", str(root), "--min-size", "48", "--max-size", "48", "--epochs", "1",
        "--batch-size", "2", "--limit-test", "1", "--warmup-steps", "0", "--no-progress",
        "--threads", "1", "--eval-every", "0", "--output-dir", str(out),
    ]  # fmt: skip
    # what an earlier version stored for --epochs 1: the preset's 8 and 11, after the run
    assert cli.main([*base, "--milestones", "8", "11"]) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "warning: milestones 8, 11 (epochs) not before the end of the run" in err
    # resumed without --milestones: the settings scale them, the checkpoint keeps its own
    # (a mismatch would exit 3)
    assert cli.main([*base, "--resume", "auto"]) == cli.EXIT_OK
    assert "warning: milestones 8, 11 (epochs)" in capsys.readouterr().err
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("resume") == 1


def test_results_of_a_call_that_trained_nothing(tmp_path):
    from types import SimpleNamespace

    from torchdcn.cli.train_results import write_results

    def result(steps, resumed, loss):
        return SimpleNamespace(
            steps=steps, loss=loss, accuracy={}, wall_time_s=0.1, resumed_from_step=resumed,
            checkpoint=tmp_path / "last.pt", losses={},
        )  # fmt: skip

    # no metrics.jsonl (a checkpoint copied elsewhere): null, not NaN
    written = write_results(tmp_path, result(4, 4, float("nan")), losses={}, metrics={})
    assert written["loss"] is None and "NaN" not in (tmp_path / "results.json").read_text()
    log = tmp_path / "metrics.jsonl"
    log.write_text(
        json.dumps({"event": "train", "step": 4, "loss": 1.5, "losses": {"a": 1.0, "b": 0.5}})
        + "\n"
    )
    written = write_results(tmp_path, result(4, 4, float("nan")), losses={}, metrics={})
    assert written["loss"] == 1.5 and written["losses"] == {"a": 1.0, "b": 0.5}
    assert write_results(tmp_path, result(6, 6, float("nan")))["loss"] is None  # another step
    assert write_results(tmp_path, result(6, 4, 0.25))["loss"] == 0.25  # trained: its own loss


def _detector_argv(root: Path, out: Path, model: str = "rpn_detector") -> list[str]:
    return [
        "train", "--model", model, "--backbone", "resnet18", "--base-channels", "8",
        "--data-root", str(root), "--min-size", "48", "--max-size", "48", "--epochs", "1",
        "--batch-size", "2", "--limit-test", "1", "--warmup-steps", "0", "--no-progress",
        "--threads", "1", "--eval-every", "0", "--output-dir", str(out),
    ]  # fmt: skip


def test_init_from_starts_a_new_run_from_a_whole_detector(tmp_path, capsys, monkeypatch):
    pytest.importorskip("pycocotools")
    from torchdcn import engine

    root = write_coco(tmp_path / "data")
    first = tmp_path / "first"
    assert cli.main(_detector_argv(root, first)) == cli.EXIT_OK
    ckpt = first / "last.pt"
    # resuming for more epochs is another run: the refusal says how to start it
    longer = [*_detector_argv(root, first), "--epochs", "2", "--resume", "auto"]
    assert cli.main(longer) == cli.EXIT_INPUT
    err = capsys.readouterr().err
    assert "train.epochs: 1 -> 2" in err and f"--init-from {ckpt}" in err
    assert cli.main([*longer, "--init-from", str(ckpt)]) == cli.EXIT_USAGE
    assert "give one of them, not both" in capsys.readouterr().err

    seen = {}
    fit = engine.Trainer.fit

    def recording_fit(self, *args, **kwargs):
        seen.update({k: v.clone() for k, v in self.model.state_dict().items()})
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(engine.Trainer, "fit", recording_fit)
    second = tmp_path / "second"
    argv = [*_detector_argv(root, second), "--epochs", "2", "--init-from", str(ckpt)]
    assert cli.main(argv) == cli.EXIT_OK
    assert "initialised from" in capsys.readouterr().out
    trained = engine.load_checkpoint(ckpt)["model"]
    assert seen.keys() == trained.keys()  # RPN and heads too, not only the backbone
    assert all(torch.equal(seen[k], trained[k]) for k in trained)
    summary = json.loads((second / "results.json").read_text())
    assert summary["steps"] == 2 and summary["resumed_from_step"] == 0  # a new run: step 0
    events = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "init_from" and events[0]["path"] == str(ckpt)
    # a run started from weights resumes as any other (the weights are not its identity)
    assert cli.main([*_detector_argv(root, second), "--epochs", "2", "--resume", "auto"]) == 0


def test_init_from_another_architecture_is_strict_unless_told(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    root = write_coco(tmp_path / "data")
    rpn = tmp_path / "rpn"
    assert cli.main(_detector_argv(root, rpn)) == cli.EXIT_OK
    capsys.readouterr()
    argv = [*_detector_argv(root, tmp_path / "frcnn", "faster_rcnn"), "--init-from"]
    assert cli.main([*argv, str(rpn / "last.pt")]) == cli.EXIT_INPUT
    err = capsys.readouterr().err
    assert "--init-from: the weights of" in err and "do not fit this model" in err
    # (both have a 1x1 reduce conv on conv5, of other widths: 1024 for the class-aware RPN)
    assert "missing from the file: " in err and "roi_heads.head.fc6.weight" in err
    assert "neck.conv.weight [1024," in err
    assert "--no-init-strict loads what fits" in err
    assert cli.main([*argv, str(rpn / "last.pt"), "--no-init-strict"]) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "warning: --init-from" in err and "keep their initialisation" in err
    assert cli.main([*argv, str(tmp_path / "gone.pt"), "--overwrite"]) == cli.EXIT_INPUT
    assert "--init-from" in capsys.readouterr().err
    no_init = _detector_argv(root, tmp_path / "x")
    assert cli.main([*no_init, "--no-init-strict"]) == cli.EXIT_USAGE
    assert "--no-init-strict applies to --init-from" in capsys.readouterr().err


def test_sync_bn_reaches_the_train_config(tmp_path):
    from torchdcn.cli.train import train_config

    s = _settings(["train", "--model", "faster_rcnn", "--sync-bn"])
    assert s["sync_bn"] is True and train_config(s, tmp_path).sync_bn is True
    assert train_config(_settings(["train"]), tmp_path).sync_bn is False
