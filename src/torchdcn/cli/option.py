"""One row of a command's option table (:class:`Option`), the value types the rows use, and
:class:`UsageError` (exit code 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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
    at_most: float | None = None  # largest allowed value
    below: float | None = None  # the value must be smaller than this
    positional: bool = False  # an argument without a -- flag (config key: its name)

    def shown_metavar(self) -> str:
        """What the help shows as the value: the choices, ``metavar``, or N / X / TEXT."""
        if self.choices:
            return "{" + ",".join(self.choices) + "}"
        if self.metavar:
            return self.metavar
        kind = _KIND.get(self.type, self.type)  # type: ignore[call-overload]
        return {int: "N", float: "X"}.get(kind, "TEXT")  # type: ignore[call-overload]

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
            if self.at_most is not None and v > self.at_most:
                return f"--{self.name} must be <= {self.at_most:g}, got {v}"
            if self.below is not None and not v < self.below:
                return f"--{self.name} must be < {self.below:g}, got {v}"
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


_KIND = {int: int, _int_or_none: int, float: float, _float: float, _float_or_none: float}
"""The YAML/TOML scalar type each option type accepts besides text (``str``: text only)."""
