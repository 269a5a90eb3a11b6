"""Named model presets of the command line: ``torchdcn train --model NAME``.

Each entry of :data:`MODELS` says how to build a model from the command's settings and how the
training loop handles its task. ``train`` stores the preset's name and its ``model_config`` in
the checkpoint (``run_info``), and ``eval`` rebuilds the model from them, so adding a model to
the command line is adding an entry here (the detectors: ``task="detection"`` and
``trainer_kwargs=lambda: {"compute_losses": model_losses, "collate_fn": list_collate}``); the
training loop does not change.

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
        task: ``"classification"`` (distorted MNIST) or ``"detection"`` (COCO-format data);
            the command line picks the data, evaluation and outputs by it.
        defaults: option values of this preset that replace the built-in defaults (a config
            file and flags still override them), e.g. SGD and a batch of 2 images.
    """

    summary: str
    model_config: Callable[[dict[str, Any]], dict[str, Any]]
    build: Callable[..., Any]
    trainer_kwargs: Callable[[], dict[str, Any]] = field(default=lambda: {})
    task: str = "classification"
    defaults: dict[str, Any] = field(default_factory=dict)


#: the tasks, and the preset ``--task`` alone picks
TASKS: dict[str, str] = {"classification": "mnist_cnn", "detection": "faster_rcnn"}
#: default backbone of the detectors (``--backbone``)
DEFAULT_BACKBONE = "resnet50"


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


def _detector_config(settings: dict[str, Any], with_pooling: bool) -> dict[str, Any]:
    """The detector's keyword arguments from ``--backbone``, ``--deform``, ``--roi-pool``,
    ``--fpn`` and ``num_classes`` (set from the data before building; absent when the settings
    are only checked). ``ValueError`` for a combination the model refuses."""
    from ..models.backbones.resnet import ARCHITECTURES
    from ..models.detection.poolers import POOLER_KINDS

    backbone = settings.get("backbone") or DEFAULT_BACKBONE
    if backbone not in ARCHITECTURES:
        raise ValueError(f"--backbone must be one of {', '.join(ARCHITECTURES)}, got {backbone!r}")
    config: dict[str, Any] = {"backbone": backbone, "deform": settings.get("deform")}
    roi_pool, fpn = settings.get("roi_pool"), bool(settings.get("fpn", False))
    if with_pooling:
        if roi_pool is not None and roi_pool not in POOLER_KINDS:
            raise ValueError(
                f"--roi-pool must be one of {', '.join(POOLER_KINDS)}, got {roi_pool!r}"
            )
        config.update(roi_pool=roi_pool, fpn=fpn)
    elif roi_pool is not None or fpn:
        raise ValueError(
            "--roi-pool and --fpn apply to faster_rcnn; rpn_detector has no RoI head and no neck"
        )
    num_classes = settings.get("num_classes")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        config["num_classes"] = num_classes
    return config


def _faster_rcnn(**config: Any) -> Any:
    from ..models.detection import faster_rcnn

    return faster_rcnn(**config)


def _rpn_detector(**config: Any) -> Any:
    from ..models.detection import rpn_detector

    return rpn_detector(**config)


#: what the detectors train with unless told otherwise (SGD as in Detectron, a small batch)
DETECTION_DEFAULTS: dict[str, Any] = {
    "batch_size": 2,
    "optimizer": "sgd",
    "lr": 0.0025,  # 0.02 for 16 images (Detectron), scaled linearly to 2
    "weight_decay": 1e-4,
    "schedule": "step",
    "milestones": [8.0, 11.0],
    "epochs": 12,
    "warmup_steps": 100,
    "clip_grad_norm": 10.0,
}


def _detection_kwargs() -> dict[str, Any]:
    from ..data.collate import list_collate
    from ..engine.losses import model_losses

    return {"compute_losses": model_losses, "collate_fn": list_collate}


#: every preset, by the name ``--model`` takes
MODELS: dict[str, ModelPreset] = {
    "mnist_cnn": ModelPreset(
        summary="the demo CNN: stem, three 3x3 body layers (plain, v1 or v2), linear classifier",
        model_config=_mnist_cnn_config,
        build=_mnist_cnn,
    ),
    "faster_rcnn": ModelPreset(
        summary="Faster R-CNN (papers' layout: RPN on conv4, RoI head on conv5; --fpn for FPN)",
        model_config=lambda s: _detector_config(s, with_pooling=True),
        build=_faster_rcnn,
        trainer_kwargs=_detection_kwargs,
        task="detection",
        defaults=DETECTION_DEFAULTS,
    ),
    "rpn_detector": ModelPreset(
        summary="class-aware RPN used as a detector on its own (v1 paper, section 2.3)",
        model_config=lambda s: _detector_config(s, with_pooling=False),
        build=_rpn_detector,
        trainer_kwargs=_detection_kwargs,
        task="detection",
        defaults=DETECTION_DEFAULTS,
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


def model_from_checkpoint(
    path: str, purpose: str = "to evaluate"
) -> tuple[Any, ModelPreset, dict[str, Any]]:
    """``(model, preset, run_info)`` rebuilt from a checkpoint of ``torchdcn train`` / ``demo``
    (weights loaded, on the CPU, train mode as built); ``CheckpointError`` for an unreadable
    file, a model that is not a preset, or weights that do not fit."""
    from ..engine import load_checkpoint
    from ..engine.checkpoint import CheckpointError

    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"cannot load the checkpoint {purpose}: {err}") from err
    info = state.get("run_info") or {}
    preset = MODELS.get(info.get("model"))  # type: ignore[arg-type]
    if preset is None:
        raise CheckpointError(
            f"{path} holds model {info.get('model')!r}; the command line reads checkpoints of "
            f"the presets {', '.join(sorted(MODELS))} written by 'torchdcn train' or "
            "'torchdcn demo'"
        )
    model = preset.build(**info["model_config"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model: {err}") from err
    return model, preset, info
