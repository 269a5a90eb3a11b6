"""The DCN papers' ablation tables, reproduced small on digit scenes (issue 12).

Each table is a list of named :class:`~torchdcn.cli.scene_recipe.SceneRecipe` configurations
trained for every seed with the papers' structure (trunk pretrained as a digit classifier, task
model fine-tuned from it; :mod:`torchdcn.cli.scene_recipe`). Every run is scored on the
in-distribution and held-out-geometry splits (``val`` / ``val_heldout`` when tuning, the test
splits for the tables), and every deformable run once more with its learned offsets zeroed.
The "plain, equal time" control trains the plain twin for as many steps as fit in the slowest
deformable run's training time of the same seed.

Jobs run ``--jobs`` at a time (one thread each; default 2 on a 2-core machine). Results land
in ``--out`` as one JSON per run (a rerun skips finished runs), and the table is printed as
Markdown (mean +- std over seeds, AP in percent). Run::

    python benchmarks/ablation_digit_scenes.py --table v2_table1 --seeds 0 1 2
    python benchmarks/ablation_digit_scenes.py --table tune_offset_lr --splits val val_heldout
    python benchmarks/ablation_digit_scenes.py --table v2_table1 --report   # the saved runs' table
    python benchmarks/ablation_digit_scenes.py --table v2_table1 --twin-clock probe  # twin: probed
    python benchmarks/ablation_digit_scenes.py --table v2_table3 --only v2 --probe   # step times
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ablation_clock import probe_seconds_per_step, twin_steps
from ablation_table import print_table

V1_LAST = {"stages": [5], "last_n": None, "modulated": False}


def _deform_last(n: int, modulated: bool = False):
    """The last ``n`` 3x3 convs (ResNet-18: conv5 has 4, conv4 the 4 before)."""
    if n == 0:
        return None
    stages = [5] if n <= 4 else [4, 5]
    return {"stages": stages, "last_n": n, "modulated": modulated}


DETECTION_METRICS = ["AP", "AP50", "mAP@0.7", "APs", "APl"]
SEGMENTATION_METRICS = ["miou", "pixel_accuracy", "mean_accuracy"]
MASK_METRICS = ["AP", "AP50", "APl", "segm_AP", "segm_AP50", "segm_APs", "segm_APl"]


def _tables():
    from torchdcn.cli.scene_recipe import SceneRecipe

    base = SceneRecipe()
    mask = base.replace(model="mask_rcnn", extra={"mask_channels": 64})
    v1 = {"stages": [5], "last_n": 3, "modulated": False}
    v1_c345 = {"stages": [3, 4, 5], "modulated": False}
    v2_c345 = {"stages": [3, 4, 5], "modulated": True}
    tables = {
        # v2 paper Table 1 (Faster R-CNN rows): conv3-conv5 regular / v1 / v2, RoI pooling
        "v2_table1": {
            "plain": base.replace(roi_pool="roi_align"),
            "v1 conv, deform pool": base.replace(
                deform=v1_c345, roi_pool="deform", offset_lr_mult=0.1
            ),
            "v2 conv, mdeform pool": base.replace(deform=v2_c345, roi_pool="mdeform"),
            # the offset multiplier chosen on the validation splits (docs/ablations.md)
            "v1 conv, deform pool, mult 0.01": base.replace(
                deform=v1_c345, roi_pool="deform", offset_lr_mult=0.01
            ),
            "v2 conv, mdeform pool, mult 0.01": base.replace(
                deform=v2_c345, roi_pool="mdeform", offset_lr_mult=0.01
            ),
        },
        # v2 paper Table 3: mimicking on top of the v2 network
        "v2_table3": {
            "v2": base.replace(deform=v2_c345, roi_pool="mdeform"),
            "v2 + mimic (positive)": base.replace(
                deform=v2_c345, roi_pool="mdeform", mimic={"rois": "positive"}
            ),
            # the cosine loss averaged over the mimicked RoIs instead of summed (docs/ablations.md)
            "v2 + mimic (positive, mean loss)": base.replace(
                deform=v2_c345,
                roi_pool="mdeform",
                mimic={"rois": "positive", "reduction": "mean"},
            ),
            "v2 + mimic (positive, no cls)": base.replace(
                deform=v2_c345, roi_pool="mdeform", mimic={"rois": "positive", "cls_weight": 0.0}
            ),
            "v2 + mimic (all)": base.replace(
                deform=v2_c345, roi_pool="mdeform", mimic={"rois": "all"}
            ),
            "v2 + mimic (negative)": base.replace(
                deform=v2_c345, roi_pool="mdeform", mimic={"rois": "negative"}
            ),
            # the other rows of v2 Table 3 with the mean-reduced loss (the summed one diverges)
            **{
                f"v2 + mimic ({rois}, mean loss{', no cls' if no_cls else ''})": base.replace(
                    deform=v2_c345,
                    roi_pool="mdeform",
                    mimic={
                        "rois": rois,
                        "reduction": "mean",
                        **({"cls_weight": 0.0} if no_cls else {}),
                    },
                )
                for rois, no_cls in (("positive", True), ("all", False), ("negative", False))
            },
        },
        # v1 paper Table 1 (Faster R-CNN column): deformable conv in the last n 3x3 convs
        # (offset multiplier 0.01: v1's best on the validation splits, docs/ablations.md)
        "v1_table1": {
            f"last {n}": base.replace(
                deform=_deform_last(n), roi_pool="roi_align", offset_lr_mult=0.01 if n else None
            )
            for n in (0, 1, 2, 3, 6)
        },
        # v1 paper Table 3 (Faster R-CNN rows): RoI pooling plain / deformable, +- deformable conv
        # (offset multiplier 0.01: v1's best on the validation splits, docs/ablations.md)
        "v1_table3": {
            "roi pool": base.replace(roi_pool="roi_pool"),
            # RoIAlign: the bilinear bins without offsets, and the row the equal-time twin extends
            "roi align": base.replace(roi_pool="roi_align"),
            "deform roi pool": base.replace(roi_pool="deform", offset_lr_mult=0.01),
            "v1 conv + roi pool": base.replace(deform=v1, roi_pool="roi_pool", offset_lr_mult=0.01),
            "v1 conv + deform roi pool": base.replace(
                deform=v1, roi_pool="deform", offset_lr_mult=0.01
            ),
        },
        # v1 paper Table 1, the other columns: class-aware RPN, R-FCN (aligned PS pooling, as the
        # Faster R-CNN column uses RoIAlign) and DeepLab (scored by mIoU)
        **{
            f"v1_table1_{column}": {
                f"last {n}": base.replace(
                    model=model,
                    deform=_deform_last(n),
                    offset_lr_mult=0.01 if n else None,
                    **extra,
                )
                for n in (0, 1, 2, 3, 6)
            }
            for column, model, extra in (
                ("rpn", "rpn_detector", {}),
                ("rfcn", "rfcn", {"ps_pool": "ps_align"}),
                ("deeplab", "deeplab", {}),
            )
        },
        # v1 paper Table 3, R-FCN rows: PS RoI pooling plain / deformable, +- deformable conv;
        # aligned PS pooling (bilinear bins, no offsets) as the control
        "v1_table3_rfcn": {
            "ps roi pool": base.replace(model="rfcn", ps_pool="ps"),
            "ps roi align": base.replace(model="rfcn", ps_pool="ps_align"),
            "deform ps roi pool": base.replace(model="rfcn", ps_pool="deform", offset_lr_mult=0.01),
            "v1 conv + ps roi pool": base.replace(
                model="rfcn", deform=v1, ps_pool="ps", offset_lr_mult=0.01
            ),
            "v1 conv + deform ps roi pool": base.replace(
                model="rfcn", deform=v1, ps_pool="deform", offset_lr_mult=0.01
            ),
        },
        # v2 paper Table 1, Mask R-CNN rows (offset multiplier 0.01, chosen on validation); the
        # mask head at this network's small width (64 channels, 4 convs): at the papers' 256 it
        # took ~97 % of a training step (py-spy) and 800 steps ran past 16 minutes
        "v2_table1_mask": {
            "plain": mask.replace(roi_pool="roi_align"),
            "v1 conv, deform pool, mult 0.01": mask.replace(
                deform=v1_c345, roi_pool="deform", offset_lr_mult=0.01
            ),
            "v2 conv, mdeform pool, mult 0.01": mask.replace(
                deform=v2_c345, roi_pool="mdeform", offset_lr_mult=0.01
            ),
        },
        # tuning on the validation splits: the offset learning rate of v1 / v2
        "tune_offset_lr": {
            "plain": base.replace(roi_pool="roi_align"),
            **{
                f"v1 conv, deform pool, mult {m:g}": base.replace(
                    deform=v1_c345, roi_pool="deform", offset_lr_mult=m
                )
                for m in (0.1, 1.0)
            },
            **{
                f"v2 conv, mdeform pool, mult {m:g}{', compensated' if c else ''}": base.replace(
                    deform=v2_c345, roi_pool="mdeform", offset_lr_mult=m, compensate_masks=c
                )
                for m in (0.1, 1.0)
                for c in (False, True)
            },
        },
    }
    return tables


def _run_one(job: dict) -> dict:
    """One (configuration, seed) run in a worker process: train, score, save."""
    import torch

    torch.set_num_threads(job["threads"])
    from torchdcn.analysis.zero_offsets import offset_modules
    from torchdcn.cli.scene_recipe import SceneRecipe, build_scene_model
    from torchdcn.cli.scene_train import evaluate_scenes, train_scene_model

    recipe = SceneRecipe(**job["recipe"])
    scores, reuse = {}, job.get("reuse")
    if reuse is not None:  # a saved model: score the splits it was not scored on
        model = build_scene_model(recipe)
        model.load_state_dict(torch.load(reuse["model"], weights_only=True))
        model.eval()
        info, scores = dict(reuse["info"]), dict(reuse["scores"])
        info["rescored"] = sorted(set(job["splits"]) - {s.split(" ")[0] for s in scores})
    else:
        model, info = train_scene_model(
            recipe, job["seed"], job["scenes"], job["trunk"], steps=job.get("steps")
        )
    deformable = bool(offset_modules(model))  # the modules zero_offsets zeroes
    for split in job["splits"]:
        if split in scores:
            continue
        start = time.perf_counter()
        scores[split] = evaluate_scenes(model, job["scenes"], split)
        if deformable:
            scores[split + " zeroed"] = evaluate_scenes(model, job["scenes"], split, True)
        info.setdefault("eval_seconds", 0.0)
        info["eval_seconds"] += time.perf_counter() - start
    result = {**{k: v for k, v in job.items() if k != "reuse"}, "info": info, "scores": scores}
    if recipe.model in LAYOUTS:
        result["layout"] = LAYOUTS[recipe.model]
    path = Path(job["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    if job.get("save_model"):
        torch.save(model.state_dict(), path.with_suffix(".pt"))
        result["model"] = str(path.with_suffix(".pt"))
    else:  # a model an earlier run saved here is not this run's
        path.with_suffix(".pt").unlink(missing_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def _trunk(job: tuple) -> str:
    import torch

    recipe_dict, seed, cache, threads = job
    torch.set_num_threads(threads)
    from torchdcn.cli.scene_pretrain import pretrain_trunk
    from torchdcn.cli.scene_recipe import SceneRecipe

    return str(pretrain_trunk(SceneRecipe(**recipe_dict), seed, cache, log=print))


#: model layouts changed without a recipe field: a saved run of such a model is reused only
#: when it records this layout (or its saved weights show it); rpn_detector read conv4 before
#: 0f6f967 (conv5, where the deformable layers sit, unused)
LAYOUTS = {"rpn_detector": "conv5"}


def _current_layout(run: dict) -> bool:
    """Whether a saved run was made with the model's current layout (:data:`LAYOUTS`)."""
    layout = LAYOUTS.get(run["recipe"].get("model"))
    if layout is None or run.get("layout") == layout:
        return True
    model = run.get("model")
    if not model or not Path(model).exists():  # an unmarked run without weights: unknown
        return False
    import torch

    keys = torch.load(model, weights_only=True, map_location="cpu").keys()
    return any(k.startswith("neck.") for k in keys)  # rpn_detector's conv5 reduce conv


def _saved_runs(out: Path, recipe):
    """The saved runs of ``recipe`` (a ``SceneRecipe``) under any table of ``out``, made with
    the model's current layout."""
    from torchdcn.cli.scene_recipe import SceneRecipe

    for path in sorted(out.glob("*/*.json")):
        run = json.loads(path.read_text())
        # a recipe saved before a field was added compares with that field's default
        if SceneRecipe(**run["recipe"]) == recipe and _current_layout(run):
            yield run


def _finished(out: Path, job: dict, model: bool = False) -> dict | None:
    """A saved run of the same recipe and seed under ``out`` (any table) scored on every split
    of ``job``, if any; with ``model``, one scored on other splits whose model was saved."""
    from torchdcn.cli.scene_recipe import SceneRecipe

    for run in _saved_runs(out, SceneRecipe(**job["recipe"])):
        same = all(run.get(k) == job.get(k) for k in ("seed", "trunk", "steps"))
        if not same:
            continue
        if not model and set(job["splits"]) <= set(run["scores"]):
            return run
        if model and run.get("model") and Path(run["model"]).exists():
            return run
    return None


def _plan(out: Path, job: dict) -> tuple[dict | None, dict | None]:
    """``(saved run, None)`` when a saved run of ``job`` has every split, else ``(None, job to
    run)``: the job rescores a saved model on the missing splits where there is one."""
    done = _finished(out, job)
    if done is not None:
        return {**done, "name": job["name"]}, None
    saved = _finished(out, job, model=True)
    if saved is not None:
        return None, {**job, "reuse": {k: saved[k] for k in ("model", "info", "scores")}}
    return None, job


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _job(args: argparse.Namespace, name: str, recipe, seed: int, trunk: str, scenes: Path):
    """The job of one (configuration, seed) run (a ``_run_one`` argument)."""
    path = Path(args.out) / args.table / f"{_slug(name)}-seed{seed}.json"
    return {
        "name": name, "recipe": recipe.to_dict(), "seed": seed, "trunk": trunk,
        "scenes": str(scenes), "splits": args.splits, "threads": args.threads,
        "path": str(path), "save_model": args.save_models,
    }  # fmt: skip


def _report(out: Path, args: argparse.Namespace, configs: dict, selected: bool) -> str:
    """The table of the runs saved under ``out`` for ``configs`` (rows of ``args.table``; with
    ``selected``, only those rows at those settings, and their equal-time twins)."""
    from torchdcn.cli.scene_recipe import SceneRecipe

    saved: dict[str, dict[int, dict]] = {}
    for path in sorted((out / args.table).glob("*.json")):
        run = json.loads(path.read_text())
        name, recipe = run["name"], SceneRecipe(**run["recipe"])
        base = name.removesuffix(", equal time")
        if selected:
            if base not in configs or recipe.replace(steps=configs[base].steps) != configs[base]:
                continue
            if base == name and recipe != configs[base]:
                continue
        saved.setdefault(name, {}).setdefault(run["seed"], run)
    for name, recipe in configs.items():
        if name not in saved:  # a row another table ran (the run was reused)
            for run in _saved_runs(out, recipe):
                saved.setdefault(name, {}).setdefault(run["seed"], run)
    order = [*configs, *(n for n in saved if n not in configs)]
    rows = {n: [saved[n][k] for k in sorted(saved[n])] for n in order if n in saved}
    return print_table(rows, args.splits, args.metrics, args.per_seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--scenes", default="runs/scenes", help="digit scenes (generated if absent)"
    )
    parser.add_argument("--out", default="runs/ablations")
    parser.add_argument("--splits", nargs="+", default=["test", "test_heldout"])
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="score columns (default: AP, AP50, mAP@0.7, APs, APl; DeepLab tables: miou, "
        "pixel_accuracy, mean_accuracy; Mask R-CNN tables: box AP, AP50, APl and segm_AP, "
        "segm_AP50, segm_APs, segm_APl)",
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="override every recipe's steps")
    parser.add_argument("--only", nargs="*", default=None, help="configurations to run")
    parser.add_argument("--no-equal-time", action="store_true", help="skip the plain twin")
    parser.add_argument(
        "--report", action="store_true", help="only print the table of the runs saved in --out"
    )
    parser.add_argument(
        "--twin-of", default=None, help="the plain twin matches this run's time (default: slowest)"
    )
    parser.add_argument(
        "--twin-clock",
        choices=("runs", "probe"),
        default="runs",
        help="the twin's time: the runs' recorded training times, or a step-time probe on the "
        "idle pool (ablation_clock.py; for runs that shared the machine)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="only time a training step of each selected row (the --twin-clock probe) and exit",
    )
    parser.add_argument(
        "--twin",
        default=None,
        help="the plain row the twin extends (default: the first plain RoIAlign row)",
    )
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides key=json")
    parser.add_argument(
        "--save-models",
        action="store_true",
        help="also save each trained model's state_dict next to its JSON (RUN.pt)",
    )
    parser.add_argument(
        "--per-seed", action="store_true", help="also print each seed's value (seed order)"
    )
    args = parser.parse_args(argv)

    tables = _tables()
    if args.table not in tables:
        parser.error(f"--table must be one of {sorted(tables)}")
    if args.metrics is None:
        models = {r.model for r in tables[args.table].values()}
        args.metrics = {
            frozenset({"deeplab"}): SEGMENTATION_METRICS,
            frozenset({"mask_rcnn"}): MASK_METRICS,
        }.get(frozenset(models), DETECTION_METRICS)
    configs = tables[args.table]
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only}
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.steps is not None:
        overrides["steps"] = args.steps
    configs = {k: v.replace(**overrides) for k, v in configs.items()}
    if args.report:
        print(_report(Path(args.out), args, configs, bool(args.only or overrides)))
        return 0
    if args.twin is not None and args.twin not in configs:
        parser.error(f"--twin {args.twin!r} is not a row of {args.table}: {list(configs)}")

    scenes = Path(args.scenes)
    if not (scenes / "annotations" / "instances_train.json").exists():
        from torchdcn.data import generate_digit_scenes

        generate_digit_scenes(scenes)
    started = time.perf_counter()
    first = next(iter(configs.values()))
    cache = Path(args.out) / "trunks"
    with ProcessPoolExecutor(args.jobs) as pool:
        trunk_jobs = [(first.to_dict(), s, str(cache), args.threads) for s in args.seeds]
        trunks = dict(zip(args.seeds, pool.map(_trunk, trunk_jobs)))
        if args.probe:  # the step times only (ablation_clock.py), on the first seed's trunk
            seed = args.seeds[0]
            probed = probe_seconds_per_step(
                pool, configs, seed, str(scenes), trunks[seed], args.threads
            )
            for name, seconds in probed.items():
                print(f"{name}: {seconds:.4f} s a step (seed {seed}, {args.threads} thread)")
            return 0
        jobs, results = [], {name: [] for name in configs}
        for name, recipe in configs.items():
            for seed in args.seeds:
                job = _job(args, name, recipe, seed, trunks[seed], scenes)
                done, todo = _plan(Path(args.out), job)
                if done is not None:
                    results[name].append(done)
                else:
                    jobs.append(todo)
        for result in pool.map(_run_one, jobs):
            results[result["name"]].append(result)
            print(f"done {result['name']} seed {result['seed']}: {result['info']}", flush=True)
        # the control: the plain twin trained as long as the slowest deformable run
        plain = [n for n, r in configs.items() if r.deform is None and r.roi_pool == "roi_align"]
        if args.twin is not None:
            plain = [args.twin]
        if plain and not args.no_equal_time:
            name, twin_jobs = f"{plain[0]}, equal time", []
            results[name] = []
            for seed in args.seeds:
                runs = [
                    r for n, rs in results.items() for r in rs
                    if r["seed"] == seed and (args.twin_of is None or n == args.twin_of)
                ]  # fmt: skip
                own = next(r for r in results[plain[0]] if r["seed"] == seed)
                if args.twin_clock == "probe" and seed == args.seeds[0]:
                    timed = {n: configs[n] for n in (plain[0], *(r["name"] for r in runs))}
                    probed = probe_seconds_per_step(
                        pool,
                        timed,
                        seed,
                        str(scenes),
                        trunks[seed],
                        args.threads,
                        cache=Path(args.out) / f"{args.table}.probe.json",
                    )
                    print(f"probed seconds per step: {probed}", flush=True)
                steps, clock = twin_steps(
                    args.twin_clock, runs, own, probed if args.twin_clock == "probe" else None
                )
                recipe = configs[plain[0]].replace(steps=steps)
                job = {**_job(args, name, recipe, seed, trunks[seed], scenes), "twin_clock": clock}
                done, todo = _plan(Path(args.out), job)
                if done is not None:
                    results[name].append(done)
                else:
                    twin_jobs.append(todo)
            for result in pool.map(_run_one, twin_jobs):
                results[name].append(result)
    results = {n: sorted(rs, key=lambda r: r["seed"]) for n, rs in results.items()}
    table = print_table(results, args.splits, args.metrics, args.per_seed)
    print(f"\n# {args.table}: seeds {args.seeds}, {time.perf_counter() - started:.0f} s wall\n")
    print(table)
    (Path(args.out) / f"{args.table}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
