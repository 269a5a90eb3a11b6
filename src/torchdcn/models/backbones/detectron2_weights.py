"""detectron2 ResNet checkpoints (with ``DeformBottleneckBlock`` stages) as torchdcn ResNet keys.

detectron2's ResNet names its parts ``stem.conv1`` and ``res2`` ... ``res5`` (torchdcn's
``conv1`` and ``layer1`` ... ``layer4``); each conv carries its norm inside (``conv1.norm.*``, a
``FrozenBatchNorm2d`` with ``weight``, ``bias``, ``running_mean``, ``running_var``: torchdcn's
``bn1.*``); the projection shortcut is ``shortcut`` (``downsample.0``, its norm ``downsample.1``);
the ImageNet classifier ``linear`` (``fc``). A deformable block keeps its offset predictor beside
the conv, ``res3.0.conv2_offset``, where torchdcn has ``layer2.0.conv2.conv_offset``.

Offset and mask layout. With ``DEFORM_MODULATED`` detectron2 splits the ``3 * G * 9`` channels of
``conv2_offset`` in three equal chunks, named ``offset_x, offset_y, mask`` in its code, and passes
``cat(offset_x, offset_y)`` as the offset. Despite the names, the concatenation is the first
``2 * G * 9`` channels in their order, and its kernels (mmdetection's) read channel
``g*2K + 2k`` as ``dy`` and ``g*2K + 2k + 1`` as ``dx`` of tap ``k``, the mask at ``g*K + k``:
SPEC section 1's layout, the one torchdcn uses. So no channel moves: the tensors load unchanged.

Where the keys are: an FPN detector (the ``dconv_c3-c5`` configs) under ``backbone.bottom_up.``,
mapped to ``backbone.body.`` (so :func:`~torchdcn.models.load_pretrained` takes the backbone and
lists ``backbone.fpn_*``, ``proposal_generator.*``, ``roi_heads.*`` as skipped); a C4 detector
under ``backbone.``, with ``res5`` under ``roi_heads.res5.`` (mapped to ``backbone.layer4``); a
bare backbone without a prefix. Checkpoints come as ``.pth`` (``torch.save``) or as the model
zoo's ``.pkl`` (a pickled dict of NumPy arrays, read by :func:`read_pickled_arrays`, which refuses
anything but arrays). Caffe2-named ImageNet weights (``res2_0_branch2a_w``, ``R-50.pkl``) are not
detectron2 names and are refused.

Not in the weights, for the caller to match: the deformable stages (``DEFORM_ON_PER_STAGE``,
``DEFORM_MODULATED``, ``DEFORM_NUM_GROUPS``, see :func:`deform_from_detectron2`),
``STRIDE_IN_1X1`` (True in detectron2's default configs and MSRA's weights: apply
:func:`torchdcn.models.backbones.stride_in_1x1`), ``RES5_DILATION=2`` (``output_stride=16``) and
the input format (detectron2's MSRA models take BGR 0-255 images minus the pixel mean).
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .deform_config import DeformConfig

_STEM = re.compile(r"^stem\.conv1\.(.+)$")
_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.(conv[1-3]|shortcut|conv2_offset)\.(.+)$")
_CAFFE2_NAME = re.compile(r"(^|\.)res\d_\d+_branch\d")
_FPN_PREFIX, _C4_PREFIX, _C4_RES5 = "backbone.bottom_up.", "backbone.", "roi_heads.res5."


def _block_key(stage: str, block: str, part: str, rest: str) -> str:
    layer = f"layer{int(stage) - 1}.{block}"
    norm = rest.startswith("norm.")
    if part == "conv2_offset":
        return f"{layer}.conv2.conv_offset.{rest}"
    if part == "shortcut":
        return f"{layer}.downsample.1.{rest[5:]}" if norm else f"{layer}.downsample.0.{rest}"
    return f"{layer}.bn{part[-1]}.{rest[5:]}" if norm else f"{layer}.{part}.{rest}"


def _rename(tail: str) -> str | None:
    """torchdcn's key for a detectron2 ResNet key without prefix, or None if it is none of them."""
    stem = _STEM.match(tail)
    if stem:
        rest = stem.group(1)
        return "bn1." + rest[5:] if rest.startswith("norm.") else "conv1." + rest
    block = _BLOCK.match(tail)
    if block:
        return _block_key(*block.groups())
    if tail.startswith("linear."):
        return "fc." + tail[len("linear.") :]
    return None


def detectron2_to_torchdcn(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A detectron2 ResNet (or detector) state dict with torchdcn's keys; tensors not copied.

    Args:
        state: ``{key: tensor}`` from a detectron2 checkpoint (its ``"model"`` entry).

    Returns:
        The backbone tensors under torchdcn's names (``backbone.body.`` for an FPN detector,
        ``backbone.`` for a C4 one, no prefix for a bare backbone; see the module docstring);
        every other key unchanged, for :func:`~torchdcn.models.load_pretrained` to skip (heads)
        or report (unknown backbone keys).

    Raises:
        ValueError: Caffe2-named weights (``res2_0_branch2a_w``), or two keys mapping to one.
    """
    caffe2 = [k for k in state if _CAFFE2_NAME.search(k)]
    if caffe2:
        raise ValueError(
            f"these are Caffe2-named weights ({caffe2[0]!r}, ...), not a detectron2 state dict; "
            "convert them with detectron2 first (its checkpointer maps the names), then save the "
            "model's state_dict()"
        )
    fpn = any(k.startswith(_FPN_PREFIX) for k in state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new_key = _torchdcn_key(key, fpn) or key
        if new_key in out:
            raise ValueError(f"checkpoint keys {key!r} and another both map to {new_key!r}")
        out[new_key] = value
    return out


def _torchdcn_key(key: str, fpn: bool) -> str | None:
    """The renamed ``key`` with its prefix mapped (see the module docstring), or None."""
    if key.startswith(_FPN_PREFIX):
        prefix, tail = "backbone.body.", key[len(_FPN_PREFIX) :]
    elif not fpn and key.startswith(_C4_RES5):
        prefix, tail = "backbone.", "res5." + key[len(_C4_RES5) :]
    elif not fpn and key.startswith(_C4_PREFIX):
        prefix, tail = "backbone.", key[len(_C4_PREFIX) :]
    else:
        prefix, tail = "", key
    renamed = _rename(tail)
    return None if renamed is None else prefix + renamed


def deform_from_detectron2(
    deform_on_per_stage: Sequence[bool],
    deform_modulated: bool = False,
    deform_num_groups: int = 1,
) -> tuple[DeformConfig, ...]:
    """The ``deform=`` argument of a torchdcn ResNet equal to detectron2's ``MODEL.RESNETS``.

    Args:
        deform_on_per_stage: ``DEFORM_ON_PER_STAGE``, four booleans for ``res2``-``res5``
            (``[False, True, True, True]`` in the ``dconv_c3-c5`` configs).
        deform_modulated: ``DEFORM_MODULATED`` (v2, with masks).
        deform_num_groups: ``DEFORM_NUM_GROUPS`` (offset groups).

    Returns:
        A tuple of :class:`DeformConfig`, empty when no stage is deformable; every block of a
        chosen stage, as detectron2 builds ``DeformBottleneckBlock`` for the whole stage.
    """
    flags = tuple(bool(f) for f in deform_on_per_stage)
    if len(flags) != 4:
        raise ValueError(
            f"deform_on_per_stage must have 4 flags (res2-res5), got {deform_on_per_stage}"
        )
    stages = tuple(stage for stage, on in zip((2, 3, 4, 5), flags) if on)
    if not stages:
        return ()
    return (
        DeformConfig(
            stages=stages, modulated=bool(deform_modulated), offset_groups=int(deform_num_groups)
        ),
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and NumPy arrays; any other global is refused, so
    a crafted file cannot run code."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("collections", "OrderedDict"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only NumPy arrays, dicts and plain values "
                "are read from a .pkl checkpoint"
            )
        return super().find_class(module, name)


def read_pickled_arrays(path: str | Path) -> dict[str, object]:
    """The dict stored in a detectron2 model-zoo ``.pkl`` file, its NumPy arrays as tensors.

    Returns:
        ``{key: value}`` of the file's top level (``"model"`` holds the state dict), arrays
        converted with ``torch.from_numpy`` (nested dicts too).

    Raises:
        ValueError: the file is not a pickle of arrays and plain values (the message says what
            was refused; nothing from the file is executed).
    """
    data = Path(path).read_bytes()
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as err:
        raise ValueError(f"{str(path)!r} is not a pickled dict of arrays ({err})") from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(obj).__name__}, not a dict")
    return _to_tensors(obj)


def _to_tensors(obj: Mapping) -> dict[str, object]:
    import numpy as np

    out: dict[str, object] = {}
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            out[str(key)] = torch.from_numpy(np.array(value, copy=True))
        elif isinstance(value, Mapping):
            out[str(key)] = _to_tensors(value)
        else:
            out[str(key)] = value
    return out
