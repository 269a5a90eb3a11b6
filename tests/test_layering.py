"""The import direction of the package, read from the source with ``ast`` (nothing is imported).

Layers, lowest first: ``ops`` -> ``nn`` -> ``models`` -> ``data`` / ``engine`` / ``analysis`` ->
``cli``. A module may import from its own layer or a lower one, never from a higher one; ``nn``
uses only the public face of ``ops`` (the package, no submodule); the task packages
``models.classification`` / ``detection`` / ``segmentation`` never import each other, and
``models.backbones`` imports none of them. Every import counts, function-local and
``TYPE_CHECKING`` ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "torchdcn"
LAYERS = {"ops": 0, "nn": 1, "models": 2, "data": 3, "engine": 3, "analysis": 3, "cli": 4}
TASKS = ("classification", "detection", "segmentation")


def module_name(path: Path) -> str:
    parts = ["torchdcn", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute dotted name)`` of every torchdcn module or name ``path`` imports
    (``from .x import y`` gives ``torchdcn.<pkg>.x.y``: ``y`` may be a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found += [(node.lineno, f"{origin}.{alias.name}") for alias in node.names]
    return [(line, target) for line, target in found if target.startswith("torchdcn.")]


def layer(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def task(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "models" else None


SOURCES = sorted(PACKAGE.rglob("*.py"))
IDS = [str(p.relative_to(PACKAGE)) for p in SOURCES]


def test_every_layer_is_known():
    """A new top-level package must be placed in :data:`LAYERS` (and in docs/architecture.md)."""
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_imports_point_down(path):
    source = layer(module_name(path))
    if source is None:  # torchdcn/__init__.py, __main__.py: the package's entry points
        return
    for line, target in imported_modules(path):
        target_layer = layer(target)
        if target_layer is not None:
            assert LAYERS[target_layer] <= LAYERS[source], (
                f"{path.name}:{line} ({source}) imports {target} from the higher layer "
                f"{target_layer}"
            )


@pytest.mark.parametrize("path", [p for p in SOURCES if layer(module_name(p)) == "nn"])
def test_nn_uses_only_the_public_face_of_ops(path):
    for line, target in imported_modules(path):
        if layer(target) == "ops":
            parts = target.split(".")
            assert len(parts) == 3 and not parts[2].startswith("_"), (
                f"{path.name}:{line} imports {target}: import public names from torchdcn.ops "
                f"itself (``from ..ops import deform_conv2d``), not from its modules"
            )


@pytest.mark.parametrize("path", [p for p in SOURCES if layer(module_name(p)) == "models"])
def test_model_tasks_stand_side_by_side(path):
    source = task(module_name(path))
    for line, target in imported_modules(path):
        target_task = task(target)
        if target_task in TASKS and source != target_task:
            assert source not in (*TASKS, "backbones"), (
                f"{path.name}:{line} (models.{source}) imports {target}: task packages only "
                f"read backbones, and backbones read no task"
            )


def test_the_checks_can_fail():
    """The walkers see relative, absolute and function-local imports."""
    tree = PACKAGE / "nn" / "deform_conv.py"
    targets = {t for _, t in imported_modules(tree)}
    assert "torchdcn.ops.deform_conv2d" in targets
    assert (
        layer("torchdcn.cli.main") == "cli" and task("torchdcn.models.detection.rpn") == "detection"
    )
    cli = {t for _, t in imported_modules(PACKAGE / "cli" / "main.py")}
    assert any(t.startswith("torchdcn.engine") for t in cli)  # imported inside functions
