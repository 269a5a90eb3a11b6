"""``results.json`` of ``torchdcn train``: the summary of a run, as strict JSON.

A call that resumed a run after its last step trains nothing, so its
:class:`~torchdcn.engine.TrainResult` has no loss of its own (NaN): the summary then takes the
loss of the run's last logged training window from ``metrics.jsonl`` (the same run's, at the
same step) instead of overwriting the real one with NaN. A number that is still not finite (a
diverged AMP run) is written as ``null``: ``NaN`` is not JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def last_logged_losses(metrics_file: Path, step: int) -> tuple[float | None, dict[str, float]]:
    """``(loss, losses)`` of the last ``train`` event of ``metrics_file`` logged at ``step``;
    ``(None, {})`` when there is none (no file, or a log of another run)."""
    from ..engine.logger import read_metrics

    if not metrics_file.is_file():
        return None, {}
    try:
        events = read_metrics(metrics_file)
    except (OSError, ValueError):
        return None, {}
    for event in reversed(events):
        if event.get("event") == "train":
            if event.get("step") != step:
                return None, {}
            return event.get("loss"), dict(event.get("losses") or {})
    return None, {}


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts and lists too) replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def write_results(out: Path, result: Any, **extra: Any) -> dict[str, Any]:
    """Write ``out/results.json`` for ``result`` (a :class:`~torchdcn.engine.TrainResult`) plus
    ``extra`` fields; returns what was written."""
    loss, losses = result.loss, result.losses
    if result.steps == result.resumed_from_step:  # nothing trained in this call
        loss, losses = last_logged_losses(out / "metrics.jsonl", result.steps)
    summary = {
        "steps": result.steps,
        "loss": loss,
        "accuracy": result.accuracy,
        "wall_time_s": round(result.wall_time_s, 1),
        "resumed_from_step": result.resumed_from_step,
        "checkpoint": str(result.checkpoint),
        **extra,
    }
    if "losses" in extra:
        summary["losses"] = losses
    summary = finite_or_none(summary)
    (out / "results.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    return summary


def accuracy_lines(accuracy: dict[str, float]) -> str:
    """One ``name  NN.NN %`` line per evaluation set."""
    width = max((len(k) for k in accuracy), default=5)
    return "\n".join(f"{k:<{width}}  {v:6.2f} %" for k, v in accuracy.items())
