"""``torchdcn data digit-scenes``: writes the splits asked for, refuses to overwrite silently,
checks its pair options, and a second run with --overwrite gives the same bytes."""

from __future__ import annotations

import json

import pytest

from torchdcn import cli

pytest.importorskip("pycocotools")


needs_data = pytest.mark.needs_mnist5k
SMALL = [
    "--train-images", "3", "--val-images", "0", "--val-heldout-images", "0",
    "--test-images", "2", "--test-heldout-images", "2",
]  # fmt: skip


def test_help_lists_every_option(capsys):
    assert cli.main(["data", "--help"]) == cli.EXIT_OK
    text = capsys.readouterr().out
    for opt in cli.COMMANDS["data"][1]:
        assert (opt.metavar if opt.positional else f"--{opt.name}") in text
    assert "digit-scenes" in text


@needs_data
def test_writes_the_splits_and_overwrites_only_when_asked(tmp_path, capsys):
    out = tmp_path / "scenes"
    argv = ["data", "digit-scenes", "--out", str(out), "--seed", "5", *SMALL]
    assert cli.main(argv) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert "train" in printed and "test_heldout" in printed and "val " not in printed
    names = sorted(p.name for p in (out / "annotations").iterdir())
    assert names == ["instances_test.json", "instances_test_heldout.json", "instances_train.json"]
    data = json.loads((out / "annotations" / "instances_train.json").read_text())
    assert len(data["images"]) == 3 and data["info"]["seed"] == 5
    assert sorted(p.name for p in (out / "semantic" / "test").iterdir()) == [
        "000001.png",
        "000002.png",
    ]
    before = {p: p.read_bytes() for p in out.rglob("*.*")}
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite"]) == cli.EXIT_OK
    assert {p: p.read_bytes() for p in out.rglob("*.*")} == before
    # without clutter the same digits are drawn in a different scene (other draws)
    assert cli.main([*argv, "--overwrite", "--no-clutter"]) == cli.EXIT_OK
    info = json.loads((out / "annotations" / "instances_test.json").read_text())["info"]
    assert info["config"]["clutter"] == [0, 0] and info["clutter_fragments"] == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--heldout-heights", "10", "20"], "overlap"),
        (["--heights", "16", "44", "50"], "pairs"),
        (["--rotation", "30", "10"], "LO <= HI"),
        (["--rotation", "0", "400"], "--rotation must be <= 180, got 400.0"),
        (["--heldout-rotation", "190", "200"], "--heldout-rotation must be <= 180"),
        (["--min-digits", "5", "--max-digits", "3"], "--max-digits"),
    ],
)
def test_bad_options_exit_2(tmp_path, capsys, extra, message):
    argv = ["data", "digit-scenes", "--out", str(tmp_path / "x"), *SMALL, *extra]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unknown_dataset_and_missing_out_exit_2(tmp_path, capsys):
    assert cli.main(["data", "imagenet", "--out", str(tmp_path)]) == cli.EXIT_USAGE
    assert "digit-scenes" in capsys.readouterr().err
    assert cli.main(["data", "digit-scenes"]) == cli.EXIT_USAGE
    assert "--out" in capsys.readouterr().err


def test_missing_data_exits_3(tmp_path, capsys):
    argv = ["data", "digit-scenes", "--out", str(tmp_path / "o"), "--data-root", str(tmp_path)]
    assert cli.main([*argv, *SMALL]) == cli.EXIT_INPUT
    assert "mnist" in capsys.readouterr().err.lower()
