"""The digit-scenes recipe: one small detector or segmenter, the papers' training structure.

The DCN papers never train from scratch: they take an ImageNet-pretrained ResNet, turn some of its
3x3 convs into deformable ones whose offset predictors start at zero (so the network starts as the
pretrained one), and fine-tune for a long schedule. :class:`SceneRecipe` reproduces that at a
size a 2-core CPU trains in minutes on :mod:`torchdcn.data.digit_scenes`:

1. :func:`~.scene_pretrain.pretrain_trunk`: the ResNet trunk (``backbone`` at ``base_channels``,
   output stride 16 as in the detectors) learns to classify the training digits drawn at the
   training geometry (the "ImageNet" stage; cached per seed);
2. :func:`build_scene_model`: the task preset (Faster R-CNN, Mask R-CNN, R-FCN, class-aware RPN,
   DeepLab) at that width with ``deform`` / ``roi_pool`` chosen, its backbone loaded from the
   trunk (the deformable layers' offset predictors stay zero), frozen BatchNorm;
3. :func:`~.scene_train.train_scene_model`: fine-tuning for ``steps`` steps (AdamW by default;
   the papers' SGD, ``optimizer="sgd"``, lost on the validation splits: docs/ablations.md),
   linear warm-up then cosine decay, the offset predictors at ``offset_lr_mult`` times the rate
   after their own warm-up of ``offset_warmup_steps`` steps at rate 0.

Everything here is an ordinary use of the public models and data classes: no special path in
any model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from torch import nn

#: the task presets a recipe can build
SCENE_MODELS = ("faster_rcnn", "mask_rcnn", "rfcn", "rpn_detector", "deeplab")
#: COCO size buckets re-drawn for digit scenes (mask pixel areas): "small" is below the
#: training heights (held-out 9-13 px digits), "large" above them (held-out 52-64 px digits)
SCENE_AREA_RANGES = (8.0**2, 24.0**2)
#: digit categories of the scenes
NUM_DIGITS = 10


@dataclass(frozen=True)
class SceneRecipe:
    """One model and its training on digit scenes (defaults: the settings the tables use).

    Attributes:
        model: a name of :data:`SCENE_MODELS`.
        deform: the preset's ``deform``: ``None``, ``"v1"``, ``"v2"`` or ``{"stages": [...],
            "last_n": n, "modulated": bool}`` (a :class:`~torchdcn.models.DeformConfig`'s fields;
            a list of such dicts for several).
        roi_pool: Faster / Mask R-CNN RoI pooling (``None``: the preset's choice).
        ps_pool: R-FCN pooling (``"ps"``, ``"ps_align"``, ``"deform"``).
        mimic: Faster / Mask R-CNN feature mimicking: ``False`` or MimicBranch options.
        backbone, base_channels: the ResNet and its width (16: stages of 16-128 channels).
        pretrain_steps: steps of trunk pretraining (0: train from scratch, trainable BN).
        steps, batch_size, optimizer, lr, momentum, weight_decay, warmup_steps: fine-tuning
            (``"sgd"`` with momentum or ``"adamw"``; linear warm-up, cosine decay to 0).
        offset_lr_mult: rate multiplier of every offset predictor (``None``: the layers' own
            defaults, 1.0 for v1 and 0.1 for v2).
        offset_warmup_steps: the offset predictors stay frozen for these first steps.
        compensate_masks: double the pretrained weights of modulated layers, so the v2 network
            starts as the trunk (its masks start at 0.5; :func:`~.scene_pretrain.load_trunk`).
        freeze_at: backbone stages that do not train (1: the stem).
        representation_size: width of the 2fc head and of the deformable RoI offset branch.
        sampled_rois: RoIs sampled per image for the box head.
        mimic_patch, mimic_rois: side of the mimicking patches and RoIs mimicked per image (the
            paper's 224 px and 32 on 1000 x 600 images crop about 2.7x the image's pixels; 64
            px and 8 on 128 x 128 scenes crop 2x).
    """

    model: str = "faster_rcnn"
    deform: Any = None
    roi_pool: str | None = None
    ps_pool: str | None = None
    mimic: Any = False
    backbone: str = "resnet18"
    base_channels: int = 16
    pretrain_steps: int = 1500
    steps: int = 800
    batch_size: int = 4
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    offset_lr_mult: float | None = None
    offset_warmup_steps: int = 0
    compensate_masks: bool = True
    freeze_at: int = 1
    representation_size: int = 256
    sampled_rois: int = 64
    mimic_patch: int = 64
    mimic_rois: int = 8
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model not in SCENE_MODELS:
            raise ValueError(f"model must be one of {SCENE_MODELS}, got {self.model!r}")
        for name in ("base_channels", "batch_size", "steps", "representation_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("pretrain_steps", "warmup_steps", "offset_warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.offset_lr_mult is not None and self.offset_lr_mult < 0:
            raise ValueError(f"offset_lr_mult must be None or >= 0, got {self.offset_lr_mult}")

    def replace(self, **changes: Any) -> SceneRecipe:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def trunk_key(self) -> str:
        """What the pretrained trunk depends on (its cache file name)."""
        key = {"backbone": self.backbone, "base_channels": self.base_channels}
        key["pretrain_steps"] = self.pretrain_steps
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def _deform(spec: Any) -> Any:
    """The preset's ``deform`` from the recipe's JSON-able spec."""
    from ..models.backbones.deform_config import DeformConfig

    if spec is None or isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        return DeformConfig(**{k: tuple(v) if k == "stages" else v for k, v in spec.items()})
    return tuple(_deform(s) for s in spec)


def build_scene_model(recipe: SceneRecipe) -> nn.Module:
    """The recipe's model with freshly initialised weights (no trunk loaded yet)."""
    from ..models.detection import faster_rcnn, mask_rcnn, rfcn, rpn_detector
    from ..models.detection.sampler import BalancedSampler
    from ..models.segmentation import deeplab

    deform = _deform(recipe.deform)
    pretrained = recipe.pretrain_steps > 0
    common: dict[str, Any] = {
        "num_classes": NUM_DIGITS,
        "frozen_bn": pretrained,
        "freeze_at": recipe.freeze_at if pretrained else 0,
        "base_channels": recipe.base_channels,
    }
    if recipe.model == "deeplab":
        return deeplab(recipe.backbone, deform=deform, **common, **recipe.extra)
    common["anchor_sizes"] = (8, 16, 32, 64, 128)
    rpn_kwargs = {
        "pre_nms_top_n": {"training": 600, "testing": 300},
        "post_nms_top_n": {"training": 300, "testing": 100},
    }
    if recipe.model == "rpn_detector":  # on conv5 reduced as Faster R-CNN's RoI head reads it
        return rpn_detector(
            recipe.backbone, deform=deform, reduce_channels=8 * recipe.base_channels, **common,
            **recipe.extra,
        )  # fmt: skip
    sampler = BalancedSampler(recipe.sampled_rois, 0.25)
    if recipe.model == "rfcn":
        return rfcn(
            recipe.backbone, deform=deform, ps_pool=recipe.ps_pool or "ps", **common,
            rpn_kwargs=rpn_kwargs, **recipe.extra,
        )  # fmt: skip
    mimic = recipe.mimic
    if mimic is not False:
        mimic = {
            "patch_size": recipe.mimic_patch,
            "rois_per_image": recipe.mimic_rois,
            **({} if mimic is True else dict(mimic)),
        }
    build = mask_rcnn if recipe.model == "mask_rcnn" else faster_rcnn
    return build(
        recipe.backbone,
        deform=deform,
        roi_pool=recipe.roi_pool,
        reduce_channels=8 * recipe.base_channels,
        representation_size=recipe.representation_size,
        deform_hidden=recipe.representation_size,
        rpn_kwargs=rpn_kwargs,
        roi_heads_kwargs={"sampler": sampler},
        mimic=mimic,
        **common,
        **recipe.extra,
    )
