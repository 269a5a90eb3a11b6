"""Agreement with onnxruntime's DeformConv (ONNX opset 19), an independent implementation."""

from __future__ import annotations

import pytest
import torch

from torchdcn.ops import deform_conv2d

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _session(has_mask, kernel, stride, padding, dilation, groups, offset_groups):
    from onnx import TensorProto, helper

    names = ["X", "W", "offset", "B"] + (["mask"] if has_mask else [])
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]
    node = helper.make_node(
        "DeformConv",
        names,
        ["Y"],
        kernel_shape=list(kernel),
        strides=list(stride),
        pads=[padding[0], padding[1], padding[0], padding[1]],
        dilations=list(dilation),
        group=groups,
        offset_group=offset_groups,
    )
    output = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "deform_conv", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


@pytest.mark.parametrize("has_mask", [False, True])
@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,groups,offset_groups",
    [
        ((3, 3), (1, 1), (1, 1), (1, 1), 1, 1),
        ((3, 3), (2, 1), (1, 2), (1, 2), 2, 2),
        ((2, 3), (1, 2), (0, 1), (2, 1), 1, 4),
    ],
)
def test_matches_onnxruntime(has_mask, kernel, stride, padding, dilation, groups, offset_groups):
    gen = torch.Generator().manual_seed(7)
    n, c_in, c_out, h, w = 2, 8, 6, 11, 9
    ho = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    k = kernel[0] * kernel[1]
    x = torch.randn(n, c_in, h, w, generator=gen)
    weight = torch.randn(c_out, c_in // groups, *kernel, generator=gen)
    bias = torch.randn(c_out, generator=gen)
    offset = 3 * torch.randn(n, 2 * offset_groups * k, ho, wo, generator=gen)
    mask = torch.rand(n, offset_groups * k, ho, wo, generator=gen) if has_mask else None
    feeds = {"X": x, "W": weight, "offset": offset, "B": bias}
    if has_mask:
        feeds["mask"] = mask
    sess = _session(has_mask, kernel, stride, padding, dilation, groups, offset_groups)
    (expected,) = sess.run(None, {key: v.numpy() for key, v in feeds.items()})
    got = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-4, atol=1e-4)
