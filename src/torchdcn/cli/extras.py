"""The optional packages a command needs, checked before it starts (``pip install .`` brings
torch and numba only; the figures need the ``plot`` extra, COCO-format data the ``coco`` one).

A missing package fails the command at once with the extras to install, not after minutes of
training at the import that needs it."""

from __future__ import annotations

import importlib.util
from typing import Any

#: module -> (extra that installs it, what needs it)
PACKAGES = {
    "matplotlib": ("plot", "the figures"),
    "pycocotools": ("coco", "COCO-format data and its metrics"),
    "PIL": ("coco", "reading and writing images"),
}


def needed(command: str, s: dict[str, Any]) -> list[str]:
    """The modules of :data:`PACKAGES` that ``command`` with settings ``s`` imports."""
    if command == "demo":
        part = s.get("part", "all")
        modules = ["matplotlib"]  # both parts draw their figures
        if part in ("all", "detection"):
            modules += ["pycocotools", "PIL"]  # digit scenes are COCO data
        return modules
    if command == "data":  # digit scenes: PNG images, RLE masks
        return ["pycocotools", "PIL"]
    if command in ("detect", "segment"):  # images in and out (a Mask R-CNN's RLEs: pycocotools)
        return ["PIL"]
    return []


def missing_message(command: str, s: dict[str, Any]) -> str | None:
    """``None`` when every package ``command`` needs is importable, else the error to print."""
    absent = [m for m in needed(command, s) if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    extras = sorted({PACKAGES[m][0] for m in absent})
    uses = "; ".join(f"{m} ({PACKAGES[m][1]})" for m in absent)
    return (
        f"needs packages that are not installed: {uses}; install them with "
        f"pip install 'torchdcn[{','.join(extras)}]'"
    )
