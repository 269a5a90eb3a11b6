"""Start a new run from the weights of another (detectron2's ``MODEL.WEIGHTS``, mmdet's
``load_from``): the whole model, backbone, RPN and heads, from a torchdcn training checkpoint or
a plain ``state_dict`` file, without its optimizer, schedule or step.

Strict by default: a key the model has and the file lacks, a key the file has and the model
lacks, or a tensor of another shape is an error listing them all, and the model is left as it
was. Non-strict loading takes every tensor that fits and reports the rest (fine-tuning on another
number of classes: the class-specific layers keep their initialisation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import FORMAT, CheckpointError, load_checkpoint

__all__ = ["InitReport", "load_model_weights", "read_model_weights"]

#: how many keys of each kind an error message lists before "... and N more"
_SHOWN = 8


@dataclass
class InitReport:
    """What :func:`load_model_weights` did.

    Attributes:
        path: the file read.
        loaded: number of tensors copied into the model.
        missing: model keys the file lacks (they keep their initialisation).
        unexpected: file keys the model lacks (ignored).
        mismatched: ``{key: (shape in the file, shape in the model)}`` (not loaded).
    """

    path: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every model tensor came from the file and every file tensor went into the model."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """The missing, unexpected and mismatched keys, a few of each, in one line."""
        parts = []
        kinds = (("missing from the file", self.missing), ("not in the model", self.unexpected))
        for what, keys in kinds:
            if keys:
                parts.append(f"{len(keys)} {what}: {_listed(keys)}")
        if self.mismatched:
            shapes = [f"{k} {list(a)} vs {list(b)}" for k, (a, b) in self.mismatched.items()]
            parts.append(f"{len(shapes)} of another shape (file vs model): {_listed(shapes)}")
        return "; ".join(parts) or "every tensor loaded"


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def read_model_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """The model weights in ``path``: a torchdcn training checkpoint's ``model`` (its checksum
    verified), a plain ``state_dict``, or one under a ``"model"`` or ``"state_dict"`` key (as
    detectron2 and mmdet save them). A ``module.`` prefix on every key (a ``DataParallel`` or
    DDP model saved whole) is dropped. Raises :class:`~.checkpoint.CheckpointError` for a
    missing or unreadable file or one without model weights."""
    path = Path(path)
    if path.is_dir() or not path.is_file():
        kind = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"weights file {path} {kind}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise CheckpointError(
            f"weights file {path} is unreadable (truncated, corrupt, or not a torch.save file?): "
            f"{type(err).__name__}"
        ) from err
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = load_checkpoint(path)  # verifies the checksum
    weights = (
        next(
            (o for o in (obj, *(obj.get(k) for k in ("model", "state_dict"))) if _is_state_dict(o)),
            None,
        )
        if isinstance(obj, dict)
        else None
    )
    if weights is None:
        raise CheckpointError(
            f"weights file {path} holds no model weights: expected a state_dict (names to "
            "tensors), a torchdcn checkpoint, or a dict with one under 'model' or 'state_dict'"
        )
    if all(k.startswith("module.") for k in weights):
        weights = {k[len("module.") :]: v for k, v in weights.items()}
    return weights


def load_model_weights(
    model: nn.Module, path: str | os.PathLike, strict: bool = True
) -> InitReport:
    """Copy the weights of ``path`` (:func:`read_model_weights`) into ``model``.

    Args:
        model: the freshly built model (the same architecture for a strict load).
        path: a torchdcn checkpoint or a ``state_dict`` file.
        strict: refuse a file whose keys or shapes differ from the model's (the model is left
            unchanged); ``False``: load the tensors that fit and report the rest.

    Returns:
        An :class:`InitReport`. Raises :class:`~.checkpoint.CheckpointError` when ``strict`` and
        the file does not fit, naming every missing, unexpected and mismatched key.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    weights = read_model_weights(path)
    own = model.state_dict()
    mismatched = {
        k: (tuple(v.shape), tuple(own[k].shape))
        for k, v in weights.items()
        if k in own and v.shape != own[k].shape
    }
    fitting = {k: v for k, v in weights.items() if k not in mismatched}
    before = {k: v.detach().clone() for k, v in own.items()} if strict else None
    result = model.load_state_dict(fitting, strict=False)
    report = InitReport(
        path=str(path),
        loaded=len(fitting) - len(result.unexpected_keys),
        missing=[k for k in result.missing_keys if k not in mismatched],
        unexpected=list(result.unexpected_keys),
        mismatched=mismatched,
    )
    if strict and not report.complete:
        model.load_state_dict(before)  # type: ignore[arg-type]
        raise CheckpointError(
            f"the weights of {path} do not fit this model: {report.describe()} (the model was "
            "left unchanged; strict=False loads what fits)"
        )
    return report
