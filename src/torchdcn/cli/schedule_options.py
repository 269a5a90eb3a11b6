"""How ``torchdcn train``'s optimizer and schedule options fit together.

- An option the chosen optimizer or schedule does not read (``--momentum`` with AdamW,
  ``--milestones`` or ``--gamma`` with the cosine schedule, ``--min-lr-factor`` with the step
  one) is refused when given (flag or config file), as a model option given to the wrong model
  is: it would be ignored, yet stored in the checkpoint's fingerprint.
- A preset's milestones are fractions of its epochs (the detectors': 8 and 11 of 12, the
  "1x" schedule of Detectron): when ``--milestones`` is not given and ``--epochs`` differs they
  scale with it (``--epochs 6``: 4 and 5.5), so every run decays as its preset means. The
  scaled values are what the run stores; a checkpoint written before they scaled keeps its
  milestones when it is resumed (:func:`resumed_milestones`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .option import UsageError

#: option -> (the setting that decides whether it is read, the values that read it)
READ_BY = {
    "momentum": ("optimizer", ("sgd",)),
    "milestones": ("schedule", ("step",)),
    "gamma": ("schedule", ("step",)),
    "min_lr_factor": ("schedule", ("cosine",)),
}

#: where the unscaled preset milestones are kept in the settings when they were scaled
SCALED_FROM = "milestones_scaled_from"


def check_applicable(settings: dict[str, Any], explicit: dict[str, Any]) -> None:
    """Refuse the options of :data:`READ_BY` given (``explicit``) for an optimizer or schedule
    that does not read them."""
    wrong = []
    for key, (owner, readers) in READ_BY.items():
        if key in explicit and settings[owner] not in readers:
            wrong.append(
                f"--{key.replace('_', '-')} applies to --{owner} {' or '.join(readers)}, not to "
                f"--{owner} {settings[owner]}"
            )
    if wrong:
        raise UsageError("; ".join(wrong) + " (leave it out: it would be ignored)")


def scale_preset_milestones(
    settings: dict[str, Any], preset_defaults: dict[str, Any], explicit: dict[str, Any]
) -> None:
    """With the preset's milestones (not given) and another ``epochs`` than the preset's, set
    ``settings["milestones"]`` to them scaled by ``epochs / preset epochs`` and keep the unscaled
    ones under :data:`SCALED_FROM`."""
    if "milestones" in explicit or "milestones" not in preset_defaults:
        return
    preset_epochs = preset_defaults.get("epochs")
    if not preset_epochs or settings["epochs"] == preset_epochs:
        return
    unscaled = [float(m) for m in preset_defaults["milestones"]]
    settings["milestones"] = [m * settings["epochs"] / preset_epochs for m in unscaled]
    settings[SCALED_FROM] = unscaled


def resumed_milestones(settings: dict[str, Any], checkpoint: str | Path) -> list[float] | None:
    """The unscaled preset milestones when ``checkpoint`` was written with them (a run from
    before they scaled with ``--epochs``) and these settings scaled them; else ``None``
    (resume with the settings' milestones; a missing or unreadable checkpoint is reported by
    the trainer)."""
    from ..engine.checkpoint import CheckpointError, load_checkpoint

    unscaled = settings.get(SCALED_FROM)
    if unscaled is None or not Path(checkpoint).is_file():
        return None
    try:
        fingerprint = load_checkpoint(checkpoint).get("fingerprint") or {}
    except CheckpointError:
        return None
    stored = ((fingerprint.get("train") or {}).get("schedule") or {}).get("milestones")
    return list(unscaled) if stored == unscaled else None
