"""Parameters and multiply-adds of a model and of its deformable twins (v1 Table 4, SPEC section 8).

Run ``python -m torchdcn.analysis.complexity`` to print the table of ResNet-50 and ResNet-101
backbones, plain vs the ``"v1"`` and ``"v2"`` presets, at 3 x 800 x 1216 (``--size H W`` for
another input). The counts come from a forward pass on fake tensors (shapes only, no arithmetic),
so even large inputs take well under a second per model.

Counting convention (multiply-adds, "MACs"; 1 MAC = 2 FLOPs):

- ``nn.Conv2d``: ``N * C_out * H_out * W_out * (C_in / groups) * kh * kw``; ``nn.Linear``:
  ``in_features * out_features`` per row. Biases, norms, activations, pooling and residual
  additions are not counted (as torchvision and fvcore do).
- Deformable conv: the same product as the plain conv (``deform_conv``), its offset predictor as
  the conv it is (``offset_predictor``), and the bilinear sampling (``sampling``): 4 MACs per
  sampled input value (``N * C_in * kh * kw * H_out * W_out`` values, one per corner), plus 1 per
  value for the modulation scalar in v2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode

from ..models import ResNet, resnet50, resnet101
from ..models.backbones.deform_config import Deform
from ..nn import DeformConv2d

KINDS = ("conv", "linear", "deform_conv", "offset_predictor", "sampling")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (shared ones once); buffers are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of ``model`` on an input of ``input_shape``.

    Args:
        model: any module; convolutions (plain and deformable) and linear layers are counted, see
            the module docstring for the convention.
        input_shape: ``(C, H, W)`` for one image or ``(N, C, H, W)``.

    Returns:
        The total of :func:`flop_breakdown`.
    """
    return sum(flop_breakdown(model, input_shape).values())


def flop_breakdown(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-adds of one forward pass by kind: ``conv``, ``linear``, ``deform_conv`` (the
    weight product of deformable layers), ``offset_predictor`` and ``sampling`` (bilinear).

    The pass runs in eval mode on fake tensors (no data, no arithmetic, the weights untouched),
    under ``torch.no_grad``; ``input_shape`` is ``(C, H, W)`` or ``(N, C, H, W)``, the input
    in the dtype and on the device of the model's first floating-point parameter. A
    ``DeformConv2d`` counts the v2 sampling when it is modulated (the Pack layers) or is given a
    mask, by position or as ``mask=``.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W), got {input_shape}")
    predictors = {id(m.conv_offset) for m in model.modules() if hasattr(m, "conv_offset")}
    totals = dict.fromkeys(KINDS, 0)

    def on_conv(module: nn.Conv2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        kind = "offset_predictor" if id(module) in predictors else "conv"
        totals[kind] += _conv_macs(module.weight.shape, output.shape)

    def on_linear(module: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        totals["linear"] += output.numel() * module.in_features

    def on_deform(
        module: DeformConv2d, inputs: tuple[Tensor, ...], kwargs: dict, output: Tensor
    ) -> None:
        totals["deform_conv"] += _conv_macs(module.weight.shape, output.shape)
        n, _, ho, wo = output.shape
        kh, kw = module.kernel_size
        values = n * module.in_channels * kh * kw * ho * wo
        # a Pack layer knows; a layer given its mask may get it by position or by keyword
        mask = inputs[2] if len(inputs) > 2 else kwargs.get("mask")
        modulated = getattr(module, "modulated", mask is not None)
        totals["sampling"] += values * (5 if modulated else 4)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(on_linear))
        elif isinstance(module, DeformConv2d):
            handles.append(module.register_forward_hook(on_deform, with_kwargs=True))
    # the input takes the dtype and device of the model's parameters (float64 models, GPUs)
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = torch.get_default_dtype() if param is None else param.dtype
    device = None if param is None else param.device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            model(torch.empty(shape, dtype=dtype, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return totals


def _conv_macs(weight_shape: torch.Size, output_shape: torch.Size) -> int:
    c_out, c_in_per_group, kh, kw = weight_shape
    n, _, ho, wo = output_shape
    return n * c_out * ho * wo * c_in_per_group * kh * kw


@dataclass(frozen=True)
class ComplexityRow:
    """One line of :func:`complexity_table`; overheads are relative to the plain twin."""

    model: str
    deform: str
    output_stride: int
    deformable_layers: int
    params: int
    macs: int
    extra_params: int
    extra_macs: int


def complexity_table(
    builders: Sequence[Callable[..., ResNet]] = (resnet50, resnet101),
    input_shape: Sequence[int] = (3, 800, 1216),
    output_stride: int = 16,
) -> list[ComplexityRow]:
    """Backbones (``features_only``) of each builder: plain at output stride 32, plain at
    ``output_stride`` (the twin), then ``deform="v1"`` and ``"v2"`` at ``output_stride``."""
    rows = []
    variants: list[tuple[Deform, int]] = [
        (None, 32),
        (None, output_stride),
        ("v1", output_stride),
        ("v2", output_stride),
    ]
    for build in builders:
        base_params = base_macs = 0
        for deform, stride in variants:
            model = build(deform=deform, output_stride=stride, features_only=True)
            params, macs = count_parameters(model), count_flops(model, input_shape)
            if deform is None and stride == output_stride:
                base_params, base_macs = params, macs
            rows.append(
                ComplexityRow(
                    model=build.__name__,
                    deform=str(deform),
                    output_stride=stride,
                    deformable_layers=len(model.deformable_layers()),
                    params=params,
                    macs=macs,
                    extra_params=params - base_params if deform else 0,
                    extra_macs=macs - base_macs if deform else 0,
                )
            )
    return rows


def format_table(rows: Sequence[ComplexityRow], input_shape: Sequence[int]) -> str:
    """A Markdown table of ``rows``; ``+x%`` columns compare with the plain twin."""
    lines = [
        f"Backbones (features_only, no classifier), input {' x '.join(map(str, input_shape))}; "
        f"MACs = multiply-adds.",
        "",
        "| model | deform | output stride | deformable layers | params (M) | +params "
        "| GMACs | +GMACs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        twin = r.deform != "None"
        lines.append(
            f"| {r.model} | {r.deform} | {r.output_stride} | {r.deformable_layers} "
            f"| {r.params / 1e6:.3f} | {_overhead(r.extra_params, r.params, 1e6) if twin else '-'} "
            f"| {r.macs / 1e9:.2f} | {_overhead(r.extra_macs, r.macs, 1e9) if twin else '-'} |"
        )
    return "\n".join(lines)


def _overhead(extra: int, total: int, unit: float) -> str:
    return f"+{extra / unit:.3f} ({100 * extra / (total - extra):.2f}%)"


def main(argv: Sequence[str] | None = None) -> None:
    """Print :func:`complexity_table` for ResNet-50 and ResNet-101."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    args = parser.parse_args(argv)
    shape = (3, *args.size)
    print(
        format_table(complexity_table(input_shape=shape, output_stride=args.output_stride), shape)
    )


if __name__ == "__main__":
    main()
