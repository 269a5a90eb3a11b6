"""The equal-time twin's clock for ``ablation_digit_scenes.py``: how many steps the plain twin
gets.

``runs`` (the default) takes the recorded training times: the slowest deformable run's
``train_seconds`` over the plain run's seconds per step, both of the same seed. Those are only a
cost when the runs had the machine to themselves in the same conditions; a run paused or sharing
the cores with other work records its wall time, not its cost.

``probe`` times the training step itself, on an otherwise idle pool: each configuration trains
``short`` and ``short + probe`` steps from its trunk (one process at a time, one thread, the
configurations alternated twice), and the difference over ``probe`` steps is its seconds per
step, free of the set-up and first-call costs. The twin gets ``steps x slowest / plain`` steps.
"""

from __future__ import annotations

import json
import statistics
from concurrent.futures import Executor
from pathlib import Path


def _probe(job: tuple) -> float:
    """Seconds of one training run of ``steps`` steps (a worker process, one thread)."""
    import torch

    recipe_dict, seed, scenes, trunk, steps, threads = job
    torch.set_num_threads(threads)
    from torchdcn.cli.scene_recipe import SceneRecipe
    from torchdcn.cli.scene_train import train_scene_model

    _, info = train_scene_model(SceneRecipe(**recipe_dict), seed, scenes, trunk, steps=steps)
    return info["train_seconds"]


def probe_seconds_per_step(
    pool: Executor,
    recipes: dict,
    seed: int,
    scenes: str,
    trunk: str,
    threads: int = 1,
    probe: int = 60,
    short: int = 10,
    rounds: int = 2,
    cache: str | Path | None = None,
) -> dict[str, float]:
    """``{name: seconds per step}`` of each ``recipes`` entry (``SceneRecipe``), measured as
    above. Jobs go to ``pool`` one at a time, so nothing else of this pool runs beside them.

    ``cache``: a JSON file that keeps the result with what was probed; a later call with the
    same recipes, seed, trunk and probe settings reads it instead of measuring again."""
    if probe < 1 or short < 1 or rounds < 1:
        raise ValueError(f"probe, short and rounds must be >= 1, got {probe}, {short}, {rounds}")
    key = {
        "recipes": {name: recipe.to_dict() for name, recipe in recipes.items()},
        "seed": seed, "trunk": trunk, "threads": threads, "probe": probe, "short": short,
        "rounds": rounds,
    }  # fmt: skip
    if cache is not None and Path(cache).exists():
        saved = json.loads(Path(cache).read_text())
        if saved["key"] == key:
            return saved["seconds_per_step"]
    times: dict[str, list[float]] = {name: [] for name in recipes}
    for _ in range(rounds):
        for name, recipe in recipes.items():
            jobs = [
                (recipe.to_dict(), seed, scenes, trunk, n, threads) for n in (short, short + probe)
            ]
            brief, long = (pool.submit(_probe, job).result() for job in jobs)
            times[name].append((long - brief) / probe)
    result = {name: statistics.median(values) for name, values in times.items()}
    if min(result.values()) <= 0:  # the long run no slower than the short one: noise won
        raise RuntimeError(f"the probe measured no step time ({times}): raise probe")
    if cache is not None:
        Path(cache).write_text(json.dumps({"key": key, "seconds_per_step": result, "runs": times}))
    return result


def twin_steps(
    clock: str,
    runs: list[dict],
    own: dict,
    probed: dict[str, float] | None = None,
) -> tuple[int, dict]:
    """The plain twin's step count for one seed, and what it was computed from.

    ``runs``: that seed's saved runs (each with ``name`` and ``info``); ``own``: the plain run
    the twin extends; ``probed``: :func:`probe_seconds_per_step`'s result (``clock="probe"``)."""
    if clock == "runs":
        slowest = max(r["info"]["train_seconds"] for r in runs)
        steps = round(slowest / own["info"]["seconds_per_step"])
        return steps, {"clock": "runs", "slowest_train_seconds": slowest}
    if clock != "probe":
        raise ValueError(f"clock must be 'runs' or 'probe', got {clock!r}")
    if not probed or own["name"] not in probed:
        raise ValueError(f"the probe has no time for the plain row {own['name']!r}: {probed}")
    # the slowest run's steps at its probed step time, in the plain row's probed steps
    costs = {r["name"]: r["info"]["steps"] * probed[r["name"]] for r in runs if r["name"] in probed}
    slowest = max(costs, key=costs.get)
    steps = round(costs[slowest] / probed[own["name"]])
    return steps, {"clock": "probe", "seconds_per_step": probed, "slowest": slowest}
