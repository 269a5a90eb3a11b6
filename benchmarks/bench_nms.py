"""NMS on CPU: ``torchdcn.ops.nms`` against onnxruntime's ``NonMaxSuppression`` in one process.

Boxes are clustered as a detector's proposals are: N / 20 centres uniform in a 1333 x 800 image,
each with a log-uniform size of 16-256 pixels per side; every box jitters its centre by 10 % of
the size and its sides by a factor exp(N(0, 0.1)). Scores are uniform random. IoU threshold 0.5
(and 0.7). One thread for both (onnxruntime's NMS kernel is serial, so is ours); glibc malloc
thresholds pinned, calls interleaved, medians (``_harness.time_interleaved``). The blocked torch
route (the CUDA path, here on CPU) is timed once per size, for information, and the rise of peak
resident memory during one ``nms`` call is measured (an N x N float32 IoU matrix at N = 20,000
would be 1.5 GiB).

    .venv/bin/python benchmarks/bench_nms.py [--repeats 10] [--sizes 1000 5000 20000]

onnxruntime's semantics match torchvision's for these boxes: ``center_point_box=0`` (corners),
a box is suppressed when its IoU with a selected box is greater than ``iou_threshold``, boxes
are taken by decreasing score with ties by index, and ``max_output_boxes_per_class`` is N so
nothing is cut. (It differs on degenerate boxes, none here: it reorders flipped corners and never
suppresses with a zero-area box.) Its boxes are ``(y1, x1, y2, x2)``; both kept lists are
compared in order.

Goal (issue 9): no slower than onnxruntime.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numba
import numpy as np
import onnxruntime as ort
import torch
from _harness import peak_extra_mib, time_interleaved
from onnx import TensorProto, helper

from torchdcn.ops import nms, use_backend

IMAGE_W, IMAGE_H = 1333.0, 800.0


def clustered_boxes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``boxes`` Tensor[n, 4] float32 ``(x1, y1, x2, y2)`` and ``scores`` Tensor[n] float32."""
    gen = torch.Generator().manual_seed(seed)
    centres = max(1, n // 20)
    c = torch.rand(centres, 2, generator=gen, dtype=torch.float64) * torch.tensor(
        [IMAGE_W, IMAGE_H], dtype=torch.float64
    )
    size = torch.exp(
        torch.empty(centres, 2, dtype=torch.float64).uniform_(
            np.log(16), np.log(256), generator=gen
        )
    )
    pick = torch.randint(centres, (n,), generator=gen)
    wh = size[pick] * torch.exp(0.1 * torch.randn(n, 2, generator=gen, dtype=torch.float64))
    xy = c[pick] + 0.1 * size[pick] * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1).float()
    scores = torch.rand(n, generator=gen)
    return boxes, scores


def ort_session() -> ort.InferenceSession:
    """A one-node ONNX graph (opset 11): NonMaxSuppression(boxes, scores, max_out, iou)."""
    node = helper.make_node(
        "NonMaxSuppression",
        ["boxes", "scores", "max_output_boxes_per_class", "iou_threshold"],
        ["selected"],
        center_point_box=0,
    )
    graph = helper.make_graph(
        [node],
        "nms",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, "N", 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, "N"]),
            helper.make_tensor_value_info("max_output_boxes_per_class", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("iou_threshold", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["K", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7])
    args = parser.parse_args()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    session = ort_session()

    print(
        f"{datetime.date.today()}, torch {torch.__version__}, numba {numba.__version__}, "
        f"onnxruntime {ort.__version__}, {platform.machine()} ({os.cpu_count()} CPUs), 1 thread, "
        f"{args.repeats} interleaved calls each, medians; 1-minute load average before: "
        f"{os.getloadavg()[0]:.2f}\n"
    )
    print(
        "| N | IoU thr | kept | same kept list as ORT | torchdcn nms ms | onnxruntime ms "
        "| ORT / torchdcn | torchdcn peak extra MiB | torch route (CPU, once) ms |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        boxes, scores = clustered_boxes(n)
        feeds_boxes = boxes[:, [1, 0, 3, 2]].numpy()[None]  # (y1, x1, y2, x2)
        feeds_scores = scores.numpy()[None, None]
        for thr in args.thresholds:
            feeds = {
                "boxes": feeds_boxes,
                "scores": feeds_scores,
                "max_output_boxes_per_class": np.array([n], np.int64),
                "iou_threshold": np.array([thr], np.float32),
            }

            def ours(boxes=boxes, scores=scores, thr=thr):
                return nms(boxes, scores, thr)

            def onnx(feeds=feeds):
                return session.run(None, feeds)[0]

            keep = ours()
            theirs = torch.from_numpy(onnx()[:, 2])
            same = torch.equal(keep, theirs)
            agreement = (
                "yes" if same else f"NO ({len(set(keep.tolist()) ^ set(theirs.tolist()))} differ)"
            )
            times = time_interleaved({"ours": ours, "ort": onnx}, repeats=args.repeats)
            peak = peak_extra_mib(ours)
            with use_backend("triton"):  # on CPU tensors: the blocked torch route
                t0 = time.perf_counter()
                routed = nms(boxes, scores, thr)
                t_route = time.perf_counter() - t0
            assert torch.equal(routed, keep)
            print(
                f"| {n} | {thr} | {len(keep)} | {agreement} | {1e3 * times['ours']:.3f} "
                f"| {1e3 * times['ort']:.3f} | {times['ort'] / times['ours']:.1f} "
                f"| {peak:.2f} | {1e3 * t_route:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
