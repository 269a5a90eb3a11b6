"""Options of the ``torchdcn`` commands, and how a config file and the flags combine.

Each command's options are a table of :class:`Option` rows; the parser
(:mod:`torchdcn.cli.main`) and the config-file reader both read these tables, so a key in a
YAML/TOML file is checked and converted exactly as the flag would be. Precedence: built-in
defaults < config file < flags.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .presets import MODELS

EPILOG = """\
configuration: every option may also be set in the file given by --config (YAML: .yaml/.yml,
TOML: .toml), one key per option, e.g. `lr: 0.01` or `batch_size = 128`; flags given on the
command line override the file, which overrides the defaults shown.

exit codes: 0 success; 1 failure while running; 2 bad arguments or config file; 3 missing or
invalid input (data not found, checkpoint missing, corrupt or from other settings); 130
interrupted (Ctrl-C).

data: the MNIST sample mnist5k/mnist_5k.csv.gz is read from --data-root, else $TORCHDCN_DATA,
else ../shared/data next to the current directory or the project checkout.
"""


class UsageError(Exception):
    """Bad arguments or configuration: reported with exit code 2."""


@dataclass(frozen=True)
class Option:
    """One command-line option (and config-file key)."""

    name: str
    type: Callable[[str], Any] | None
    default: Any
    help: str
    choices: tuple | None = None
    nargs: str | None = None
    flag: bool = False  # boolean switch with a --no- form
    metavar: str | None = None
    at_least: float | None = None  # smallest allowed value (of each value, for lists)
    above: float | None = None  # the value must be greater than this

    def shown_metavar(self) -> str:
        """What the help shows as the value: the choices, ``metavar``, or N / X / TEXT."""
        if self.choices:
            return "{" + ",".join(self.choices) + "}"
        if self.metavar:
            return self.metavar
        return {int: "N", float: "X"}.get(self.type, "TEXT")  # type: ignore[call-overload]

    def converted_choices(self) -> tuple | None:
        """The choices as the parsed values (``"none"`` -> ``None`` for ``--deform``)."""
        if self.choices is None:
            return None
        return tuple(self.type(c) for c in self.choices) if self.type else self.choices

    def parse(self, text: str) -> Any:
        """A command-line value converted, and checked against the choices: what ``argparse``
        calls as ``type`` (its own ``choices`` check would list ``None`` for ``none``, its own
        error would name the converter)."""
        try:
            value = self.type(text) if self.type else text
        except (TypeError, ValueError) as err:
            kind = _KIND.get(self.type)  # type: ignore[call-overload]
            wanted = {int: "an integer", float: "a finite number"}.get(kind)  # type: ignore[call-overload]
            reason = f"expected {wanted}" if wanted else str(err)
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {reason}") from err
        if self.choices is not None and value not in self.converted_choices():
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(self.choices)})"
            )
        return value

    def range_error(self, value: Any) -> str | None:
        """Why ``value`` is out of this option's range, or ``None`` (``None`` values pass)."""
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is None or isinstance(v, str):
                continue
            if self.at_least is not None and v < self.at_least:
                return f"--{self.name} must be >= {self.at_least:g}, got {v}"
            if self.above is not None and not v > self.above:
                return f"--{self.name} must be > {self.above:g}, got {v}"
        return None


def _float(text: str) -> float:
    """A finite float (``nan`` and ``inf`` are refused: no setting means them)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def _int_or_none(text: str) -> int | None:
    return None if str(text).lower() in ("none", "") else int(text)


def _float_or_none(text: str) -> float | None:
    return None if str(text).lower() in ("none", "") else _float(text)


def _deform(text: str) -> str | None:
    return None if str(text).lower() in ("none", "plain", "") else str(text)


DATA_ROOT = Option(
    "data-root",
    str,
    None,
    "folder holding mnist5k/ (none: $TORCHDCN_DATA or ../shared/data)",
    metavar="DIR",
)
PROGRESS = Option("progress", None, True, "show a progress bar (tqdm)", flag=True)
THREADS = Option(
    "threads",
    int,
    0,
    "CPU threads for torch and Numba (0: torch's, e.g. OMP_NUM_THREADS)",
    at_least=0,
)
WIDTH = Option(
    "width",
    int,
    32,
    "channels of the CNN body (width // 2 divisible by 4, e.g. 16, 32)",
    at_least=8,
)
LIMIT_TRAIN = Option(
    "limit-train",
    _int_or_none,
    None,
    "train on N digits spread over the classes (quick checks; at least one batch)",
    metavar="N",
    at_least=1,
)
LIMIT_TEST = Option(
    "limit-test",
    _int_or_none,
    None,
    "test on N digits spread over the classes (quick checks)",
    metavar="N",
    at_least=1,
)
NUM_WORKERS = Option(
    "num-workers",
    int,
    0,
    "DataLoader worker processes per process (0: read data in the main process)",
    at_least=0,
)
MODEL = Option(
    "model",
    str,
    "mnist_cnn",
    "model preset (torchdcn.cli.presets.MODELS)",
    tuple(MODELS),
)
WARMUP_NOTE = " (one not shorter than the run is kept, with a warning)"

TRAIN_OPTIONS = (
    DATA_ROOT,
    MODEL,
    Option("deform", _deform, None, "body layers: none (plain), v1 or v2", ("none", "v1", "v2")),
    WIDTH,
    Option("epochs", int, 6, "passes over the 4000 training digits", at_least=1),
    Option("batch-size", int, 64, "global batch size (split over torchrun processes)", at_least=1),
    Option("seed", int, 0, "seed of initialisation, data order and distortions", at_least=0),
    Option("optimizer", str, "adamw", "optimizer", ("sgd", "adamw")),
    Option(
        "lr",
        _float,
        3e-3,
        "base learning rate (offset predictors: times their multiplier)",
        above=0,
    ),
    Option("weight-decay", _float, 1e-4, "weight decay", at_least=0),
    Option("momentum", _float, 0.9, "SGD momentum", at_least=0),
    Option("schedule", str, "cosine", "learning-rate schedule after warm-up", ("cosine", "step")),
    Option("warmup-steps", int, 50, "linear warm-up steps" + WARMUP_NOTE, at_least=0),
    Option(
        "warmup-factor", _float, 0.001, "learning-rate factor at the first warm-up step", at_least=0
    ),
    Option(
        "milestones",
        _float,
        [],
        "epochs where the step schedule multiplies by gamma",
        None,
        "*",
        at_least=0,
    ),
    Option("gamma", _float, 0.1, "factor of the step schedule at each milestone", above=0),
    Option("min-lr-factor", _float, 0.0, "final factor of the cosine schedule", at_least=0),
    Option("amp", None, False, "mixed precision (bfloat16 on CPU, float16 on CUDA)", flag=True),
    Option(
        "clip-grad-norm",
        _float_or_none,
        None,
        "clip the gradient norm to this (none: off)",
        metavar="X",
        above=0,
    ),
    Option(
        "output-dir",
        str,
        "runs/train",
        "folder for last.pt, metrics.jsonl, results.json",
        metavar="DIR",
    ),
    Option(
        "checkpoint-every",
        int,
        20,
        "also checkpoint every N steps (0: epoch ends only)",
        at_least=0,
    ),
    Option("log-every", int, 10, "log the loss every N steps", at_least=1),
    Option("eval-every", int, 1, "evaluate every N epochs (0: at the end only)", at_least=0),
    Option(
        "resume",
        str,
        None,
        "continue from a checkpoint: a path, or 'auto' for "
        "<output-dir>/last.pt; a missing or mismatched one is an error",
        metavar="PATH|auto",
    ),
    Option(
        "overwrite", None, False, "start over even if <output-dir> holds a checkpoint", flag=True
    ),
    Option("device", str, "auto", "cpu, cuda, cuda:N or auto", metavar="DEVICE"),
    Option(
        "tensorboard", None, False, "also log to <output-dir>/tb (needs tensorboard)", flag=True
    ),
    LIMIT_TRAIN,
    LIMIT_TEST,
    NUM_WORKERS,
    PROGRESS,
    THREADS,
)

EVAL_OPTIONS = (
    Option(
        "checkpoint",
        str,
        None,
        "checkpoint to evaluate (e.g. runs/train/last.pt); required",
        metavar="PATH",
    ),
    DATA_ROOT,
    Option("batch-size", int, 250, "evaluation batch size", at_least=1),
    Option("device", str, "auto", "cpu, cuda, cuda:N or auto", metavar="DEVICE"),
    Option("json", str, None, "also write the accuracies to this JSON file", metavar="PATH"),
    LIMIT_TEST,
    NUM_WORKERS,
    THREADS,
)

DEMO_OPTIONS = (
    DATA_ROOT,
    Option(
        "seeds", int, [0, 1, 2], "seeds; every model trains once per seed", None, "+", at_least=0
    ),
    Option("epochs", int, 6, "passes over the 4000 training digits per run", at_least=1),
    Option("batch-size", int, 64, "batch size", at_least=1),
    Option("lr", _float, 3e-3, "AdamW learning rate", above=0),
    Option("weight-decay", _float, 1e-4, "AdamW weight decay", at_least=0),
    Option(
        "warmup-steps",
        int,
        50,
        "linear warm-up steps before the cosine decay" + WARMUP_NOTE,
        at_least=0,
    ),
    WIDTH,
    Option(
        "plain-long-factor",
        int,
        3,
        "also train the plain CNN this many times longer, a "
        "control with about the deformable models' training time (0: skip)",
        at_least=0,
    ),
    Option(
        "out-dir",
        str,
        "runs/demo",
        "folder for results.md, results.json, checkpoints",
        metavar="DIR",
    ),
    Option(
        "figure",
        str,
        None,
        "PNG of sampling locations (none: <out-dir>/sampling_locations.png)",
        metavar="PATH",
    ),
    Option("markdown", str, None, "report file (none: <out-dir>/results.md)", metavar="PATH"),
    LIMIT_TRAIN,
    LIMIT_TEST,
    Option(
        "jobs",
        int,
        0,
        "trainings run side by side in worker processes (0: one per core)",
        at_least=0,
    ),
    PROGRESS,
    Option(
        "threads",
        int,
        0,
        "CPU threads per training (0: 1 with several jobs, else all)",
        at_least=0,
    ),
)

COMMANDS: dict[str, tuple[str, tuple[Option, ...]]] = {
    "train": (
        "train a model preset (--model; the demo CNN) on distorted MNIST; for DDP run it under "
        "torchrun, e.g. "
        "`torchrun --nproc-per-node 2 -m torchdcn train ...` (gloo on CPU, nccl on GPU)",
        TRAIN_OPTIONS,
    ),
    "eval": ("evaluate a checkpoint on every test level", EVAL_OPTIONS),
    "demo": (
        "plain vs v1 vs v2 over several seeds: accuracy table and sampling figure",
        DEMO_OPTIONS,
    ),
}


def _key(name: str) -> str:
    return name.replace("-", "_")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Option values from a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file: a flat mapping.
    Raises :class:`UsageError` when it is missing, unreadable or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            with path.open("rb") as f:
                data = tomllib.load(f)
        elif suffix in (".yaml", ".yml"):
            import yaml

            with path.open() as f:
                data = yaml.safe_load(f)
        else:
            raise UsageError(f"config file {path} must end in .yaml, .yml or .toml")
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"config file {path} could not be parsed: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of option names to values")
    return data


_KIND = {int: int, _int_or_none: int, float: float, _float: float, _float_or_none: float}
"""The YAML/TOML scalar type each option type accepts besides text (``str``: text only)."""


def _scalar(opt: Option, value: Any) -> Any:
    """One config-file scalar converted as the command line would convert its text: text goes
    through the option's type; an integer field takes integers only (not ``true``, not ``1.7``,
    not ``2.0``: ``--epochs 2.0`` is refused too), a number field integers or floats."""
    if isinstance(value, str):
        return opt.type(value) if opt.type else value
    kind = _KIND.get(opt.type, str)  # type: ignore[call-overload]
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return opt.type(value)
    wanted = {int: "an integer", float: "a number", str: "text (quote it)"}[kind]
    raise ValueError(f"expected {wanted}, got {type(value).__name__}")


def _coerce(opt: Option, value: Any, source: str) -> Any:
    """A config-file value checked and converted like the command-line option would be."""
    try:
        if opt.flag:
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if opt.nargs in ("*", "+"):
            values = value if isinstance(value, list) else [value]
            if opt.nargs == "+" and not values:
                raise ValueError("expected at least one value")
            return [_scalar(opt, v) for v in values]
        if value is None:
            return None
        out = _scalar(opt, value)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{source}: bad value {value!r} for {opt.name}: {err}") from err
    if opt.choices is not None and out not in opt.converted_choices():
        raise UsageError(
            f"{source}: {opt.name} must be one of {', '.join(opt.choices)}, got {value!r}"
        )
    return out


def resolve_settings(command: str, args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, overridden by the config file, overridden by the flags given: ``{key: value}``
    with underscores in the keys."""
    options = {_key(o.name): o for o in COMMANDS[command][1]}
    settings = {k: o.default for k, o in options.items()}
    given = dict(vars(args))
    given.pop("command", None)
    config_path = given.pop("config", None)
    if config_path is not None:
        for raw_key, value in read_config_file(config_path).items():
            key = _key(str(raw_key))
            if key not in options:
                valid = ", ".join(sorted(o.name for o in options.values()))
                raise UsageError(
                    f"config file {config_path}: unknown option {raw_key!r} for "
                    f"'torchdcn {command}' (valid: {valid})"
                )
            settings[key] = _coerce(options[key], value, f"config file {config_path}")
    settings.update(given)
    for key, opt in options.items():
        error = opt.range_error(settings[key])
        if error:
            source = "" if key in given or config_path is None else f"config file {config_path}: "
            raise UsageError(source + error)
    return settings
