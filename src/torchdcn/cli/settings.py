"""How a config file and the flags combine into a command's settings.

Precedence: built-in defaults (:mod:`.options`) < the model preset's defaults
(:attr:`~.presets.ModelPreset.defaults`, ``train`` only) < config file < flags. A key in a
YAML/TOML file is checked and converted exactly as the flag would be. ``train``'s optimizer and
schedule options are checked and a preset's milestones scaled in :mod:`.schedule_options`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .option import _KIND, Option, UsageError
from .options import CLASSIFICATION_ONLY, COMMANDS, DETECTION_ONLY, SEGMENTATION_ONLY
from .presets import MODELS, TASKS
from .schedule_options import check_applicable, scale_preset_milestones


def _key(name: str) -> str:
    return name.replace("-", "_")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Option values from a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file: a flat mapping.
    Raises :class:`UsageError` when it is missing, unreadable or not a mapping."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"config file {path} is a folder, not a YAML or TOML file")
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
    """Defaults, overridden by the model preset's defaults (``train``), by the config file and by
    the flags given: ``{key: value}`` with underscores in the keys."""
    options = {_key(o.name): o for o in COMMANDS[command][1]}
    settings = {k: o.default for k, o in options.items()}
    given = dict(vars(args))
    given.pop("command", None)
    config_path = given.pop("config", None)
    from_file: dict[str, Any] = {}
    if config_path is not None:
        for raw_key, value in read_config_file(config_path).items():
            key = _key(str(raw_key))
            if key not in options:
                valid = ", ".join(sorted(o.name for o in options.values()))
                raise UsageError(
                    f"config file {config_path}: unknown option {raw_key!r} for "
                    f"'torchdcn {command}' (valid: {valid})"
                )
            from_file[key] = _coerce(options[key], value, f"config file {config_path}")
    explicit = {**from_file, **given}
    preset_defaults = _preset_defaults(explicit) if command == "train" else {}
    settings.update(preset_defaults)
    settings.update(explicit)
    for key, opt in options.items():
        error = opt.range_error(settings[key])
        if error:
            source = "" if key in given or config_path is None else f"config file {config_path}: "
            raise UsageError(source + error)
    if command == "train":
        _check_model_options(settings, explicit)
        check_applicable(settings, explicit)
        scale_preset_milestones(settings, preset_defaults, explicit)
    return settings


def _preset_defaults(explicit: dict[str, Any]) -> dict[str, Any]:
    """The model (``--model``, or the one ``--task`` picks) and its preset's defaults."""
    task, model = explicit.get("task"), explicit.get("model")
    if model is None:
        model = TASKS[task] if task is not None else "mnist_cnn"
    preset = MODELS.get(model)
    if preset is None:  # an unknown name from a config file is refused by its choices already
        return {"model": model}
    if task is not None and task != preset.task:
        raise UsageError(
            f"--task {task} does not fit --model {model} (a {preset.task} model); leave out "
            "--task, it follows from the model"
        )
    return {"model": model, "task": preset.task, **preset.defaults}


def _check_model_options(settings: dict[str, Any], explicit: dict[str, Any]) -> None:
    """Options given for the other kind of model are refused (rather than silently unused)."""
    task = MODELS[settings["model"]].task
    unused = {
        "classification": DETECTION_ONLY + SEGMENTATION_ONLY,
        "detection": CLASSIFICATION_ONLY + SEGMENTATION_ONLY,
        "segmentation": CLASSIFICATION_ONLY,  # segmenters read the detectors' data options
    }[task]
    wrong = [f"--{name}" for name in unused if _key(name) in explicit]
    if wrong:
        if task == "classification":
            kind = "detectors or segmenters"
        elif task == "segmentation":
            kind = "the classifier (mnist_cnn)"
        else:  # a detector given the classifier's or DeepLab's options
            owners = {
                "the classifier (mnist_cnn)": CLASSIFICATION_ONLY,
                "deeplab": SEGMENTATION_ONLY,
            }
            kind = " or ".join(
                k for k, names in owners.items() if {_key(n) for n in names} & set(explicit)
            )
        raise UsageError(
            f"{', '.join(wrong)} {'only applies' if len(wrong) == 1 else 'only apply'} to "
            f"{kind}, not to --model {settings['model']}"
        )
