"""The ``torchdcn`` command: ``train``, ``eval``, ``detect``, ``segment`` and ``demo`` (also
``python -m torchdcn``).

Every option of a command can also come from a YAML or TOML file given with ``--config``: a flat
table whose keys are the option names (``batch_size`` or ``batch-size``). Command-line flags win
over the file, the file wins over the built-in defaults. Exit codes: 0 success, 1 failure while
running, 2 bad arguments or config file, 3 missing or invalid input (data, checkpoint), 130
interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .extras import missing_message
from .option import UsageError
from .options import COMMANDS, EPILOG
from .presets import get_preset
from .settings import read_config_file, resolve_settings
from .train import check_train_start
from .train_results import accuracy_lines

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

__all__ = [
    "COMMANDS",
    "EXIT_FAILURE",
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
    "read_config_file",
    "resolve_settings",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``torchdcn`` parser; options left off the command line are absent from the result."""
    parser = argparse.ArgumentParser(
        prog="torchdcn",
        description="Deformable ConvNets v1/v2 in PyTorch: training, evaluation, detection and "
        "the demo.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True
    for command, (summary, options) in COMMANDS.items():
        p = sub.add_parser(
            command,
            help=summary,
            description=summary + ".",
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            argument_default=argparse.SUPPRESS,
        )
        p.add_argument(
            "--config",
            metavar="FILE",
            help="YAML or TOML file of option values (command-line flags override it)",
        )
        for opt in options:
            shown = "none" if opt.default is None else opt.default
            if isinstance(shown, list):
                shown = " ".join(str(v) for v in shown) or "none"
            text = f"{opt.help} (default: {shown})"
            if opt.positional:
                p.add_argument(opt.name, nargs=opt.nargs, metavar=opt.metavar, help=opt.help)
            elif opt.flag:
                p.add_argument(f"--{opt.name}", action=argparse.BooleanOptionalAction, help=text)
            else:
                p.add_argument(
                    f"--{opt.name}",
                    type=opt.parse,
                    nargs=opt.nargs,
                    metavar=opt.shown_metavar(),
                    help=text,
                )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``torchdcn`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed
        return int(exit_.code or 0)
    command = args.command
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(command)
            settings = resolve_settings(command, args)
            _check(command, settings)
            runner = {
                "train": _train,
                "eval": _eval,
                "detect": _detect,
                "segment": _segment,
                "demo": _demo,
                "analyze": _analyze,
                "data": _data,
            }[command]
            return runner(settings)
    except UsageError as err:
        print(f"torchdcn {command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"torchdcn {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        from ..data.mnist import DataFormatError, DataNotFoundError
        from ..engine.checkpoint import CheckpointError

        if isinstance(err, DataNotFoundError | DataFormatError | CheckpointError):
            print(f"torchdcn {command}: error: {err}", file=sys.stderr)
            return EXIT_INPUT
        import traceback

        traceback.print_exc()
        print(f"torchdcn {command}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILURE


def _one_line_warnings(command: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints ``torchdcn <command>: warning: <message>``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"torchdcn {command}: warning: {message}", file=file or sys.stderr)

    return show


def _check(command: str, s: dict[str, Any]) -> None:
    """Checks that need several settings or torch, before any data is read (ranges of single
    options are checked by :func:`resolve_settings`)."""
    missing = missing_message(command, s)
    if missing is not None:
        raise UsageError(missing)
    if command in ("eval", "detect", "segment") and not s.get("checkpoint"):
        raise UsageError("--checkpoint is required (e.g. --checkpoint runs/train/last.pt)")
    if command in ("detect", "segment") and not s.get("inputs"):
        raise UsageError("give at least one image or folder of images (IMAGE_OR_DIR)")
    if "device" in s:
        from ..engine.trainer import resolve_device

        try:
            resolve_device(s["device"])
        except ValueError as err:
            raise UsageError(f"--device: {err}") from err
    if command in ("train", "demo"):  # the demo trains mnist_cnn
        try:
            get_preset(s.get("model", "mnist_cnn")).model_config(s)
        except ValueError as err:
            raise UsageError(str(err)) from err
    if command == "train" and s.get("pretrained_backbone"):
        if not Path(s["pretrained_backbone"]).is_file():
            from ..engine.checkpoint import CheckpointError

            raise CheckpointError(f"--pretrained-backbone {s['pretrained_backbone']}: no such file")
    if command == "train":
        check_train_start(s)
    limit, batch = s.get("limit_train"), s.get("batch_size")
    if command in ("train", "demo") and limit is not None and limit < batch:
        raise UsageError(
            f"--limit-train {limit} is smaller than one batch (--batch-size {batch}): no "
            "training step would run; raise --limit-train or lower --batch-size"
        )


def _set_threads(threads: int) -> None:
    """``threads`` for torch and Numba; 0 keeps torch's count (``OMP_NUM_THREADS``, or the one
    ``torchrun`` set up) and gives Numba the same, so the two never fight over cores."""
    import torch

    from ..engine.distributed import set_cpu_threads

    set_cpu_threads(threads or torch.get_num_threads())


# -- commands -------------------------------------------------------------------------------


def _train(s: dict[str, Any]) -> int:
    from ..engine import distributed
    from .train import run_train

    dist = distributed.init_distributed()
    _set_threads(s["threads"])
    try:
        run_train(s, dist)
    finally:
        distributed.cleanup()
    return EXIT_OK


def _eval(s: dict[str, Any]) -> int:
    from ..data.distorted_mnist import distorted_mnist
    from ..engine import AccuracyEvaluator, distributed, evaluate
    from ..engine.device import resolve_device
    from .presets import model_from_checkpoint

    dist = distributed.init_distributed()
    _set_threads(s["threads"])
    try:
        model, preset, info = model_from_checkpoint(s["checkpoint"])
        detection = preset.task == "detection"
        segmentation = preset.task == "segmentation"
        if not detection and not segmentation:
            given = [f"--{k}" for k in ("ann_file", "image_dir", "min_size", "max_size") if s[k]]
            if given:
                raise UsageError(
                    f"{', '.join(given)} apply to detector and segmenter checkpoints only"
                )
        device = resolve_device(s["device"], dist.local_rank)
        model.to(device)
        kwargs = preset.trainer_kwargs()
        collate = {"collate_fn": kwargs["collate_fn"]} if "collate_fn" in kwargs else {}
        if detection:
            from .detection import check_detection_info, coco_evaluator, evaluation_set

            data = check_detection_info(info, s["checkpoint"])
            tests = {"val": evaluation_set(s, data)}
            make_evaluator = coco_evaluator(tests["val"])
        elif segmentation:
            from . import segmentation as seg

            data = seg.check_segmentation_info(info, s["checkpoint"])
            tests = {"val": seg.evaluation_set(s, data)}
            make_evaluator = seg.miou_evaluator(data["class_names"])
        else:
            _, tests = distorted_mnist(s["data_root"], limit_test=s["limit_test"])
            make_evaluator = kwargs.get("evaluator", AccuracyEvaluator)
        batch_size = s["batch_size"] or (2 if detection or segmentation else 250)
        metrics, tables = {}, {}
        for name, source in tests.items():
            evaluator = make_evaluator()
            metrics[name] = evaluate(
                model,
                source,
                evaluator,
                batch_size,
                device,
                num_workers=s["num_workers"],
                **collate,
            )
            tables[name] = getattr(evaluator, "table", "")
        if dist.is_main:
            if detection:
                from .detection import metrics_table

                print(tables["val"])
                print(metrics_table(metrics["val"]))
                result: dict[str, Any] = {"metrics": metrics["val"]}
            elif segmentation:
                from .segmentation import miou_lines

                print(tables["val"])
                print(miou_lines(metrics["val"]))
                result = {"metrics": metrics["val"]}
            else:
                accuracy = {name: m["accuracy"] for name, m in metrics.items()}
                print(accuracy_lines(accuracy))
                result = {"accuracy": accuracy}
            if s["json"]:
                Path(s["json"]).write_text(json.dumps(result, indent=1))
    finally:
        distributed.cleanup()
    return EXIT_OK


def _detect(s: dict[str, Any]) -> int:
    from .detect import run_detect

    run_detect(s)
    return EXIT_OK


def _data(s: dict[str, Any]) -> int:
    from .data import run_data

    run_data(s)
    return EXIT_OK


def _analyze(s: dict[str, Any]) -> int:
    from .analyze import run_analyze

    _set_threads(s["threads"])
    print(f"report: {run_analyze(s)}")
    return EXIT_OK


def _segment(s: dict[str, Any]) -> int:
    from .segment import run_segment

    run_segment(s)
    return EXIT_OK


def _demo(s: dict[str, Any]) -> int:
    from .tour import run_tour

    run_tour(s)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
