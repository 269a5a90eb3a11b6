"""``select_detections`` (score threshold, clip, per-class NMS, top detections) with many
low-score candidates: 1000 RoIs x 80 classes on a 600 x 800 image, boxes spread over the image or
clustered on 5 objects, scores softmax-like (``softmax`` of 81 logits) or uniform, thresholds 0.05
and 0.0, plus the slow path (every RoI on one object: 80 survivors for 100 places). One thread,
best of ``--repeats`` calls after a warm-up. Against the plain route (everything above the
threshold through one NMS), with identical outputs checked.

    .venv/bin/python benchmarks/bench_select_detections.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from torchdcn.models.detection.postprocess import select_detections
from torchdcn.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

R, C, SIZE = 1000, 80, (600, 800)


def plain(boxes, scores, size, score_thresh):
    """The route before: every candidate above the threshold clipped and through one NMS."""
    boxes = clip_boxes_to_image(boxes, size)
    labels = torch.arange(1, C + 1).expand(R, -1).reshape(-1)
    boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
    keep = torch.nonzero(scores > score_thresh).squeeze(1)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = remove_small_boxes(boxes, 1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, 0.5)[:100]
    return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}


def cases(g):
    xy = torch.rand(R, 1, 2, generator=g) * 500
    wh = torch.rand(R, 1, 2, generator=g) * 200 + 4
    spread = torch.cat([xy, xy + wh], -1).expand(R, C, 4) + torch.randn(R, C, 4, generator=g)
    centre, size = torch.rand(5, 2, generator=g) * 400, torch.rand(5, 2, generator=g) * 150 + 20
    pick = torch.randint(0, 5, (R,), generator=g)
    xy = centre[pick][:, None]
    clustered = torch.cat([xy, xy + size[pick][:, None]], -1)
    clustered = clustered + torch.randn(R, C, 4, generator=g) * 8
    one = torch.tensor([100.0, 100.0, 300.0, 260.0]) + torch.randn(R, C, 4, generator=g) * 3
    soft = torch.softmax(torch.randn(R, C + 1, generator=g) * 2, 1)[:, 1:]
    uniform = torch.rand(R, C, generator=g)
    for name, boxes in (("spread", spread), ("clustered", clustered)):
        for score_name, scores in (("softmax", soft), ("uniform", uniform)):
            yield f"{name}/{score_name}", boxes.contiguous(), scores
    yield "one object/uniform", one.contiguous(), uniform


def best_of(fn, args, repeats, **kwargs):
    fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times) * 1000, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    print("| case | threshold | candidates | plain (ms) | select_detections (ms) | same |")
    print("|---|---:|---:|---:|---:|---|")
    for name, boxes, scores in cases(g):
        for thresh in (0.05, 0.0):
            t_old, old = best_of(plain, (boxes, scores, SIZE, thresh), args.repeats)
            t_new, new = best_of(
                select_detections, (boxes, scores, SIZE), args.repeats, score_thresh=thresh
            )
            same = all(torch.equal(old[k], new[k]) for k in ("boxes", "labels", "scores"))
            n = int((scores > thresh).sum())
            print(f"| {name} | {thresh} | {n} | {t_old:.1f} | {t_new:.1f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
