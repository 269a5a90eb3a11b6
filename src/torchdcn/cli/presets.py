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
        task: ``"classification"`` (distorted MNIST), ``"detection"`` (COCO-format data) or
            ``"segmentation"`` (COCO-format or VOC-layout data);
            the command line picks the data, evaluation and outputs by it.
        defaults: option values of this preset that replace the built-in defaults (a config
            file and flags still override them), e.g. SGD and a batch of 2 images.
        masks: the detection data must carry instance masks (``CocoDetection(masks=True)``)
            and the evaluation scores ``segm`` next to ``bbox`` (Mask R-CNN).
    """

    summary: str
    model_config: Callable[[dict[str, Any]], dict[str, Any]]
    build: Callable[..., Any]
    trainer_kwargs: Callable[[], dict[str, Any]] = field(default=lambda: {})
    task: str = "classification"
    defaults: dict[str, Any] = field(default_factory=dict)
    masks: bool = False


#: the tasks, and the preset ``--task`` alone picks
TASKS: dict[str, str] = {
    "classification": "mnist_cnn",
    "detection": "faster_rcnn",
    "segmentation": "deeplab",
}
#: default backbone of the detectors (``--backbone``)
DEFAULT_BACKBONE = "resnet50"


def _mnist_cnn_config(settings: dict[str, Any]) -> dict[str, Any]:
    from ..models.classification.mnist_cnn import MnistCNNConfig

    if settings.get("base_channels") is not None:
        raise ValueError("--base-channels applies to the detectors and deeplab; mnist_cnn: --width")
    config = {"deform": settings.get("deform"), "width": settings.get("width", 32)}
    try:
        MnistCNNConfig(**config)
    except ValueError as err:
        raise ValueError(f"--width {config['width']}: {err}") from err
    return config


def _mnist_cnn(**config: Any) -> Any:
    from ..models.classification.mnist_cnn import mnist_cnn

    return mnist_cnn(**config)


def _base_channels(settings: dict[str, Any], backbone: str) -> dict[str, Any]:
    """``{"base_channels": N}`` from ``--base-channels`` (``{}`` when not given: the model's
    default 64, and checkpoints of earlier versions keep their ``model_config``)."""
    from ..models.backbones.resnet import ARCHITECTURES, check_base_channels

    value = settings.get("base_channels")
    if value is None:
        return {}
    arch = ARCHITECTURES[backbone]
    try:
        check_base_channels(value, arch.block, arch.groups, arch.width_per_group)
    except ValueError as err:
        raise ValueError(f"--base-channels {value} with --backbone {backbone}: {err}") from err
    return {"base_channels": value}


def _backbone_training(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"frozen_bn": ..., "freeze_at": ...}`` from ``--backbone-norm`` and ``--freeze-at``,
    resolved against ``--pretrained-backbone`` (frozen BatchNorm and stages 1-2 with ImageNet
    weights, everything trained without them): ``train`` stores the resolved values, so ``eval``
    rebuilds the same network without the weights file."""
    from ..models.backbones.task_backbone import backbone_training

    norm, freeze_at = settings.get("backbone_norm"), settings.get("freeze_at")
    if norm not in (None, "frozen", "train"):
        raise ValueError(f"--backbone-norm must be frozen or train, got {norm!r}")
    frozen_bn = None if norm is None else norm == "frozen"
    try:
        frozen_bn, freeze_at = backbone_training(
            frozen_bn, freeze_at, bool(settings.get("pretrained_backbone"))
        )
    except ValueError as err:
        raise ValueError(f"--freeze-at {freeze_at}: {err}") from err
    return {"frozen_bn": frozen_bn, "freeze_at": freeze_at}


#: what the checkpoints of earlier versions, whose ``model_config`` has no ``frozen_bn`` and
#: ``freeze_at``, were built with (the builders' defaults then)
_LEGACY_BACKBONE_TRAINING = {"frozen_bn": True, "freeze_at": 2}
#: how rpn_detector checkpoints without ``rpn_feature`` (before 2026-12-02) were built: the RPN
#: on conv4, conv5 unused
_LEGACY_RPN_DETECTOR = {"rpn_feature": "conv4", "reduce_channels": None}


def _legacy_fill(model: object, stored: dict[str, Any]) -> dict[str, Any]:
    """The builder arguments a stored ``model_config`` of an earlier version lacks (the values
    it was built with then); ``{}`` for a current one."""
    fill: dict[str, Any] = {}
    if "frozen_bn" not in stored and "freeze_at" not in stored:
        fill.update(_LEGACY_BACKBONE_TRAINING)
    if model == "rpn_detector" and "rpn_feature" not in stored:
        fill.update(_LEGACY_RPN_DETECTOR)
    return fill


def legacy_backbone_config(
    model_config: dict[str, Any], checkpoint: Any, settings: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model_config, build extras)`` to resume ``checkpoint``: a run of an earlier version
    stored no ``frozen_bn`` / ``freeze_at`` and was built with them frozen (2), and an
    ``rpn_detector`` run no ``rpn_feature`` (its RPN read conv4); resuming builds it so again
    and keeps the stored config (which the checkpoint's fingerprint compares), unless the
    command gives ``--backbone-norm`` or ``--freeze-at`` (for those two). Any other run:
    unchanged."""
    from pathlib import Path

    from ..engine import load_checkpoint
    from ..engine.checkpoint import CheckpointError

    if not Path(checkpoint).is_file():
        return model_config, {}
    try:
        stored = (load_checkpoint(checkpoint).get("run_info") or {}).get("model_config") or {}
    except CheckpointError:
        return model_config, {}  # the trainer reports it
    fill = _legacy_fill(settings.get("model"), stored)
    if settings.get("backbone_norm") is not None or settings.get("freeze_at") is not None:
        fill = {k: v for k, v in fill.items() if k not in _LEGACY_BACKBONE_TRAINING}
    kept = {k: v for k, v in model_config.items() if k not in fill}
    return kept, fill


#: default weight of the feature-mimicking branch's classification loss (v2 section 3.3)
MIMIC_CLS_WEIGHT = 0.1


def _mimic(settings: dict[str, Any], allowed: bool) -> dict[str, Any]:
    """``{"mimic": {"rois": ..., "cls_weight": ...}}`` from ``--mimic`` and
    ``--mimic-cls-weight`` for faster_rcnn and mask_rcnn (``allowed``; the other presets refuse
    them); ``{}`` without ``--mimic``."""
    from ..models.detection.mimic import MIMIC_ROIS

    rois, weight = settings.get("mimic"), settings.get("mimic_cls_weight")
    if not allowed and (rois is not None or weight is not None):
        raise ValueError(
            "--mimic and --mimic-cls-weight apply to faster_rcnn and mask_rcnn (R-CNN feature "
            "mimicking, v2 section 3.3)"
        )
    if rois is None:
        if weight is not None:
            raise ValueError(f"--mimic-cls-weight needs --mimic ({'|'.join(MIMIC_ROIS)})")
        return {}
    if rois not in MIMIC_ROIS:
        raise ValueError(f"--mimic must be one of {', '.join(MIMIC_ROIS)}, got {rois!r}")
    weight = MIMIC_CLS_WEIGHT if weight is None else weight
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
        raise ValueError(f"--mimic-cls-weight must be a number >= 0, got {weight!r}")
    return {"mimic": {"rois": rois, "cls_weight": float(weight)}}


def _detector_config(
    settings: dict[str, Any], with_pooling: bool, mimic: bool = False
) -> dict[str, Any]:
    """The detector's keyword arguments from ``--backbone``, ``--deform``, ``--roi-pool``,
    ``--fpn``, ``--base-channels``, ``--freeze-at``, ``--backbone-norm`` (resolved against
    ``--pretrained-backbone``), ``--mimic`` and ``--mimic-cls-weight`` (refused unless
    ``mimic``: faster_rcnn and mask_rcnn) and ``num_classes`` (set from the data before
    building; absent when the settings are only checked). ``ValueError`` for a combination the
    model refuses."""
    from ..models.backbones.resnet import ARCHITECTURES
    from ..models.detection.poolers import POOLER_KINDS

    backbone = settings.get("backbone") or DEFAULT_BACKBONE
    if backbone not in ARCHITECTURES:
        raise ValueError(f"--backbone must be one of {', '.join(ARCHITECTURES)}, got {backbone!r}")
    config: dict[str, Any] = {"backbone": backbone, "deform": settings.get("deform")}
    config.update(_base_channels(settings, backbone))
    config.update(_backbone_training(settings))
    config.update(_mimic(settings, mimic))
    roi_pool, fpn = settings.get("roi_pool"), bool(settings.get("fpn", False))
    if settings.get("ps_pool") is not None:
        raise ValueError("--ps-pool applies to rfcn (position-sensitive RoI pooling)")
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


def _mask_rcnn(**config: Any) -> Any:
    from ..models.detection import mask_rcnn

    return mask_rcnn(**config)


def _rpn_detector_config(settings: dict[str, Any]) -> dict[str, Any]:
    """The detectors' keyword arguments and ``rpn_feature="conv5"`` (v1's class-aware RPN on
    conv5, stored so that checkpoints of the earlier conv4 layout are told apart)."""
    return {**_detector_config(settings, with_pooling=False), "rpn_feature": "conv5"}


def _rpn_detector(**config: Any) -> Any:
    from ..models.detection import rpn_detector

    return rpn_detector(**config)


def _rfcn_config(settings: dict[str, Any]) -> dict[str, Any]:
    """R-FCN's keyword arguments: the detectors' (``--backbone``, ``--deform``, ``num_classes``)
    and ``--ps-pool`` (``ps``, ``ps_align`` or ``deform``; none: ``ps``)."""
    from ..models.detection.ps_head import PS_POOL_KINDS

    if settings.get("roi_pool") is not None or settings.get("fpn"):
        raise ValueError(
            "--roi-pool and --fpn apply to faster_rcnn; rfcn pools position-sensitive score maps "
            f"(--ps-pool {'|'.join(PS_POOL_KINDS)})"
        )
    ps_pool = settings.get("ps_pool") or "ps"
    if ps_pool not in PS_POOL_KINDS:
        raise ValueError(f"--ps-pool must be one of {', '.join(PS_POOL_KINDS)}, got {ps_pool!r}")
    others = {k: v for k, v in settings.items() if k != "ps_pool"}
    return {**_detector_config(others, with_pooling=False), "ps_pool": ps_pool}


def _rfcn(**config: Any) -> Any:
    from ..models.detection import rfcn

    return rfcn(**config)


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


def _deeplab_config(settings: dict[str, Any]) -> dict[str, Any]:
    """DeepLab's keyword arguments from ``--backbone``, ``--deform``, ``--output-stride``,
    ``--head``, ``--base-channels``, ``--freeze-at``, ``--backbone-norm`` and ``num_classes`` (set
    from the data before building)."""
    from ..models.backbones.resnet import ARCHITECTURES
    from ..models.segmentation import HEADS

    if settings.get("roi_pool") is not None or settings.get("fpn"):
        raise ValueError("--roi-pool and --fpn apply to faster_rcnn, not to deeplab")
    backbone = settings.get("backbone") or DEFAULT_BACKBONE
    if backbone not in ARCHITECTURES:
        raise ValueError(f"--backbone must be one of {', '.join(ARCHITECTURES)}, got {backbone!r}")
    output_stride = settings.get("output_stride") or 16
    if output_stride not in (8, 16):
        raise ValueError(f"--output-stride must be 16 or 8, got {output_stride}")
    head = settings.get("head") or "deeplab"
    if head not in HEADS:
        raise ValueError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
    _mimic(settings, allowed=False)
    config: dict[str, Any] = {
        "backbone": backbone,
        "deform": settings.get("deform"),
        "output_stride": output_stride,
        "head": head,
        **_base_channels(settings, backbone),
        **_backbone_training(settings),
    }
    num_classes = settings.get("num_classes")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        config["num_classes"] = num_classes
    return config


def _deeplab(**config: Any) -> Any:
    from ..models.segmentation import deeplab

    return deeplab(**config)


#: what DeepLab trains with unless told otherwise: the v1 paper's VOC images (shorter side 360)
#: and step schedule (lr 1e-3, x0.1 after 2/3 of the run), SGD, 2 images per batch
SEGMENTATION_DEFAULTS: dict[str, Any] = {
    "batch_size": 2,
    "optimizer": "sgd",
    "lr": 0.001,
    "weight_decay": 5e-4,
    "schedule": "step",
    "milestones": [8.0],
    "epochs": 12,
    "warmup_steps": 100,
    "clip_grad_norm": 10.0,
    "min_size": 360,
    "max_size": 600,
}


def _detector(summary: str, model_config: Callable, build: Callable, **extra: Any) -> ModelPreset:
    """A detection preset: list-of-images batches, the model's own losses, the detector defaults."""
    return ModelPreset(
        summary=summary,
        model_config=model_config,
        build=build,
        trainer_kwargs=_detection_kwargs,
        task="detection",
        defaults=DETECTION_DEFAULTS,
        **extra,
    )


#: every preset, by the name ``--model`` takes
MODELS: dict[str, ModelPreset] = {
    "mnist_cnn": ModelPreset(
        summary="the demo CNN: stem, three 3x3 body layers (plain, v1 or v2), linear classifier",
        model_config=_mnist_cnn_config,
        build=_mnist_cnn,
    ),
    "faster_rcnn": _detector(
        "Faster R-CNN (papers' layout: RPN on conv4, RoI head on conv5; --fpn for FPN)",
        lambda s: _detector_config(s, with_pooling=True, mimic=True),
        _faster_rcnn,
    ),
    "mask_rcnn": _detector(
        "Mask R-CNN (Faster R-CNN + 14x14 -> 28x28 mask head; v2: mdeform poolings)",
        lambda s: _detector_config(s, with_pooling=True, mimic=True),
        _mask_rcnn,
        masks=True,
    ),
    "rpn_detector": _detector(
        "class-aware RPN used as a detector on its own (v1 paper, section 2.3), on conv5",
        _rpn_detector_config,
        _rpn_detector,
    ),
    "rfcn": _detector(
        "R-FCN (v1 paper: PS score maps on conv5, --ps-pool ps or deform; RPN on conv4)",
        _rfcn_config,
        _rfcn,
    ),
    "deeplab": ModelPreset(
        summary="DeepLab (v1 paper): dilated ResNet at stride 16 or 8, 1x1 head or ASPP, "
        "per-pixel classifier, bilinear upsampling",
        model_config=_deeplab_config,
        build=_deeplab,
        trainer_kwargs=_detection_kwargs,
        task="segmentation",
        defaults=SEGMENTATION_DEFAULTS,
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
    config = dict(info["model_config"])
    if preset.task != "classification":
        config = {**_legacy_fill(info.get("model"), config), **config}
    model = preset.build(**config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model: {err}") from err
    return model, preset, info
