"""Choose the demo's settings on a validation split: plain vs v1 vs v2 CNN on distorted digits.

Every variant trains as ``torchdcn demo`` trains (AdamW lr 3e-3, weight decay 1e-4, batch 64, 50
warm-up steps then cosine) on the 3500 digits left after holding out 50 per class
(:func:`torchdcn.data.distorted_mnist.distorted_mnist_validation`), and is scored on those 500
held-out digits drawn at the test levels. The 1000 test digits are never read. Each row of the
output is one (variant, seed): validation accuracy per level, the same with every offset zeroed
at test time (:func:`torchdcn.analysis.zero_offsets.zeroed_offsets`), and the training time.

A variant is written ``<model>[,key=value...]``: model ``plain``, ``v1`` or ``v2``; keys
``mult`` (offset lr multiplier), ``mask`` (initial v2 mask value), ``mask2x`` (1: v2 masks are
``2 sigmoid``, so a fresh layer equals a plain conv), ``layers`` (how many of the last body layers
are deformable) and ``epochs`` (default 6). Examples::

    python benchmarks/tune_classification_demo.py --variants plain v1,mult=0.3 v2,mult=1 \\
        --seeds 0 1 2 --out runs/tune_cls/results.jsonl
    python benchmarks/tune_classification_demo.py --report --out runs/tune_cls/results.jsonl

Results are appended to ``--out`` (JSON lines); a (variant, seed) already there is skipped, except
``plain``, which reruns in every invocation as the timing reference (unless ``--no-reference``):
the machine may be shared, so times are reported as ratios to the plain 6-epoch runs of the same
invocation (wall and CPU time; one thread per run; an invocation without reference runs is
compared with the mean of all plain runs). ``--report`` prints the markdown table of everything
in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path

import torch
from torch import Tensor

from torchdcn.analysis.zero_offsets import zeroed_offsets
from torchdcn.data.distorted_mnist import TEST_LEVELS, TRAIN_DISTORTION, distorted_mnist_validation
from torchdcn.engine import OptimConfig, ScheduleConfig, TrainConfig, Trainer, seed_everything
from torchdcn.engine.distributed import set_cpu_threads
from torchdcn.engine.evaluate import evaluate_accuracy
from torchdcn.models.classification.mnist_cnn import MnistCNN, mnist_cnn
from torchdcn.nn import ModulatedDeformConv2dPack

HELD_OUT = [name for name, d in TEST_LEVELS.items() if d != TRAIN_DISTORTION]
KEYS = {"mult": float, "mask": float, "mask2x": int, "layers": int, "epochs": int}
REFERENCE = "plain"


def parse_variant(spec: str) -> dict:
    """``"v2,mult=0.3,epochs=12"`` -> ``{"model": "v2", "mult": 0.3, "epochs": 12}``."""
    model, *pairs = spec.split(",")
    if model not in ("plain", "v1", "v2"):
        raise ValueError(f"variant {spec!r}: model must be plain, v1 or v2, got {model!r}")
    out: dict = {"model": model}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in KEYS:
            raise ValueError(f"variant {spec!r}: unknown key {key!r}, wanted one of {list(KEYS)}")
        out[key] = KEYS[key](value)
    if model == "plain" and set(out) - {"model", "epochs"}:
        raise ValueError(f"variant {spec!r}: plain takes only epochs")
    return out


class _Mask2x(ModulatedDeformConv2dPack):
    """v2 layer whose masks are ``2 sigmoid(.)`` in [0, 2]: 1 at initialisation, so a fresh
    layer computes what ``nn.Conv2d`` with its weight computes."""

    def predict(self, input: Tensor) -> tuple[Tensor, Tensor | None]:
        offset, mask = super().predict(input)
        return offset, 2 * mask


def build_model(variant: dict) -> MnistCNN:
    """The variant's CNN (seed the RNGs first)."""
    deform = None if variant["model"] == "plain" else variant["model"]
    kwargs = {}
    if "mult" in variant:
        kwargs["offset_lr_mult"] = variant["mult"]
    if "mask" in variant:
        kwargs["mask_init"] = variant["mask"]
    if "layers" in variant:
        kwargs["deform_layers"] = variant["layers"]
    model = mnist_cnn(deform, **kwargs)
    if variant.get("mask2x"):
        for layer in model.deformable_layers().values():
            layer.__class__ = _Mask2x
    return model


def run_one(spec: str, seed: int, batch: str) -> dict:
    """Train one variant on one seed; its validation accuracies, zeroed-offset accuracies and
    times (wall and CPU seconds of training only)."""
    variant = parse_variant(spec)
    train, vals = distorted_mnist_validation(seed=seed)
    seed_everything(seed)
    model = build_model(variant)
    cfg = TrainConfig(
        epochs=variant.get("epochs", 6),
        batch_size=64,
        seed=seed,
        optim=OptimConfig("adamw", lr=3e-3, weight_decay=1e-4),
        schedule=ScheduleConfig("cosine", warmup_steps=50),
        progress=False,
        device="cpu",
    )
    trainer = Trainer(model, train, cfg, eval_every=0, name=f"{spec} seed {seed}")
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model.eval()
    acc = {name: evaluate_accuracy(model, ds) for name, ds in vals.items()}
    zeroed = {}
    if variant["model"] != "plain":
        with zeroed_offsets(model):
            zeroed = {name: evaluate_accuracy(model, ds) for name, ds in vals.items()}
    return {
        "variant": spec,
        "seed": seed,
        "batch": batch,
        "train_wall_s": round(wall, 2),
        "train_cpu_s": round(cpu, 2),
        "accuracy": acc,
        "zeroed": zeroed,
    }


def held_out_mean(acc: dict[str, float]) -> float:
    """Mean accuracy over the held-out levels."""
    return statistics.fmean(acc[lv] for lv in HELD_OUT)


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def load_rows(path: Path) -> list[dict]:
    """Every row of the JSON-lines file (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(rows: list[dict]) -> str:
    """Markdown table: per variant, val accuracy (train-like, held-out mean, the held-out mean
    with offsets zeroed) mean ± std over seeds, and training time / the same invocation's plain
    6-epoch time (wall, CPU)."""
    latest: dict[tuple[str, int], dict] = {}
    for row in rows:
        latest[row["variant"], row["seed"]] = row
    reference: dict[str, dict[str, float]] = {}
    for key in ("train_wall_s", "train_cpu_s"):
        every = [r[key] for r in rows if r["variant"] == REFERENCE]
        for batch in {r["batch"] for r in rows}:
            plain = [r[key] for r in rows if r["batch"] == batch and r["variant"] == REFERENCE]
            if plain or every:
                reference.setdefault(batch, {})[key] = statistics.fmean(plain or every)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = [
        "| variant | seeds | val train-like | val held-out mean | held-out, offsets zeroed "
        "| time / plain (wall) | time / plain (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in variants:
        mine = [r for (v, _), r in sorted(latest.items()) if v == spec]
        ratios = {}
        for key in ("train_wall_s", "train_cpu_s"):
            values = [
                r[key] / reference[r["batch"]][key]
                for r in rows
                if r["variant"] == spec and key in reference.get(r["batch"], {})
            ]
            ratios[key] = f"{statistics.fmean(values):.2f}" if values else "-"
        cells = [
            spec,
            " ".join(str(r["seed"]) for r in mine),
            _mean_sd([r["accuracy"]["train-like"] for r in mine]),
            _mean_sd([held_out_mean(r["accuracy"]) for r in mine]),
            _mean_sd([held_out_mean(r["zeroed"]) for r in mine if r["zeroed"]]),
            ratios["train_wall_s"],
            ratios["train_cpu_s"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def level_report(rows: list[dict]) -> str:
    """Markdown table: per variant, the validation accuracy of every level, mean over seeds."""
    latest = {(r["variant"], r["seed"]): r for r in rows}
    levels = list(TEST_LEVELS)
    lines = ["| variant | " + " | ".join(levels) + " |", "|---" * (len(levels) + 1) + "|"]
    for spec in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for (v, _), r in latest.items() if v == spec]
        cells = [f"{statistics.fmean(r['accuracy'][lv] for r in mine):.1f}" for lv in levels]
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="*", default=[], help="e.g. plain v1,mult=0.3")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/tune_classification/results.jsonl")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="print the table and stop")
    parser.add_argument("--levels", action="store_true", help="--report: per-level table too")
    parser.add_argument(
        "--no-reference", action="store_true", help="do not rerun plain as the timing reference"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report:
        print(report(load_rows(out)))
        if args.levels:
            print("\n" + level_report(load_rows(out)))
        return
    for spec in args.variants:
        parse_variant(spec)  # fail before training anything
    set_cpu_threads(args.threads)
    done = {(r["variant"], r["seed"]) for r in load_rows(out)}
    batch = uuid.uuid4().hex[:8]
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:  # seeds outer: an interrupted sweep has every variant on some seeds
        reference = [] if args.no_reference else [REFERENCE]
        for spec in [*reference, *[v for v in args.variants if v != REFERENCE]]:
            if spec != REFERENCE and (spec, seed) in done:
                continue
            row = run_one(spec, seed, batch)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            zeroed = f"{held_out_mean(row['zeroed']):.1f}" if row["zeroed"] else "-"
            print(
                f"{spec:28s} seed {seed}: train-like {row['accuracy']['train-like']:.1f} "
                f"held-out {held_out_mean(row['accuracy']):.1f} zeroed {zeroed} "
                f"wall {row['train_wall_s']:.0f} s cpu {row['train_cpu_s']:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
