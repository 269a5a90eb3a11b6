"""Load a torchvision- or timm-format ResNet checkpoint from disk into a (deformable) model.

torchvision and timm ResNets name their tensors the same way (``conv1.weight``,
``bn1.running_mean``, ``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight``, ``fc.bias``), and
so does :class:`torchdcn.models.ResNet`, whose deformable convs keep their weight at the plain
conv's key.
The offset predictors (``*.conv_offset.*``) are not in such checkpoints and keep their values, zero
in a fresh model, so the loaded network first computes what the pretrained plain one computes
(v1; v2 layers start at half, SPEC section 3). Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoint_sources import convert_state_dict
from .detectron2_weights import read_pickled_arrays

OFFSET_KEY = ".conv_offset."
_WRAPPER_KEYS = ("state_dict", "model")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, key by key (state-dict keys of the model)."""

    loaded: list[str] = field(default_factory=list)
    offsets_kept: list[str] = field(default_factory=list)
    """Offset-predictor tensors absent from the checkpoint, left as they were."""
    skipped_head: list[str] = field(default_factory=list)
    """Classifier tensors (``fc.*``) of the checkpoint, dropped because the model has no ``fc``."""
    backbone_prefix: str = ""
    """The prefix removed from a detector checkpoint's backbone keys (``"backbone."``,
    ``"backbone.body."``), or ``""``."""
    skipped_detector: list[str] = field(default_factory=list)
    """Checkpoint tensors outside the backbone of a detector checkpoint (``neck.*``,
    ``rpn_head.*``, ``roi_head.*``, ...), not loaded (original keys)."""
    missing: list[str] = field(default_factory=list)
    """Model tensors the checkpoint lacks (offset predictors and step counters aside)."""
    unexpected: list[str] = field(default_factory=list)
    """Checkpoint tensors the model has no place for."""
    mismatched: list[str] = field(default_factory=list)
    """``"key: checkpoint shape vs model shape"`` for tensors present in both with other shapes."""

    @property
    def ok(self) -> bool:
        """Whether every tensor of the model found its match and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.offsets_kept:
            lines.append(
                f"{len(self.offsets_kept)} offset-predictor tensors are not in the checkpoint and "
                f"kept their values (zero in a fresh model)"
            )
        if self.skipped_head:
            lines.append(f"skipped the classifier (the model has none): {self.skipped_head}")
        if self.backbone_prefix:
            lines.append(f"took the backbone of a detector checkpoint ({self.backbone_prefix}*)")
        if self.skipped_detector:
            heads = sorted({k.split(".", 1)[0] for k in self.skipped_detector})
            lines.append(
                f"skipped {len(self.skipped_detector)} tensors outside the backbone "
                f"({', '.join(f'{h}.*' for h in heads)})"
            )
        for title, keys in (
            ("missing from the checkpoint", self.missing),
            ("unexpected in the checkpoint", self.unexpected),
            ("shape mismatch", self.mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:8]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 8 else ""
                )
                lines.append(f"{title}: {shown}")
        return "; ".join(lines)


def load_pretrained(
    model: nn.Module, path: str | os.PathLike[str], strict: bool = True, source: str = "torchdcn"
) -> LoadReport:
    """Copy the tensors of a ResNet checkpoint file into ``model`` (in place); never downloads.

    Args:
        model: a :class:`~torchdcn.models.ResNet` (plain or deformable, with or without ``fc``),
            or any module whose state-dict keys follow the checkpoint's.
        path: a file written by ``torch.save`` holding a state dict, or a dict with the state
            dict under ``"state_dict"`` or ``"model"`` (training checkpoints); a ``module.``
            prefix (``DataParallel``) is removed. A ``.safetensors`` file (timm's hub format)
            is read too. A detector checkpoint (mmdetection's ``backbone.*``, torchvision's
            detection models' ``backbone.body.*``, either under ``module.`` too) gives its
            backbone: the prefix is removed and the other tensors (``neck.*``, ``rpn_head.*``,
            ``roi_head.*``, ``backbone.fpn.*``...) are skipped and listed in the report, unless
            ``model`` itself has keys with that prefix.
        strict: raise if any tensor of the model (other than offset predictors) is missing from
            the checkpoint, any tensor of the checkpoint has no place in the model, or shapes
            differ; the model is left untouched then. With ``strict=False`` whatever matches is
            loaded and the rest is only reported.
        source: the toolkit whose key layout the file has (see
            :mod:`~torchdcn.models.backbones.checkpoint_sources`): ``"torchdcn"``,
            ``"torchvision"`` or ``"timm"`` (the same keys); ``"mmdet"`` (mmdetection / mmcv,
            ``ResNet`` with ``dcn=``/``stage_with_dcn``); ``"detectron2"`` (``res2``-``res5``,
            ``conv2_offset``, a ``.pth`` or a model-zoo ``.pkl``). Their DCN offsets and masks
            load unchanged (same channel layout, SPEC section 1). Build ``model`` with the
            checkpoint's deformable layers (:func:`deform_from_checkpoint`), and, for
            stride-in-1x1 weights (detectron2's default, mmdetection's ``style='caffe'``), apply
            :func:`stride_in_1x1`.

    Offset predictors (``*.conv_offset.*``) absent from the checkpoint keep their values, unless
    the checkpoint has offset predictors of its own (a DCN checkpoint): then each model layer
    must find its predictor there (listed as missing otherwise). The checkpoint's ``fc.*`` is
    ignored when the model has no classifier (``model.fc`` is
    ``None`` or absent); ``num_batches_tracked`` counters are optional on both sides, so a
    checkpoint loads into a model with :class:`~torchdcn.nn.FrozenBatchNorm2d` too.

    Returns:
        A :class:`LoadReport`; ``str(report)`` summarises it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable checkpoint or holds no state dict; or, with
            ``strict``, the keys or shapes do not match (the message lists them).

    Example:
        >>> model = resnet50(deform="v1")
        >>> print(load_pretrained(model, "resnet50-0676ba61.pth"))  # torchvision's file
        loaded 320 tensors; 6 offset-predictor tensors are not in the checkpoint and kept ...
    """
    state = convert_state_dict(read_state_dict(path), source)
    target = model.state_dict()
    has_head = getattr(model, "fc", None) is not None
    report = LoadReport()
    state = _backbone_of_detector(state, target, report)
    to_load: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in target:
            if key.startswith("fc.") and not has_head:
                report.skipped_head.append(key)
            elif not key.endswith("num_batches_tracked"):
                report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            report.mismatched.append(
                f"{key}: {tuple(value.shape)} in the checkpoint vs {tuple(target[key].shape)}"
            )
        else:
            to_load[key] = value
            report.loaded.append(key)
    dcn_checkpoint = any(OFFSET_KEY in k for k in state)
    for key in target:
        if key in state:
            continue
        if OFFSET_KEY in key and not dcn_checkpoint:
            report.offsets_kept.append(key)
        elif not key.endswith("num_batches_tracked"):
            report.missing.append(key)
    if strict and not report.ok:
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} does not match {type(model).__name__} "
            f"(pass strict=False to load what matches): {report}"
        )
    model.load_state_dict(to_load, strict=False)
    return report


DETECTOR_BACKBONE_PREFIXES = ("backbone.body.", "backbone.")
"""Where detectors keep their backbone: torchvision's detection models (``backbone.body.``, next
to ``backbone.fpn.``), mmdetection (``backbone.``, next to ``neck.``, ``rpn_head.``...)."""


def _backbone_of_detector(
    state: dict[str, Tensor], target: Mapping[str, Tensor], report: LoadReport
) -> dict[str, Tensor]:
    """The backbone part of a detector's state dict, its prefix removed; other tensors are listed
    in ``report.skipped_detector``. ``state`` unchanged when it is not a detector's, or when the
    model's own keys carry the prefix (a detector loading a detector checkpoint)."""
    for prefix in DETECTOR_BACKBONE_PREFIXES:
        if not any(k.startswith(prefix) for k in state):
            continue
        if any(k.startswith(prefix) for k in target):
            return state
        report.backbone_prefix = prefix
        report.skipped_detector = [k for k in state if not k.startswith(prefix)]
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The ``{key: tensor}`` state dict stored in a checkpoint file, on CPU (see
    :func:`load_pretrained` for the formats); raises ``FileNotFoundError`` or ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint file at {str(path)!r}; load_pretrained reads local files only "
            f"(download the torchvision or timm weights yourself)"
        )
    if path.suffix == ".safetensors":
        obj: object = _read_safetensors(path)
    elif path.suffix == ".pkl":  # detectron2's model zoo: a pickled dict of NumPy arrays
        obj = read_pickled_arrays(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"{str(path)!r} is not a PyTorch checkpoint that loads with weights_only=True "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); save "
                f"one with torch.save(model.state_dict(), path)"
            ) from err
    if isinstance(obj, Mapping):
        for wrapper in _WRAPPER_KEYS:
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a state dict (a dict of tensors, "
            f"or a dict with one under {' or '.join(map(repr, _WRAPPER_KEYS))})"
        )
    not_tensors = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ValueError(
            f"{str(path)!r} is not a state dict: entries {not_tensors[:5]} are not tensors"
        )
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    """Parse a ``.safetensors`` file: an 8-byte little-endian header length, a JSON header
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, then the little-endian data."""
    data = path.read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        body = memoryview(data)[8 + n :]
        state = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            raw = bytearray(body[begin:end])
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            state[name] = flat.reshape(info["shape"])
    except (struct.error, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file ({err})") from err
    return state
