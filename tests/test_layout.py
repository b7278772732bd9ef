"""The package layout's one rule: lower rooms never import higher ones.

``errors < utils < data < models < runtimes | evaluate | explain | registry < train < synth <
compress < export < bench < pipelines | service | federated < cli``. Rooms on one level (runtimes,
evaluate, explain, registry) do not import each other either. Every import counts, also the lazy ones inside functions and the module names
given to ``importlib.import_module``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import skinedge

PACKAGE = Path(skinedge.__file__).parent

#: Each room's level; a module may import rooms of a lower level only (and its own room).
LEVELS = {
    "errors": -1,  # imported by every room, imports none
    "utils": 0, "configs": 0,
    "data": 1,
    "models": 2,
    "runtimes": 3, "evaluate": 3, "explain": 3, "registry": 3,
    "train": 4,
    "synth": 5,
    "compress": 6,
    "export": 7,
    "bench": 8,
    "pipelines": 9, "service": 9, "federated": 9,
    "cli": 10,
}


def room_of(module: str) -> str | None:
    """``skinedge.export.targets.onnx`` -> ``export``; None for ``skinedge`` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "skinedge" else None


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every ``import``, ``from ... import`` and ``import_module("...")``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name.startswith("skinedge.")]


def layering_violations(package: Path = PACKAGE) -> list[str]:
    problems = []
    for file in sorted(package.rglob("*.py")):
        relative = file.relative_to(package.parent)
        room = relative.parts[1].removesuffix(".py") if len(relative.parts) > 1 else None
        if room not in LEVELS:
            if room not in (None, "__init__", "__main__"):
                problems.append(f"{relative}: room {room!r} has no level in LEVELS")
            continue
        for line, module in imported_modules(ast.parse(file.read_text(), str(file))):
            target = room_of(module)
            if target is None or target == room:
                continue
            if target not in LEVELS:
                problems.append(f"{relative}:{line}: imports {module}, a room with no level")
            elif LEVELS[target] >= LEVELS[room]:
                problems.append(f"{relative}:{line}: {room} (level {LEVELS[room]}) imports "
                                f"{module} (level {LEVELS[target]})")
    return problems


def test_lower_rooms_never_import_higher_ones():
    assert layering_violations() == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule check itself: a lazy upward import and an import_module string are caught."""
    package = tmp_path / "skinedge"
    (package / "data").mkdir(parents=True)
    (package / "export").mkdir()
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "export" / "__init__.py").write_text("from skinedge.data import x\n")
    (package / "data" / "bad.py").write_text(
        "def f():\n    from skinedge.export import y\n"
        "import importlib\nimportlib.import_module('skinedge.export.targets')\n")
    problems = layering_violations(package)
    assert len(problems) == 2, problems
    assert all(p.startswith("skinedge/data/bad.py") for p in problems)


@pytest.mark.parametrize("room", sorted(LEVELS))
def test_every_room_exists(room):
    assert (PACKAGE / room).is_dir() or (PACKAGE / f"{room}.py").is_file()
