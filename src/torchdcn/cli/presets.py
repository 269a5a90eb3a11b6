"""Named model presets of the command line: ``torchdcn train --model NAME``.

Each entry of :data:`MODELS` says how to build a model from the command's settings and how the
training loop handles its task. ``train`` stores the preset's name and its ``model_config`` in
the checkpoint (``run_info``), and ``eval`` rebuilds the model from them, so adding a model to
the command line is adding an entry here, e.g. a detector with
``trainer_kwargs=lambda: {"compute_losses": model_losses, "collate_fn": list_collate, ...}``;
the training loop does not change.

Everything heavy is imported inside the functions: ``torchdcn --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelPreset:
    """How the command line makes one kind of model.

    Attributes:
        summary: one line for ``--help``.
        model_config: settings (the command's ``{option: value}``) -> the JSON-able keyword
            arguments of ``build``; raises ``ValueError`` for values the model refuses (checked
            before any data is read).
        build: ``build(**model_config) -> nn.Module``.
        trainer_kwargs: ``() -> {...}``: what :class:`~torchdcn.engine.Trainer` needs besides
            the defaults for this task (``compute_losses``, ``evaluator``, ``collate_fn``);
            ``{}`` for a classifier of ``(image, label)`` batches.
    """

    summary: str
    model_config: Callable[[dict[str, Any]], dict[str, Any]]
    build: Callable[..., Any]
    trainer_kwargs: Callable[[], dict[str, Any]] = field(default=lambda: {})


def _mnist_cnn_config(settings: dict[str, Any]) -> dict[str, Any]:
    from ..models.classification.mnist_cnn import MnistCNNConfig

    config = {"deform": settings.get("deform"), "width": settings.get("width", 32)}
    try:
        MnistCNNConfig(**config)
    except ValueError as err:
        raise ValueError(f"--width {config['width']}: {err}") from err
    return config


def _mnist_cnn(**config: Any) -> Any:
    from ..models.classification.mnist_cnn import mnist_cnn

    return mnist_cnn(**config)


#: every preset, by the name ``--model`` takes
MODELS: dict[str, ModelPreset] = {
    "mnist_cnn": ModelPreset(
        summary="the demo CNN: stem, three 3x3 body layers (plain, v1 or v2), linear classifier",
        model_config=_mnist_cnn_config,
        build=_mnist_cnn,
    ),
}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; ``ValueError`` listing the choices for any other name."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}"
        ) from None
