"""Training checkpoints: written atomically, verified on reading, refused when they do not match.

A checkpoint is a ``torch.save`` file (``torch.load`` reads it) holding a dict with ``format``,
``version``, ``fingerprint`` (the settings that decide the weights), ``checksum`` (SHA-256 of
everything else), and the state: ``model``, ``optimizer``, ``scaler``, ``step``, ... Writing goes
to a temporary file in the same folder, flushed to disk, then renamed over the target, so a run
killed at any moment leaves either the previous checkpoint or the new one, never half of one.
Reading checks the format, the checksum (torch's zip container does not notice flipped bytes
inside tensor data) and the fingerprint, and raises :class:`CheckpointError` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

FORMAT = "torchdcn.train-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, corrupt or not a torchdcn training checkpoint."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint belongs to a run with different settings than the one resuming it.

    Attributes:
        differences: ``["key: old -> new", ...]`` (:func:`fingerprint_diff`).
    """

    def __init__(self, message: str, differences: list[str] | None = None) -> None:
        super().__init__(message)
        self.differences = list(differences or [])


def _digest(obj: Any, h: Any) -> None:
    """Feed ``obj`` (nested dicts, lists, tuples, tensors, scalars) to the hash ``h``."""
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _digest(key, h)
            _digest(value, h)
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}".encode())
        for value in obj:
            _digest(value, h)
    else:
        h.update(f"S{type(obj).__name__}:{obj!r}".encode())


def checksum(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's contents, its ``checksum`` entry left out."""
    h = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != "checksum"}, h)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], fingerprint: dict) -> Path:
    """Write ``state`` (plus format, version, fingerprint and checksum) to ``path`` atomically.

    Returns the path written. The temporary file is ``.<name>.<random>.tmp`` beside it and is
    removed on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, **state}
    full["checksum"] = checksum(full)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(full, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # makes the rename durable; not possible on every platform (Windows), where it is skipped
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | os.PathLike, fingerprint: dict | None = None, map_location: str = "cpu"
) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        fingerprint: the settings of the run that resumes (``None``: do not compare).
        map_location: where tensors are loaded.

    Raises:
        CheckpointError: missing, unreadable (truncated, corrupt), not a torchdcn checkpoint, or a
            checksum that does not match the contents.
        CheckpointMismatchError: ``fingerprint`` differs from the checkpoint's; the message lists
            every differing setting.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder; name the file in it (e.g. {path / 'last.pt'})"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt?): {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a torchdcn training checkpoint (no '{FORMAT}' tag)")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state.get('version')}; this torchdcn reads "
            f"version {VERSION}"
        )
    if state.get("checksum") != checksum(state):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its contents do not match the checksum stored in it"
        )
    if fingerprint is not None:
        diffs = fingerprint_diff(state["fingerprint"], fingerprint)
        if diffs:
            raise CheckpointMismatchError(
                f"checkpoint {path} was written by a run with other settings; resuming would not "
                "continue the same run. Differences (checkpoint -> now): " + "; ".join(diffs),
                diffs,
            )
    return state


def fingerprint_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["key: old -> new", ...]`` for every leaf setting that differs (nested keys dotted)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += fingerprint_diff(a, b, f"{name}.")
        elif _canon(a) != _canon(b):
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
