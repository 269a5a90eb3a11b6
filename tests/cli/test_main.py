"""The torchdcn command: help, config-file precedence, exit codes, and a tiny end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_args import settings as _settings

from torchdcn import cli
from torchdcn.data import DataNotFoundError, find_mnist5k


def _has_data() -> bool:
    try:
        find_mnist5k()
    except DataNotFoundError:
        return False
    return True


needs_data = pytest.mark.skipif(
    not _has_data(), reason="needs ../shared/data/mnist5k (or $TORCHDCN_DATA); see data docs"
)


@pytest.mark.parametrize("command", ["train", "eval", "demo"])
def test_help_explains_every_option(command, capsys):
    assert cli.main([command, "--help"]) == cli.EXIT_OK
    text = capsys.readouterr().out
    for opt in cli.COMMANDS[command][1]:
        assert f"--{opt.name}" in text
    assert "--config" in text and "exit codes" in text and "(default:" in text


def test_top_level_help_via_python_m():
    proc = subprocess.run(
        [sys.executable, "-m", "torchdcn", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert all(c in proc.stdout for c in ("train", "eval", "demo"))


def test_precedence_defaults_then_yaml_then_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "lr: 0.05\nbatch-size: 32\ndeform: v2\namp: true\nschedule: step\nmilestones: [2, 4]\n"
    )
    s = _settings(["train", "--config", str(cfg), "--lr", "0.01"])
    assert s["lr"] == 0.01  # flag beats file
    assert s["batch_size"] == 32 and s["deform"] == "v2" and s["amp"] is True  # file beats default
    assert s["milestones"] == [2.0, 4.0]
    assert s["epochs"] == 6  # default
    assert _settings(["train", "--config", str(cfg), "--no-amp"])["amp"] is False


def test_toml_config_and_none_values(tmp_path):
    cfg = tmp_path / "demo.toml"
    cfg.write_text('seeds = [4, 5]\nepochs = 2\nout_dir = "x"\n')
    s = _settings(["demo", "--config", str(cfg), "--epochs", "3"])
    assert s["seeds"] == [4, 5] and s["epochs"] == 3 and s["out_dir"] == "x"
    plain = tmp_path / "plain.yaml"
    plain.write_text("deform: none\nclip_grad_norm: 1.5\n")
    s = _settings(["train", "--config", str(plain)])
    assert s["deform"] is None and s["clip_grad_norm"] == 1.5


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "two"],
        ["train", "--deform", "v3"],
        ["train", "--no-such-flag"],
        ["frobnicate"],
        [],
        ["train", "--epochs", "0"],
        ["train", "--lr", "-1"],
        ["eval"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        ("learning_rate: 0.1\n", "unknown option 'learning_rate'"),
        ("epochs: many\n", "bad value 'many' for epochs"),
        ("optimizer: adam\n", "optimizer must be one of"),
        ("- 1\n- 2\n", "must hold a mapping"),
        ("lr: [0.1\n", "could not be parsed"),
    ],
)
def test_bad_config_files_exit_2(tmp_path, capsys, content, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    assert cli.main(["train", "--config", str(cfg)]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert cli.main(["demo", "--config", str(tmp_path / "none.toml")]) == cli.EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err


def test_missing_data_exits_3_with_the_place_looked(tmp_path, capsys):
    code = cli.main(
        ["train", "--data-root", str(tmp_path / "nodata"), "--output-dir", str(tmp_path / "o")]
    )
    assert code == cli.EXIT_INPUT
    err = capsys.readouterr().err
    assert str(tmp_path / "nodata") in err and "pip download" in err


def test_corrupt_checkpoint_exits_3(tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    assert cli.main(["eval", "--checkpoint", str(bad)]) == cli.EXIT_INPUT
    err = capsys.readouterr().err
    assert "cannot load the checkpoint to evaluate" in err and "unreadable" in err
    assert "resum" not in err and "restart" not in err  # eval resumes nothing
    assert len(err.strip().splitlines()) == 1
    argv = ["train", "--resume", str(tmp_path / "gone.pt"), "--output-dir", str(tmp_path)]
    assert cli.main(argv) == cli.EXIT_INPUT


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


@needs_data
def test_tiny_train_eval_and_resume_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    base = "--limit-train 96 --limit-test 40 --batch-size 32 --no-progress --deform v1"
    base = [*base.split(), "--epochs", "1", "--threads", "1", "--output-dir", str(out)]
    assert cli.main(["train", *base]) == cli.EXIT_OK
    summary = json.loads((out / "results.json").read_text())
    assert summary["steps"] == 3 and set(summary["accuracy"]) >= {"train-like", "scale 1.8"}
    # a second fresh run into the same folder is refused instead of overwriting
    assert cli.main(["train", *base]) == cli.EXIT_USAGE
    assert "--resume auto" in capsys.readouterr().err
    # resuming with other settings is refused; with the same ones it finishes at once
    assert cli.main(["train", *base, "--resume", "auto", "--lr", "0.1"]) == cli.EXIT_INPUT
    assert "optim.lr" in capsys.readouterr().err
    assert cli.main(["train", *base, "--resume", "auto"]) == cli.EXIT_OK
    capsys.readouterr()
    # results.json of the call that trained nothing keeps the run's loss, as strict JSON
    resumed = json.loads((out / "results.json").read_text(), parse_constant=_refuse_constant)
    assert resumed["loss"] == summary["loss"] and resumed["resumed_from_step"] == 3
    # --resume and --overwrite contradict each other: refused, nothing deleted
    assert cli.main(["train", *base, "--resume", "auto", "--overwrite"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--resume auto continues a run, --overwrite starts one over" in err
    assert (out / "last.pt").exists() and (out / "metrics.jsonl").exists()
    ckpt, acc_file = str(out / "last.pt"), str(tmp_path / "acc.json")
    argv = ["eval", "--checkpoint", ckpt, "--limit-test", "40", "--json", acc_file]
    argv += ["--num-workers", "1"]  # a DataLoader worker reads the test digits
    assert cli.main(argv) == cli.EXIT_OK
    acc = json.loads((tmp_path / "acc.json").read_text())["accuracy"]
    assert acc == pytest.approx(summary["accuracy"])


def test_demo_report_says_where_deformable_does_not_win():
    from torchdcn.cli.demo import DemoConfig, DemoResult, accuracy_table, verdicts

    acc = {
        "plain": {"train-like": [90.0, 92.0], "scale 0.5": [50.0, 52.0]},
        "v1": {"train-like": [95.0, 95.0], "scale 0.5": [40.0, 44.0]},
        "v2": {"train-like": [96.0, 96.0], "scale 0.5": [60.0, 60.0]},
    }
    result = DemoResult(config=DemoConfig(seeds=(0, 1)), accuracy=acc)
    assert verdicts(result) == [
        "v1 does NOT beat plain on: scale 0.5 (42.0 vs 51.0).",
        "v2 beats plain on every level.",
    ]
    table = accuracy_table(result)
    assert "| v1 | 95.0 ± 0.0 | 42.0 ± 2.8 | 42.0 ± 2.8 |" in table  # last: held-out mean


@needs_data
def test_tiny_demo_end_to_end(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    argv = "demo --part classification --seeds 0 --epochs 1 --limit-train 64 --limit-test 20"
    argv += " --jobs 1 --threads 1"
    argv = [*argv.split(), "--no-progress", "--plain-long-factor", "2", "--out-dir", str(out)]
    assert cli.main(argv) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert "| plain, 2x epochs |" in printed and "scale 1.8" in printed
    result = json.loads((out / "results.json").read_text())
    assert set(result["accuracy"]) == {"plain", "v1", "v2", "plain, 2x epochs"}
    assert (out / "sampling_locations.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "v1-seed0" / "last.pt").exists()


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"torchdcn {command}: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--device", "tpu"], "device must be cpu, cuda, cuda:N or auto, got 'tpu'"),
        (["eval", "--checkpoint", "x.pt", "--device", "gpu"], "got 'gpu'"),
        (["demo", "--limit-train", "10"], "--limit-train 10 is smaller than one batch"),
        (["train", "--limit-train", "40", "--batch-size", "64"], "(--batch-size 64)"),
        (["train", "--limit-train", "0"], "--limit-train must be >= 1, got 0"),
        (["eval", "--checkpoint", "x.pt", "--limit-test", "-3"], "--limit-test must be >= 1"),
        (["train", "--width", "12"], "--width 12: norm_groups=4 must divide width // 2 = 6"),
        (["train", "--weight-decay", "-0.1"], "--weight-decay must be >= 0, got -0.1"),
        (["train", "--log-every", "0"], "--log-every must be >= 1"),
        (["train", "--clip-grad-norm", "0"], "--clip-grad-norm must be > 0"),
        (["train", "--milestones", "2", "-1"], "--milestones must be >= 0, got -1.0"),
        # a cosine floor above 1 raised the rate over the run ([0.003, 0.0038, 0.006, ...])
        (["train", "--min-lr-factor", "5"], "--min-lr-factor must be <= 1, got 5.0"),
        (["train", "--gamma", "2"], "--gamma must be <= 1, got 2.0"),
        (["train", "--warmup-factor", "1.5"], "--warmup-factor must be <= 1, got 1.5"),
        (["train", "--momentum", "1"], "--momentum must be < 1, got 1.0"),
        (["demo", "--seeds", "0", "-1"], "--seeds must be >= 0, got -1"),
        (["demo", "--jobs", "-2"], "--jobs must be >= 0"),
    ],
)
def test_bad_settings_exit_2_with_one_line_before_reading_data(tmp_path, capsys, argv, message):
    # --data-root points nowhere: these must be refused before the data is looked for (exit 3)
    argv = [*argv, "--data-root", str(tmp_path / "nodata")]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert message in _one_error_line(capsys.readouterr().err, argv[0])


def test_cuda_device_without_cuda_exits_2(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        argv = ["train", "--device", f"cuda:{torch.cuda.device_count()}"]
        expected = "CUDA device(s) are visible"
    else:
        argv, expected = ["train", "--device", "cuda"], "asked for, but"
    assert cli.main([*argv, "--data-root", str(tmp_path)]) == cli.EXIT_USAGE
    line = _one_error_line(capsys.readouterr().err, "train")
    assert expected in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--deform", "v3"], "invalid choice: 'v3' (choose from none, v1, v2)"),
        (["train", "--epochs", "1.7"], "invalid value '1.7': expected an integer"),
        (["train", "--lr", "nan"], "invalid value 'nan': expected a finite number"),
    ],
)
def test_argparse_errors_name_the_values_as_help_does(argv, message, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "None" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.yaml", "epochs: 1.7\n", "bad value 1.7 for epochs: expected an integer, got float"),
        ("a.yaml", "epochs: true\n", "bad value True for epochs: expected an integer, got bool"),
        ("a.yaml", "epochs: 2.0\n", "expected an integer, got float"),  # as --epochs 2.0
        ("a.toml", "epochs = 1.7\n", "expected an integer, got float"),
        ("a.toml", "batch_size = true\n", "bad value True for batch-size"),
        ("a.yaml", "lr: true\n", "bad value True for lr: expected a number, got bool"),
        ("a.yaml", "lr: .nan\n", "expected a finite number"),
        ("a.yaml", "clip_grad_norm: false\n", "for clip-grad-norm: expected a number"),
        ("a.yaml", "limit_train: 64.5\n", "for limit-train: expected an integer"),
        ("a.yaml", "milestones: [2, true]\n", "for milestones: expected a number, got bool"),
        ("a.yaml", "amp: 1\n", "for amp: expected true or false"),
        ("a.yaml", "deform: 2\n", "for deform: expected text (quote it), got int"),
        ("a.yaml", "deform: v3\n", "deform must be one of none, v1, v2, got 'v3'"),
        ("a.yaml", "output_dir: true\n", "for output-dir: expected text"),
        ("a.yaml", "epochs: 0\n", "error: config file"),
        ("a.yaml", "warmup_steps: -5\n", "--warmup-steps must be >= 0, got -5"),
        ("a.toml", "seed = -1\n", "--seed must be >= 0, got -1"),
    ],
)
def test_config_values_are_checked_like_flags(tmp_path, capsys, name, content, message):
    cfg = tmp_path / name
    cfg.write_text(content)
    argv = ["train", "--config", str(cfg), "--data-root", str(tmp_path / "nodata")]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert message in _one_error_line(capsys.readouterr().err, "train")


def test_config_numbers_that_the_flags_accept_are_accepted(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(
        "epochs: 3\nlr: 1\nschedule: step\nmilestones: [1, 2.5]\nlimit_test: null\nseed: '7'\n"
    )
    s = _settings(["train", "--config", str(cfg)])
    assert s["epochs"] == 3 and s["lr"] == 1.0 and isinstance(s["lr"], float)
    assert s["milestones"] == [1.0, 2.5] and s["limit_test"] is None and s["seed"] == 7


@needs_data
def test_warmup_longer_than_the_run_warns_in_one_line(tmp_path, capsys):
    argv = "train --limit-train 64 --limit-test 20 --batch-size 8 --epochs 1 --no-progress"
    argv = [*argv.split(), "--threads", "1", "--output-dir", str(tmp_path / "run")]
    assert cli.main([*argv, "--warmup-steps", "50"]) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "torchdcn train: warning: the warm-up (50 steps) is not shorter than the run (8 " in err
    assert "UserWarning" not in err
    assert cli.main([*argv, "--warmup-steps", "4", "--overwrite"]) == cli.EXIT_OK
    assert "warning" not in capsys.readouterr().err


def test_model_presets_are_a_registry_with_a_clear_error(tmp_path, capsys):
    from torchdcn.cli.presets import MODELS, get_preset
    from torchdcn.models.classification.mnist_cnn import mnist_cnn

    assert cli.main(["train", "--model", "faster_rcnn_r50"]) == cli.EXIT_USAGE
    choices = ", ".join(MODELS)  # every preset, in registration order
    assert f"invalid choice: 'faster_rcnn_r50' (choose from {choices})" in capsys.readouterr().err
    cfg = tmp_path / "m.yaml"
    cfg.write_text("model: resnet9000\n")
    argv = ["train", "--config", str(cfg), "--data-root", str(tmp_path / "nodata")]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert f"model must be one of {choices}, got 'resnet9000'" in capsys.readouterr().err
    names = ", ".join(sorted(MODELS))
    with pytest.raises(ValueError, match=f"unknown model 'x'; choose from {names}"):
        get_preset("x")
    preset = MODELS["mnist_cnn"]
    config = preset.model_config({"deform": "v2", "width": 16, "lr": 0.1})
    assert config == {"deform": "v2", "width": 16}  # what run_info stores for eval
    built, direct = preset.build(**config), mnist_cnn("v2", width=16)
    assert [(k, v.shape) for k, v in built.state_dict().items()] == [
        (k, v.shape) for k, v in direct.state_dict().items()
    ]
    assert _settings(["train"])["model"] == "mnist_cnn"  # the default


@pytest.mark.parametrize(
    ("argv", "absent", "extra"),
    [
        (["demo"], "matplotlib", "plot"),
        (["demo", "--part", "detection"], "pycocotools", "coco"),
        (["demo", "--part", "classification"], "matplotlib", "plot"),
        (["data", "digit-scenes", "--out", "unused"], "PIL", "coco"),
        (["detect", "--checkpoint", "unused.pt", "unused.png"], "PIL", "coco"),
    ],
    ids=["demo", "demo-detection", "demo-classification", "data", "detect"],
)
def test_missing_extra_fails_before_any_work(argv, absent, extra, monkeypatch, capsys):
    """A command whose optional package is not installed stops at once (exit 2) naming the
    package and the extra that installs it, before reading data or training."""
    import importlib
    import importlib.util

    cli_main = importlib.import_module("torchdcn.cli.main")  # the module, not the function

    def ran(s):  # the command itself must not start (pytest.fail escapes main's handler)
        pytest.fail(f"{argv[0]} ran without {absent}")

    monkeypatch.setattr(cli_main, f"_{argv[0]}", ran)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == absent else real(name, *a)
    )
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert absent in err and f"torchdcn[{extra}" in err


def test_classification_demo_does_not_need_coco(monkeypatch):
    import importlib.util

    from torchdcn.cli.extras import missing_message

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pycocotools" else real(name, *a),
    )
    assert missing_message("demo", {"part": "classification"}) is None
    assert "pycocotools" in missing_message("demo", {"part": "all"})
    assert missing_message("train", {}) is None


def test_detect_mask_rle_without_pycocotools_names_the_extra(monkeypatch):
    """A Mask R-CNN's masks need pycocotools to be written: its absence is a clear error."""
    import sys

    import torch

    from torchdcn.cli.detect import _rle
    from torchdcn.cli.option import UsageError

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(UsageError, match=r"torchdcn\[coco\]"):
        _rle(torch.zeros(1, 1, 4, 4))
