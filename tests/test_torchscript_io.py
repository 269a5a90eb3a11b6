"""TorchScript as the README states it: every ``torchdcn.nn`` module and the demo CNN script,
and the ResNet backbones trace; scripted and traced models save with ``torch.jit.save``, load
with ``torch.jit.load`` and compute what the eager model does, bit for bit."""

from __future__ import annotations

import inspect
import io

import pytest
import torch
from torch import nn

import torchdcn.nn as tnn
from torchdcn.models import resnet18
from torchdcn.models.classification.mnist_cnn import mnist_cnn

#: torch.jit is deprecated in favour of torch.export (still shipped; the README says so)
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated")

ROIS = torch.tensor([[0, 8.0, 16.0, 90.0, 70.0], [1, 30.0, 4.0, 60.0, 120.0], [1, -8.0, 0, 40, 30]])
SCALE = 1 / 8  # 6 x 7 maps of a 48 x 56 image, one RoI partly off the map
#: the same RoIs as one ``[K_i, 4]`` tensor per image (torchvision's list form)
LIST_ROIS = [ROIS[:1, 1:], ROIS[1:, 1:]]


def _x(channels: int = 12) -> torch.Tensor:
    return torch.randn(2, channels, 6, 7)


#: name -> (module, its forward's arguments); one entry per module class torchdcn.nn exports
MODULES = {
    "DeformConv2d": (
        lambda: tnn.DeformConv2d(4, 3, 3, padding=1),
        lambda: (_x(4), torch.randn(2, 18, 6, 7), torch.rand(2, 9, 6, 7)),
    ),
    "ModulatedDeformConv2d": (
        lambda: tnn.ModulatedDeformConv2d(4, 3, 3, padding=1),
        lambda: (_x(4), torch.randn(2, 18, 6, 7), torch.rand(2, 9, 6, 7)),
    ),
    "DeformConv2dPack": (lambda: tnn.DeformConv2dPack(4, 3, 3, padding=1), lambda: (_x(4),)),
    "ModulatedDeformConv2dPack": (
        lambda: tnn.ModulatedDeformConv2dPack(4, 3, 3, padding="same", dilation=2),
        lambda: (_x(4),),
    ),
    "FrozenBatchNorm2d": (lambda: tnn.FrozenBatchNorm2d(4), lambda: (_x(4),)),
    "RoIAlign": (lambda: tnn.RoIAlign(2, SCALE, 2), lambda: (_x(), ROIS)),
    "RoIPool": (lambda: tnn.RoIPool(2, SCALE), lambda: (_x(), ROIS)),
    "PSRoIAlign": (lambda: tnn.PSRoIAlign(2, SCALE, 2), lambda: (_x(), ROIS)),
    "PSRoIPool": (lambda: tnn.PSRoIPool(2, SCALE), lambda: (_x(), ROIS)),
    "DeformRoIPool": (lambda: tnn.DeformRoIPool(12, 2, SCALE, 2), lambda: (_x(), ROIS)),
    "ModulatedDeformRoIPool": (
        lambda: tnn.ModulatedDeformRoIPool(12, 2, SCALE, 2, hidden_channels=8),
        lambda: (_x(), ROIS),
    ),
    "DeformPSRoIPool": (lambda: tnn.DeformPSRoIPool(3, 2, SCALE, 2), lambda: (_x(), ROIS)),
}


def _roundtrip(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def _randomise(module: nn.Module) -> nn.Module:
    """Non-zero predictors and statistics, so a scripted module that dropped its offsets, masks
    or buffers would compute something else."""
    torch.manual_seed(7)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
        for b in module.buffers():
            if b.is_floating_point():
                b.uniform_(0.5, 1.5)
    return module.eval()


def test_every_exported_module_is_listed():
    exported = {
        name
        for name in tnn.__all__
        if inspect.isclass(getattr(tnn, name)) and issubclass(getattr(tnn, name), nn.Module)
    }
    assert exported == set(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_nn_module_scripts_saves_and_loads(name):
    """Scripted and reloaded, each module computes what the eager one does; the RoI modules
    with ``[K, 5]`` and list RoIs."""
    build, inputs = MODULES[name]
    module = _randomise(build())
    args = inputs()
    calls = [args] + ([(args[0], LIST_ROIS)] if args[-1] is ROIS else [])
    scripted = torch.jit.script(module)
    loaded = _roundtrip(scripted)
    for call in calls:
        want = module(*call)
        torch.testing.assert_close(scripted(*call), want, rtol=0, atol=0)
        torch.testing.assert_close(loaded(*call), want, rtol=0, atol=0)


@pytest.mark.parametrize("deform", [None, "v1", "v2"])
def test_demo_cnn_scripts_saves_and_loads(deform):
    model = _randomise(mnist_cnn(deform=deform, width=16))
    x = torch.randn(3, 1, 48, 48)
    want = model(x)
    loaded = _roundtrip(torch.jit.script(model))
    torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:The TorchScript type system")
def test_resnet_traces_saves_and_loads_but_does_not_script():
    model = _randomise(resnet18(deform="v2", num_classes=5))
    x = torch.randn(1, 3, 64, 64)
    want = model(x)
    traced = torch.jit.trace(model, x, check_trace=False)
    other = torch.randn(2, 3, 48, 80)  # another batch and size than the trace's
    loaded = _roundtrip(traced)
    torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)
    torch.testing.assert_close(loaded(other), model(other), rtol=0, atol=0)
    with pytest.raises(Exception):  # noqa: B017 - the README's stated limit: tracing only
        torch.jit.script(model)
