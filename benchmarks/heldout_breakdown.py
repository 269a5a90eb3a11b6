"""The held-out geometry split by factor: larger digits, smaller digits, more rotation (issue 12).

``val_heldout`` / ``test_heldout`` change two things at once (heights 9-13 or 52-64 px and
rotations of 30-45 deg, against 16-44 px and up to 20 deg in training), and every model of the
ablation tables scores 1-3 AP there at 800 steps (9-13 at 3200). This script draws three
one-factor variants of a held-out split from the same digits (``large``: 52-64 px at the
training rotations; ``small``: 9-13 px at the training rotations; ``rotated``: the training
heights at 30-45 deg) and scores the models that ``ablation_digit_scenes.py --save-models``
saved on each, plus the deformable ones with their offsets zeroed. Run::

    python benchmarks/ablation_digit_scenes.py --table v2_table1 --seeds 0 --splits val \\
        val_heldout --steps 3200 --no-equal-time --only plain ... --out runs/long --save-models
    python benchmarks/heldout_breakdown.py --runs runs/long/v2_table1 --split val_heldout

The factor sets are written under ``--factors`` (deterministic from ``--seed``; drawn again
when ``--images``, ``--seed`` or the geometry differ from those on disk).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

FACTORS = {
    "large": {"heights": ((52.0, 64.0),), "rotation": ((0.0, 20.0),)},
    "small": {"heights": ((9.0, 13.0),), "rotation": ((0.0, 20.0),)},
    "rotated": {"heights": ((16.0, 44.0),), "rotation": ((30.0, 45.0),)},
}
METRICS = ("AP", "AP50", "mAP@0.7")


def factor_sets(root: Path, split: str, images: int, seed: int) -> dict[str, Path]:
    """One scenes folder per factor holding ``split`` (a ``*_heldout`` split), made if absent."""
    from torchdcn.data import generate_digit_scenes
    from torchdcn.data.scene_drawing import Geometry, SceneConfig

    if not split.endswith("_heldout"):
        raise ValueError(f"split must be a held-out split (val_heldout, test_heldout), got {split}")
    dirs = {}
    for name, geometry in FACTORS.items():
        out = root / name
        ann = out / "annotations" / f"instances_{split}.json"
        config = SceneConfig(heldout_geometry=Geometry(**geometry))
        info = json.loads(ann.read_text())["info"] if ann.exists() else None
        same = info is not None and (info["images"], info["seed"]) == (images, seed)
        if not same or SceneConfig.from_dict(info["config"]) != config:
            generate_digit_scenes(out, {split: images}, seed=seed, config=config, overwrite=True)
        dirs[name] = out
    return dirs


def score_run(json_path: Path, dirs: dict[str, Path], split: str) -> dict[str, dict]:
    """``{factor[ zeroed]: scores}`` of the model saved next to ``json_path``."""
    import torch

    from torchdcn.analysis.zero_offsets import offset_modules
    from torchdcn.cli.scene_recipe import SceneRecipe, build_scene_model
    from torchdcn.cli.scene_train import evaluate_scenes

    run = json.loads(json_path.read_text())
    recipe = SceneRecipe(**run["recipe"])
    model = build_scene_model(recipe)
    model.load_state_dict(torch.load(json_path.with_suffix(".pt"), weights_only=True))
    model.eval()
    deformable = bool(offset_modules(model))  # the modules zero_offsets zeroes
    scores = {}
    for name, folder in dirs.items():
        scores[name] = evaluate_scenes(model, folder, split)
        if deformable:
            scores[name + " zeroed"] = evaluate_scenes(model, folder, split, True)
    return {"name": run["name"], "seed": run["seed"], "steps": run["info"]["steps"], **scores}


def _fmt(values: list[float], per_seed: bool = False) -> str:
    """Percent: ``mean ± std`` over seeds (and each seed's value, in seed order)."""
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    text = f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
    if per_seed:
        text += " (" + " / ".join(f"{v:.1f}" for v in values) + ")"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", required=True, help="a folder of saved runs (*.json, *.pt)")
    parser.add_argument("--split", default="val_heldout")
    parser.add_argument("--factors", default="runs/heldout_factors")
    parser.add_argument("--images", type=int, default=200, help="images per factor set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the factor sets' drawing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--per-seed", action="store_true", help="also print each seed's value (seed order)"
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    dirs = factor_sets(Path(args.factors), args.split, args.images, args.seed)
    runs = sorted(p for p in Path(args.runs).glob("*.json") if p.with_suffix(".pt").exists())
    if not runs:
        parser.error(f"--runs {args.runs} has no saved models (run with --save-models)")
    rows: dict[str, list[dict]] = {}
    for path in runs:
        result = score_run(path, dirs, args.split)
        rows.setdefault(result["name"], []).append(result)
        rows[result["name"]].sort(key=lambda r: r["seed"])
        print(f"scored {path.name}", file=sys.stderr, flush=True)
    columns = [(f, m) for f in FACTORS for m in METRICS]
    print("| model | seeds | steps | " + " | ".join(f"{f} {m}" for f, m in columns) + " |")
    print("|---|---|---|" + "---|" * len(columns))
    for name, results in rows.items():
        variants = [""] + ([" zeroed"] if f"{next(iter(FACTORS))} zeroed" in results[0] else [])
        for zeroed in variants:
            cells = [_fmt([r[f + zeroed][m] for r in results], args.per_seed) for f, m in columns]
            label = name + (" (offsets zeroed)" if zeroed else "")
            steps = round(statistics.mean(r["steps"] for r in results))
            print(f"| {label} | {len(results)} | {steps} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
