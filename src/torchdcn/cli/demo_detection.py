"""The detection part of ``torchdcn demo``: a plain and a v2 Faster R-CNN on digit scenes.

Protocol (the lead's recipe, :mod:`.scene_recipe`, at a size a 2-core CPU runs in minutes):

1. digit scenes (:func:`~torchdcn.data.generate_digit_scenes`, seeded): ``train_images`` training
   scenes, ``test_images`` test scenes at the training geometry (``test``) and as many at the
   held-out geometry (``test_heldout``: digits smaller and larger than any in training, rotated
   further). Written once under ``<out_dir>/scenes`` and reused while the counts, seed and
   generator settings are the same;
2. the ResNet-18 trunk (``base_channels`` 16) pretrained as a digit classifier for
   ``pretrain_steps`` steps (:func:`~.scene_pretrain.pretrain_trunk`, cached under
   ``<out_dir>/trunks``), shared by both detectors;
3. two Faster R-CNNs fine-tuned from it for ``steps`` steps with the same seed: **plain**
   (RoIAlign) and **v2** (modulated deformable convs in conv3-conv5, modulated deformable RoI
   pooling; the v2 paper's Table 1 rows), in two worker processes of one thread each;
4. COCO box AP of both on both test splits (:func:`~.scene_train.evaluate_scenes`: AP, AP50,
   APs / APl with the digit-scenes size buckets), the table in ``results.md``;
5. ``<name>.pt``: each detector's ``state_dict`` (``build_scene_model(config.recipes()[name])``
   loads it); ``detections.png``: both models' detections on the same held-out test images,
   ground truth drawn too (:mod:`torchdcn.analysis.detection_panels`); ``roi_bins.png``: the
   deformed RoI bins of v2's detection of the largest digit on the held-out images with the
   largest digits (v1 paper Fig. 7; :mod:`torchdcn.analysis.roi_bins` and
   :mod:`torchdcn.analysis.figures`).

The defaults of :class:`DetectionDemoConfig` are what ``make demo`` runs; the ``--detection-*``
options of ``torchdcn demo`` (:data:`DETECTION_DEMO_OPTIONS`) take their defaults from it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .option import Option
from .scene_recipe import SCENE_AREA_RANGES, SceneRecipe, build_scene_model

#: the two detectors: the v2 paper's Table 1 rows (Faster R-CNN, conv3-conv5)
DETECTORS: dict[str, dict[str, Any]] = {
    "plain": {"roi_pool": "roi_align"},
    "v2": {"deform": {"stages": [3, 4, 5], "modulated": True}, "roi_pool": "mdeform"},
}
#: the test splits, with the names the table gives them
SPLITS = {"test": "test (training geometry)", "test_heldout": "test_heldout (held-out geometry)"}
#: the table's metrics (COCO box metrics of :func:`~.scene_train.evaluate_scenes`)
METRICS = ("AP", "AP50", "APs", "APl")


@dataclass
class DetectionDemoConfig:
    """Settings of the detection demo (the defaults are what ``make demo`` runs; change them here).

    Attributes:
        seed: the seed of the scenes, the trunk and both detectors.
        pretrain_steps: steps of trunk pretraining (digit classification, batch 64).
        steps: fine-tuning steps of each detector (batch 4).
        train_images: training scenes.
        test_images: scenes of each test split (``test`` and ``test_heldout``).
        data_root: folder holding ``mnist5k/`` (``None``: the default search).
        out_dir: results, figures, the scenes and the trunk cache.
        jobs: worker processes, at most one per detector (0: one per CPU core); each uses
            ``threads`` threads.
        threads: CPU threads per detector (0: 1 when ``jobs > 1``, else torch's default).
        figure_images: held-out test images in ``detections.png`` and in ``roi_bins.png``.
        score_thresh: the figures draw detections scoring at least this.
        progress: print what is going on to stderr.
    """

    seed: int = 0
    pretrain_steps: int = 600
    steps: int = 500
    train_images: int = 600
    test_images: int = 200
    data_root: str | None = None
    out_dir: str = "runs/demo/detection"
    jobs: int = 0
    threads: int = 0
    figure_images: int = 4
    score_thresh: float = 0.3
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "train_images", "test_images", "figure_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("seed", "pretrain_steps", "jobs", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")

    def recipes(self) -> dict[str, SceneRecipe]:
        """The :class:`SceneRecipe` of each detector at this config's step counts."""
        return {
            name: SceneRecipe(pretrain_steps=self.pretrain_steps, steps=self.steps, **changes)
            for name, changes in DETECTORS.items()
        }

    def image_counts(self) -> dict[str, int]:
        """Scenes per split."""
        return {"train": self.train_images, **{s: self.test_images for s in SPLITS}}


_D = DetectionDemoConfig()
#: ``torchdcn demo`` options of the detection part (defaults: :class:`DetectionDemoConfig`)
DETECTION_DEMO_OPTIONS = (
    Option(
        "detection-pretrain-steps",
        int,
        _D.pretrain_steps,
        "detection part: steps of trunk pretraining as a digit classifier (cached)",
        at_least=0,
    ),
    Option(
        "detection-steps",
        int,
        _D.steps,
        "detection part: fine-tuning steps per detector",
        at_least=1,
    ),
    Option(
        "detection-train-images",
        int,
        _D.train_images,
        "detection part: training scenes",
        at_least=1,
    ),
    Option(
        "detection-test-images",
        int,
        _D.test_images,
        "detection part: scenes of each test split (training and held-out geometry)",
        at_least=1,
    ),
)


@dataclass
class DetectionDemoResult:
    """``scores[model][split][metric]`` (fractions), per-model training info, timings, files."""

    config: DetectionDemoConfig
    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    jobs: int = 1
    threads: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _log(config: DetectionDemoConfig, message: str) -> None:
    if config.progress:
        print(f"[demo detection] {message}", file=sys.stderr, flush=True)


def ensure_scenes(config: DetectionDemoConfig, scenes_dir: Path) -> list[str]:
    """Generate the splits under ``scenes_dir`` whose JSON is missing or was written with other
    counts, seed or generator settings; returns the splits generated (``[]``: all reused)."""
    from ..data.digit_scenes import SceneConfig, generate_digit_scenes, split_paths

    wanted = json.loads(json.dumps(asdict(SceneConfig())))
    todo = {}
    for split, count in config.image_counts().items():
        ann_file = split_paths(scenes_dir, split)[0]
        try:
            info = json.loads(ann_file.read_text())["info"]
            same = (info["images"], info["seed"], info["config"]) == (count, config.seed, wanted)
        except (OSError, ValueError, KeyError):
            same = False
        if not same:
            todo[split] = count
    if todo:
        generate_digit_scenes(scenes_dir, todo, config.seed, root=config.data_root, overwrite=True)
    return list(todo)


def _train_one(config: DetectionDemoConfig, name: str, scenes: str, trunk: str) -> dict[str, Any]:
    """Fine-tune one detector and score it on both test splits (in a worker process or not)."""
    from .scene_train import evaluate_scenes, train_scene_model

    recipe = config.recipes()[name]
    model, info = train_scene_model(recipe, config.seed, scenes, trunk)
    start = time.perf_counter()
    scores = {split: evaluate_scenes(model, scenes, split) for split in SPLITS}
    info["eval_seconds"] = time.perf_counter() - start
    return {"scores": scores, "info": info, "state": model.state_dict()}


def run_detection_demo(config: DetectionDemoConfig) -> DetectionDemoResult:
    """Scenes, trunk, both detectors, scores, table and figures (see the module docstring)."""
    from ..engine.distributed import set_cpu_threads
    from .scene_pretrain import pretrain_trunk

    start = time.perf_counter()
    out = Path(config.out_dir)
    scenes = out / "scenes"
    names = list(DETECTORS)
    jobs = min(config.jobs or os.cpu_count() or 1, len(names))
    threads = config.threads or (1 if jobs > 1 else torch.get_num_threads())
    result = DetectionDemoResult(config=config, jobs=jobs, threads=threads)

    tick = time.perf_counter()
    made = ensure_scenes(config, scenes)
    result.seconds["scenes"] = round(time.perf_counter() - tick, 1)
    _log(config, f"scenes: {'generated ' + ', '.join(made) if made else 'reused'} ({scenes})")

    tick = time.perf_counter()
    _log(config, f"trunk: {config.pretrain_steps} pretraining steps (cached in {out / 'trunks'})")
    saved = torch.get_num_threads()
    set_cpu_threads(jobs * threads)  # nothing else runs yet: the trunk takes every thread
    try:
        recipe = config.recipes()[names[0]]
        trunk = pretrain_trunk(
            recipe, config.seed, out / "trunks", config.data_root,
            log=lambda m: _log(config, m),
        )  # fmt: skip
    finally:
        set_cpu_threads(saved)
    result.seconds["pretrain"] = round(time.perf_counter() - tick, 1)
    _log(config, f"trunk: {trunk} ({result.seconds['pretrain']:.0f} s)")

    tick = time.perf_counter()
    outputs: dict[str, dict[str, Any]] = {}
    _log(config, f"training {', '.join(names)}: {config.steps} steps each, {jobs} job(s)")
    if jobs == 1:
        set_cpu_threads(threads)
        try:
            for name in names:
                outputs[name] = _train_one(config, name, str(scenes), str(trunk))
        finally:
            set_cpu_threads(saved)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, context, set_cpu_threads, (threads,)) as pool:
            futures = {
                pool.submit(_train_one, config, name, str(scenes), str(trunk)): name
                for name in names
            }
            for future in as_completed(futures):
                outputs[futures[future]] = future.result()
                _log(config, f"{futures[future]} done")
    result.seconds["train_and_eval"] = round(time.perf_counter() - tick, 1)

    models = {}
    for name in names:
        result.scores[name] = outputs[name]["scores"]
        result.info[name] = dict(outputs[name]["info"])
        model = build_scene_model(config.recipes()[name])
        model.load_state_dict(outputs[name]["state"])
        models[name] = model.eval()
        out.mkdir(parents=True, exist_ok=True)
        torch.save(outputs[name]["state"], out / f"{name}.pt")
        result.files[f"{name} weights"] = str(out / f"{name}.pt")

    tick = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    result.files["detections"] = str(
        detections_figure(models, scenes, out / "detections.png", config)
    )
    roi = roi_bins_figure(models["v2"], scenes, out / "roi_bins.png", config)
    if roi is not None:
        result.files["roi_bins"] = str(roi)
    result.seconds["figures"] = round(time.perf_counter() - tick, 1)
    result.seconds["total"] = round(time.perf_counter() - start, 1)
    result.files["markdown"] = str(out / "results.md")
    (out / "results.json").write_text(json.dumps(result.to_json(), indent=1))
    (out / "results.md").write_text(format_detection_report(result))
    return result


# -- figures -----------------------------------------------------------------------------------


def _heldout_samples(scenes: Path, count: int, largest: bool = False) -> list[tuple]:
    """``(index, image [3, H, W], target)`` of ``count`` held-out test scenes: the first ones, or
    (``largest``) those holding the largest digits."""
    from .scene_train import load_split

    _, samples = load_split(str(scenes), "test_heldout")
    order = list(range(len(samples)))
    if largest:

        def biggest(i: int) -> float:
            boxes = samples[i][1]["boxes"]
            if not len(boxes):
                return 0.0
            return float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).max())

        order.sort(key=biggest, reverse=True)
    return [(i, *samples[i]) for i in order[:count]]


@torch.no_grad()
def detections_figure(
    models: dict[str, torch.nn.Module], scenes: Path, path: Path, config: DetectionDemoConfig
) -> Path:
    """``path``: every model's detections on the first ``config.figure_images`` held-out test
    scenes, one row per model, ground truth dashed."""
    from ..analysis.detection_panels import draw_detection_panels

    picked = _heldout_samples(scenes, config.figure_images)
    images = [image for _, image, _ in picked]
    detections = {name: model(images) for name, model in models.items()}
    return draw_detection_panels(
        images,
        detections,
        path,
        targets=[target for _, _, target in picked],
        class_names=[str(d) for d in range(10)],
        score_thresh=config.score_thresh,
        titles=[f"test_heldout image {i + 1}" for i, _, _ in picked],
        suptitle=(
            f"detections scoring >= {config.score_thresh:g} (green: matches a ground-truth box "
            "of its class at IoU >= 0.5, red: does not); ground truth: blue, dashed"
        ),
    )


def roi_bins_figure(
    model: torch.nn.Module, scenes: Path, path: Path, config: DetectionDemoConfig
) -> Path | None:
    """``path``: the deformed RoI bins of ``model`` (v1 paper Fig. 7,
    :func:`~torchdcn.analysis.roi_bins_overlay.roi_bins_overlay`)
    on the ``config.figure_images`` held-out test scenes with the largest digits; ``None`` if
    the model has no deformable RoI pooling."""
    from ..analysis.figures import draw_overlays
    from ..analysis.roi_bins_overlay import roi_bins_overlay

    row = []
    for i, image, target in _heldout_samples(scenes, config.figure_images, largest=True):
        overlay = roi_bins_overlay(
            model, image, f"test_heldout image {i + 1}", target["boxes"], target["labels"],
            prefer="largest", label_text=lambda label: f"digit {label - 1}",
        )  # fmt: skip
        if overlay is not None:
            row.append(overlay)
    if not row:
        return None
    return draw_overlays(
        [row],
        path,
        "v2: the 7x7 bins of modulated deformable RoI pooling for the detection of the largest "
        "digit (yellow; regular bins grey, dashed); dots: bin centres, by |d score / d offset|",
    )


# -- report ------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return "n/a" if value < 0 else f"{100 * value:.1f}"


def detection_table(result: DetectionDemoResult) -> str:
    """Markdown: one row per (model, test split), columns :data:`METRICS` in percent (``n/a``:
    no ground truth in that size bucket)."""
    lines = ["| model | split | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for split, split_name in SPLITS.items():
        for name, per_split in result.scores.items():
            cells = [_pct(per_split[split].get(m, -1.0)) for m in METRICS]
            lines.append(f"| {name} | {split_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_detection_report(result: DetectionDemoResult) -> str:
    """The detection report as markdown (what ``results.md`` holds)."""
    cfg = result.config
    times = ", ".join(
        f"{name} {info['train_seconds']:.0f} s training + {info.get('eval_seconds', 0):.0f} s "
        "evaluation"
        for name, info in result.info.items()
    )
    s = result.seconds
    small, large = SCENE_AREA_RANGES
    lines = [
        f"## Digit-scene detection: plain vs v2 Faster R-CNN (seed {cfg.seed}), box AP (%)",
        "",
        detection_table(result),
        "",
        f"APs / APl: digits whose mask covers under {small:g} / over {large:g} pixels (the "
        "digit-scenes size buckets; n/a: no such digit in the split).",
        "",
        f"Settings: {cfg.train_images} training scenes, {cfg.test_images} per test split; "
        "ResNet-18 trunk (16 base channels) pretrained as a digit classifier for "
        f"{cfg.pretrain_steps} steps, each detector fine-tuned for {cfg.steps} steps (batch 4). "
        f"{result.jobs} parallel job(s) of {result.threads} CPU thread(s): {times}. Scenes "
        f"{s.get('scenes', 0):.0f} s, trunk {s.get('pretrain', 0):.0f} s, detectors "
        f"{s.get('train_and_eval', 0):.0f} s, figures {s.get('figures', 0):.0f} s; detection "
        f"part {s.get('total', 0):.0f} s.",
        "",
        "Files: " + ", ".join(f"{k} {v}" for k, v in result.files.items() if k != "markdown"),
        "",
    ]
    return "\n".join(lines)
