"""Where a run reports: a JSONL file of metrics, optionally TensorBoard, and a tqdm progress bar.

``metrics.jsonl`` gets one JSON object per line: ``{"event": "train", "step": ..., "epoch": ...,
"loss": ..., "lr": ..., "img_per_s": ..., "time": ...}`` every ``log_every`` steps (``lr``: the
base rate of the last step, ``optim.lr`` times the schedule's factor; with offset predictors on
another multiplier also ``"lr_groups": {"lr_mult=0.1": ..., "lr_mult=1": ...}``), ``{"event":
"eval", ..., "accuracy": {set name: percent}}`` after each epoch, and ``start`` / ``resume`` /
``end`` events. Only the main process of a distributed run writes.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm


class MetricLogger:
    """Appends events to ``<output_dir>/metrics.jsonl`` (and TensorBoard scalars if asked).

    Args:
        output_dir: folder of the log (``None``: events are dropped).
        enabled: ``False`` on the non-main processes of a distributed run.
        tensorboard: also write scalars to ``<output_dir>/tb`` (warns if TensorBoard is missing).
    """

    def __init__(
        self, output_dir: str | Path | None, enabled: bool = True, tensorboard: bool = False
    ) -> None:
        self.path = (
            None if output_dir is None or not enabled else Path(output_dir) / "metrics.jsonl"
        )
        self._tb = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(self.path.parent / "tb"))
                except ImportError:
                    warnings.warn(
                        "TensorBoard logging asked for but the tensorboard package is missing "
                        "(pip install tensorboard); logging to metrics.jsonl only",
                        stacklevel=2,
                    )

    def log(self, event: str, **fields: Any) -> None:
        """Append ``{"event": event, "time": <unix seconds>, **fields}`` as one line."""
        if self.path is None:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")
        if self._tb is not None and "step" in fields:
            for key, value in _scalars(fields):
                self._tb.add_scalar(f"{event}/{key}", value, fields["step"])

    def close(self) -> None:
        """Flush and close TensorBoard (the JSONL file is closed after every line)."""
        if self._tb is not None:
            self._tb.close()


def _scalars(fields: dict, prefix: str = ""):
    for key, value in fields.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and key not in ("step", "epoch"):
            yield f"{prefix}{key}", value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every event of a ``metrics.jsonl`` file, in order."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar over optimizer steps (to stderr; silent when ``enabled`` is False)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
        file=sys.stderr,
    )
