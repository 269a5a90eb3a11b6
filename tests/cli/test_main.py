"""The torchdcn command: help, config-file precedence, exit codes, and a tiny end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from torchdcn import cli
from torchdcn.data import DataNotFoundError, find_mnist5k


def _has_data() -> bool:
    try:
        find_mnist5k()
    except DataNotFoundError:
        return False
    return True


@pytest.fixture(autouse=True)
def restore_threads():
    """``--threads`` changes the process's thread counts; put them back after each test."""
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(before[0])
    numba.set_num_threads(before[1])


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


def _settings(argv):
    args = cli.build_parser().parse_args(argv)
    return cli.resolve_settings(args.command, args)


def test_precedence_defaults_then_yaml_then_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 0.05\nbatch-size: 32\ndeform: v2\namp: true\nmilestones: [2, 4]\n")
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
    assert "unreadable" in capsys.readouterr().err
    argv = ["train", "--resume", str(tmp_path / "gone.pt"), "--output-dir", str(tmp_path)]
    assert cli.main(argv) == cli.EXIT_INPUT


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
    ckpt, acc_file = str(out / "last.pt"), str(tmp_path / "acc.json")
    argv = ["eval", "--checkpoint", ckpt, "--limit-test", "40", "--json", acc_file]
    assert cli.main(argv) == cli.EXIT_OK
    acc = json.loads((tmp_path / "acc.json").read_text())["accuracy"]
    assert acc == pytest.approx(summary["accuracy"])


def test_demo_report_says_where_deformable_does_not_win():
    from torchdcn.demo import DemoConfig, DemoResult, accuracy_table, verdicts

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
    argv = "demo --seeds 0 --epochs 1 --limit-train 64 --limit-test 20 --jobs 1 --threads 1"
    argv = [*argv.split(), "--no-progress", "--plain-long-factor", "2", "--out-dir", str(out)]
    assert cli.main(argv) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert "| plain, 2x epochs |" in printed and "scale 1.8" in printed
    result = json.loads((out / "results.json").read_text())
    assert set(result["accuracy"]) == {"plain", "v1", "v2", "plain, 2x epochs"}
    assert (out / "sampling_locations.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "v1-seed0" / "last.pt").exists()
