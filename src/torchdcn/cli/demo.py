"""``torchdcn demo``, part 1 of the tour (:mod:`.tour`): plain vs deformable (v1) vs modulated (v2)
CNN on distorted digits. Part 2 (:mod:`.demo_detection`) is plain vs v2 Faster R-CNN on digit
scenes.

One protocol for all three (:mod:`torchdcn.data.distorted_mnist`): train on 4000 digits with mild
distortion, test 1000 held-out digits at stronger scales and rotations than any seen in training.
Each model trains once per seed with the same settings; the table reports the mean and standard
deviation of the test accuracy over the seeds. The deformable models' options
(:data:`MODEL_OPTIONS`) were chosen on a validation split of the training digits
(:func:`~torchdcn.data.distorted_mnist.distorted_mnist_validation`), never on the test digits;
each is also tested with its offsets zeroed (same weights, plain sampling grid). The figure
draws, for the first seed's models, the 729 sampling locations of one activation of the last body
layer on test digits at several scales (v1 paper, Fig. 5), and the report gives their mean
distance from the activation per scale.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..analysis.sampling import Panel, plot_sampling_locations, sampling_locations_from_inputs
from ..analysis.sampling import spread as points_spread
from ..analysis.zero_offsets import zeroed_offsets
from ..data.distort import digit_centre, render
from ..data.distorted_mnist import TEST_LEVELS, TRAIN_DISTORTION, distorted_mnist
from ..engine import OptimConfig, ScheduleConfig, TrainConfig, Trainer, seed_everything
from ..engine.distributed import set_cpu_threads
from ..engine.evaluate import evaluate_accuracy
from ..models.classification.mnist_cnn import MnistCNN, mnist_cnn

MODELS: dict[str, str | None] = {"plain": None, "v1": "v1", "v2": "v2"}
#: per deformable model, the :class:`MnistCNNConfig` options the demo uses, chosen on the
#: validation split (docs/classification_ablation.md, benchmarks/tune_classification_demo.py):
#: under AdamW from scratch both train their offset predictors at the base rate (v2's module
#: default 0.1 is the papers' setting for SGD fine-tuning and cost v2 about 9 points here)
MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "v1": {"offset_lr_mult": 1.0},
    "v2": {"offset_lr_mult": 1.0},
}
#: name of a deformable model's row tested with its offsets zeroed
ZEROED = "{name}, offsets zeroed"
#: name of the control: the plain CNN trained ``plain_long_factor`` times longer
PLAIN_LONG = "plain, {factor}x epochs"
#: scales at which the figure and the spread table look at the sampling locations
FIGURE_SCALES = (0.5, 1.0, 1.8)
SPREAD_SCALES = (0.5, 0.6, 1.0, 1.5, 1.8)


@dataclass
class DemoConfig:
    """Settings of the demo (the defaults are what ``make demo`` runs).

    Attributes:
        seeds: one training run per model and seed.
        epochs, batch_size, lr, weight_decay, warmup_steps: training (AdamW, warm-up + cosine).
        width: channels of the CNN body.
        data_root: data root (``None``: the default search, see :mod:`torchdcn.data.mnist`).
        out_dir: where results, checkpoints and the figure go.
        figure: PNG of sampling locations (default ``<out_dir>/sampling_locations.png``).
        markdown: report (default ``<out_dir>/results.md``).
        plain_long_factor: also train the plain CNN this many times longer, a control with about
            the training time of the deformable models (0: skip).
        jobs: worker processes running trainings side by side (0: one per CPU core, at most one
            per run); each uses ``threads`` threads.
        threads: CPU threads per training (0: 1 when ``jobs > 1``, else torch's default).
        progress: show progress bars.
        limit_train, limit_test: use only this many digits (quick checks; not for results).
        model_options: per deformable model (``"v1"``, ``"v2"``), extra
            :class:`~torchdcn.models.classification.mnist_cnn.MnistCNNConfig` options (default
            :data:`MODEL_OPTIONS`).
        zeroed_offsets: also test every deformable model with its offsets zeroed (the control
            of :mod:`torchdcn.analysis.zero_offsets`; evaluation only).
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 6
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    width: int = 32
    data_root: str | None = None
    out_dir: str = "runs/demo"
    figure: str | None = None
    markdown: str | None = None
    plain_long_factor: int = 3
    jobs: int = 0
    threads: int = 0
    progress: bool = True
    limit_train: int | None = None
    limit_test: int | None = None
    model_options: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {k: dict(v) for k, v in MODEL_OPTIONS.items()}
    )
    zeroed_offsets: bool = True

    def model_kwargs(self, deform: str | None) -> dict[str, Any]:
        """Keyword arguments of :func:`mnist_cnn` (besides ``deform``) for a model."""
        return {"width": self.width, **self.model_options.get(deform or "", {})}

    def runs(self) -> list[tuple[str, str | None, int]]:
        """``(name, deform, epochs)`` of every model the demo trains per seed."""
        runs = [(name, deform, self.epochs) for name, deform in MODELS.items()]
        if self.plain_long_factor:
            f = self.plain_long_factor
            runs.append((PLAIN_LONG.format(factor=f), None, f * self.epochs))
        return runs


@dataclass
class DemoResult:
    """Accuracies ``accuracy[model][level] = [percent per seed]``, sampling spreads
    ``spread[model][scale] = mean pixels`` (first seed), timings and where files went;
    ``zeroed[model][level]``: the deformable models' accuracies with their offsets zeroed."""

    config: DemoConfig
    accuracy: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    zeroed: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    spread: dict[str, dict[str, float]] = field(default_factory=dict)
    train_time_s: dict[str, list[float]] = field(default_factory=dict)
    wall_time_s: float = 0.0
    figure: str | None = None
    threads: int = 1
    jobs: int = 1

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of everything."""
        return asdict(self)


def run_demo(config: DemoConfig) -> DemoResult:
    """Train every model on every seed, evaluate, draw the figure; returns the numbers.

    Runs are spread over ``config.jobs`` worker processes of one thread each (``0``: one per CPU
    core); each run is seeded on its own, so the numbers do not depend on the number of jobs.
    """
    start = time.perf_counter()
    out = Path(config.out_dir)
    runs = [(seed, *run) for seed in config.seeds for run in config.runs()]
    runs.sort(key=lambda r: (r[2] is None, -r[3]))  # deformable and long runs first
    jobs = config.jobs or min(os.cpu_count() or 1, len(runs))
    threads = config.threads or (1 if jobs > 1 else torch.get_num_threads())
    result = DemoResult(config=config, threads=threads, jobs=jobs)
    outputs: dict[tuple[int, str], dict[str, Any]] = {}
    bar = tqdm(total=len(runs), desc="demo runs", unit="run", disable=not config.progress)
    if jobs == 1:
        set_cpu_threads(threads)
        for seed, name, deform, epochs in runs:
            outputs[seed, name] = _train_one(config, seed, name, deform, epochs, config.progress)
            bar.update(1)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, context, set_cpu_threads, (threads,)) as pool:
            futures = {
                pool.submit(_train_one, config, seed, name, deform, epochs, False): (seed, name)
                for seed, name, deform, epochs in runs
            }
            for future in as_completed(futures):
                outputs[futures[future]] = future.result()
                bar.update(1)
                bar.set_postfix_str(f"{futures[future][1]} seed {futures[future][0]} done")
    bar.close()
    names = [name for name, _, _ in config.runs()]
    for name in names:
        for seed in config.seeds:
            run = outputs[seed, name]
            for level, acc in run["accuracy"].items():
                result.accuracy.setdefault(name, {}).setdefault(level, []).append(acc)
            for level, acc in run.get("zeroed", {}).items():
                result.zeroed.setdefault(name, {}).setdefault(level, []).append(acc)
            result.train_time_s.setdefault(name, []).append(run["wall_time_s"])
    first_models = {}
    for name, deform in MODELS.items():
        model = mnist_cnn(deform, **config.model_kwargs(deform))
        model.load_state_dict(outputs[config.seeds[0], name]["model"])
        first_models[name] = model.eval()
    _, tests = distorted_mnist(config.data_root, limit_test=config.limit_test)
    test_digits = next(iter(tests.values()))
    result.spread = sampling_spreads(first_models, test_digits.images, SPREAD_SCALES)
    figure = Path(config.figure) if config.figure else out / "sampling_locations.png"
    result.figure = str(
        sampling_figure(first_models, test_digits.images, test_digits.labels, figure)
    )
    result.wall_time_s = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result.to_json(), indent=1))
    markdown = Path(config.markdown) if config.markdown else out / "results.md"
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(format_report(result))
    return result


def _train_one(
    config: DemoConfig, seed: int, name: str, deform: str | None, epochs: int, progress: bool
) -> dict[str, Any]:
    """One training run (in a worker process or not): accuracies, time and the weights."""
    train, tests = distorted_mnist(
        config.data_root, seed, limit_train=config.limit_train, limit_test=config.limit_test
    )
    seed_everything(seed)
    model = mnist_cnn(deform, **config.model_kwargs(deform))
    run_dir = Path(config.out_dir) / f"{re.sub(r'[^a-z0-9]+', '-', name)}-seed{seed}"
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    train_cfg = TrainConfig(
        epochs=epochs,
        batch_size=config.batch_size,
        seed=seed,
        optim=OptimConfig("adamw", lr=config.lr, weight_decay=config.weight_decay),
        schedule=ScheduleConfig("cosine", warmup_steps=config.warmup_steps),
        output_dir=str(run_dir),
        progress=progress,
        device="cpu",
    )
    trainer = Trainer(
        model,
        train,
        train_cfg,
        eval_sets=tests,
        eval_every=0,
        run_info=_run_info(config, deform),
        name=f"{name} seed {seed}",
    )
    res = trainer.fit()
    zeroed = {}
    if deform is not None and config.zeroed_offsets:
        model.eval()
        with zeroed_offsets(model):
            zeroed = {level: evaluate_accuracy(model, data) for level, data in tests.items()}
    return {
        "accuracy": res.accuracy,
        "zeroed": zeroed,
        "wall_time_s": round(res.wall_time_s, 1),
        "model": model.state_dict(),
    }


def _run_info(config: DemoConfig, deform: str | None) -> dict[str, Any]:
    return {
        "model": "mnist_cnn",
        "model_config": {"deform": deform, **config.model_kwargs(deform)},
        "data": {
            "protocol": "distorted_mnist",
            "train_distortion": asdict(TRAIN_DISTORTION),
            "limit_train": config.limit_train,
        },
    }


def _centred(images: torch.Tensor, scale: float, canvas: int) -> torch.Tensor:
    n = len(images)
    return render(images, torch.full((n,), scale), torch.zeros(n), torch.zeros(n, 2), canvas)


def _activation_cell(canvas: int) -> tuple[int, int]:
    """The body cell nearest to the centre of an undisplaced digit."""
    centre = digit_centre(torch.zeros(1, 2), canvas)[0]
    cell = round(centre[1].item() / MnistCNN.feature_stride)
    return cell, cell


def _locations(model: MnistCNN, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per canvas image of ``images`` ``[N, 1, H, W]``: the sampling points of the activation at
    the centre (image pixels, (y, x)) and their weights."""
    model.eval()
    cell = _activation_cell(images.shape[-1])
    out = []
    with torch.no_grad():
        inputs = model.body_inputs(images)
        for i in range(len(images)):
            one = [t[i : i + 1] for t in inputs]
            points, weights = sampling_locations_from_inputs(model.body_layers(), one, cell)
            out.append((MnistCNN.cell_to_pixel(points), weights))
    return out


def _centre_pixel(canvas: int) -> tuple[float, float]:
    y, x = _activation_cell(canvas)
    return float(MnistCNN.cell_to_pixel(torch.tensor(float(y)))), float(
        MnistCNN.cell_to_pixel(torch.tensor(float(x)))
    )


def sampling_spreads(
    models: dict[str, MnistCNN], digits: torch.Tensor, scales: tuple[float, ...], count: int = 100
) -> dict[str, dict[str, float]]:
    """Mean distance (pixels) of the 729 sampling points from the activation at the digit centre,
    averaged over the first ``count`` digits (``[N, 28, 28]`` uint8) drawn centred at each scale;
    v2 points are weighted by their mask products."""
    canvas = TRAIN_DISTORTION.canvas
    out: dict[str, dict[str, float]] = {}
    centre = torch.tensor(_centre_pixel(canvas))
    for name, model in models.items():
        for scale in scales:
            images = _centred(digits[:count], scale, canvas)
            values = [points_spread(p, centre, w) for p, w in _locations(model, images)]
            out.setdefault(name, {})[f"{scale:g}"] = round(statistics.fmean(values), 2)
    return out


def sampling_figure(
    models: dict[str, MnistCNN],
    digits: torch.Tensor,
    labels: torch.Tensor,
    path: Path,
    classes: tuple[int, ...] = (2, 7),
) -> Path:
    """One row per model, one column per (digit, scale): the 729 sampling locations of the
    activation at the digit centre, on the first test digit of each of ``classes`` (``digits``
    ``[N, 28, 28]``, ``labels`` ``[N]``) drawn centred at each of :data:`FIGURE_SCALES`."""
    canvas = TRAIN_DISTORTION.canvas
    chosen = [int(torch.nonzero(labels == c)[0]) for c in classes if (labels == c).any()]
    chosen = chosen or list(range(min(len(classes), len(digits))))
    rows = []
    for name, model in models.items():
        row = []
        for i in chosen:
            for scale in FIGURE_SCALES:
                img = _centred(digits[i : i + 1], scale, canvas)
                [(points, weights)] = _locations(model, img)
                w = weights if model.config.deform == "v2" else None
                title = f"{name}, scale {scale:g}"
                row.append(Panel(img[0, 0], points, _centre_pixel(canvas), w, title))
        rows.append(row)
    return plot_sampling_locations(
        rows,
        path,
        "729 sampling locations (3 stacked 3x3 layers) of the activation at the "
        "green cross; v2 dots fade with their mask product",
    )


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def held_out_levels() -> list[str]:
    """Test levels outside the training distribution."""
    return [name for name, d in TEST_LEVELS.items() if d != TRAIN_DISTORTION]


def accuracy_table(result: DemoResult) -> str:
    """Markdown table: rows models (then the deformable ones with offsets zeroed), columns test
    levels, cells mean ± std over seeds (percent); the last column is the mean over the held-out
    levels."""
    levels = list(next(iter(result.accuracy.values())).keys())
    held = [lv for lv in levels if lv in held_out_levels()]
    lines = [
        "| model | " + " | ".join(levels) + " | held-out mean |",
        "|---" * (len(levels) + 2) + "|",
    ]
    rows = [*result.accuracy.items()]
    rows += [(ZEROED.format(name=name), acc) for name, acc in result.zeroed.items()]
    for name, per_level in rows:
        n = len(next(iter(per_level.values())))
        held_means = [statistics.fmean(per_level[lv][s] for lv in held) for s in range(n)]
        cells = [_mean_sd(per_level[lv]) for lv in levels] + [_mean_sd(held_means)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread_table(result: DemoResult) -> str:
    """Markdown table of the mean sampling-point distance from the activation (pixels)."""
    scales = list(next(iter(result.spread.values())).keys())
    lines = [
        "| model | " + " | ".join(f"scale {s}" for s in scales) + " |",
        "|---" * (len(scales) + 1) + "|",
    ]
    for name, per_scale in result.spread.items():
        lines.append(f"| {name} | " + " | ".join(f"{per_scale[s]:.1f}" for s in scales) + " |")
    return "\n".join(lines)


def verdicts(result: DemoResult) -> list[str]:
    """Plain sentences, one per (deformable model, plain model) pair: the levels where the
    deformable one does not beat the plain one (means over seeds), or that it beats it on all."""
    out = []
    plains = [name for name in result.accuracy if name not in ("v1", "v2")]
    for name in ("v1", "v2"):
        mine = result.accuracy.get(name)
        for other in plains if mine else []:
            theirs = result.accuracy[other]
            losses = [
                f"{lv} ({statistics.fmean(acc):.1f} vs {statistics.fmean(theirs[lv]):.1f})"
                for lv, acc in mine.items()
                if statistics.fmean(acc) <= statistics.fmean(theirs[lv])
            ]
            if not losses:
                out.append(f"{name} beats {other} on every level.")
            elif len(losses) == len(mine):
                out.append(f"{name} does NOT beat {other} on any level.")
            else:
                out.append(f"{name} does NOT beat {other} on: " + ", ".join(losses) + ".")
    return out


def _options_text(cfg: DemoConfig) -> str:
    parts = [
        f"{name} " + ", ".join(f"{k}={v}" for k, v in cfg.model_options.get(name, {}).items())
        for name in ("v1", "v2")
    ]
    return "; ".join(p.strip() for p in parts)


def format_report(result: DemoResult) -> str:
    """The whole report as markdown (what ``results.md`` holds)."""
    cfg = result.config
    seeds = " ".join(str(s) for s in cfg.seeds)
    times = ", ".join(f"{k} {statistics.fmean(v):.0f} s" for k, v in result.train_time_s.items())
    digits = 100 if cfg.limit_test is None else min(100, cfg.limit_test)
    settings = (
        f"Settings: {cfg.epochs} epochs, batch {cfg.batch_size}, AdamW lr {cfg.lr:g}, weight "
        f"decay {cfg.weight_decay:g}, {cfg.warmup_steps} warm-up steps then cosine, width "
        f"{cfg.width}; the control trains {cfg.plain_long_factor}x as many epochs. "
        f"Deformable model options: {_options_text(cfg)}. "
        f"{result.jobs} parallel job(s) of {result.threads} CPU thread(s); mean training time "
        f"per run: {times}; whole demo {result.wall_time_s:.0f} s. Figure: {result.figure}."
    )
    lines = [
        f"## Test accuracy (%), mean ± std over seeds {seeds}",
        "",
        accuracy_table(result),
        "",
        "Mean over seeds, deformable vs plain:",
        "",
        *[f"- {v}" for v in verdicts(result)],
        "",
        "## Spread of the 729 sampling locations (mean distance from the activation, pixels; "
        f"first seed, {digits} centred test digits)",
        "",
        spread_table(result),
        "",
        settings,
        "",
    ]
    return "\n".join(lines)
