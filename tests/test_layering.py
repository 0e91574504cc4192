"""The layering rules of DESIGN.md §1–2: engine/ never needs bot/, discord or telegram, and no
module inside bot/ or engine/ imports itself back through others (no import cycles)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "engine")


def test_engine_imports_without_chat_packages() -> None:
    modules = [m.name for m in pkgutil.walk_packages(engine.__path__, "engine.")]
    assert "engine.generate" in modules and "engine.sampling.samplers" in modules
    code = (
        "import sys\n"
        "for name in ('bot', 'discord', 'telegram'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of bot/ and engine/ by dotted name (a package by its __init__.py)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in it: at the top, inside functions and under
    TYPE_CHECKING alike (a lazy import hides a cycle; it does not remove it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in modules else base)
    return {target for target in found if target in modules and target != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    names = set(files)
    return {name: imports_of(path, name, names) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_in_bot_or_engine() -> None:
    graph = import_graph()
    assert "bot.discord.draw" in graph and "engine.prompting.syntax" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        ({"a.py": "from bot import b\n", "b.py": "import bot.a\n"}, True),
        (  # a lazy import under TYPE_CHECKING or in a function is still a cycle
            {
                "a.py": "from bot.b import B\n",
                "b.py": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from bot.a import A\n",
            },
            True,
        ),
        ({"a.py": "def f():\n    from .b import g\n", "b.py": "from bot.a import f\n"}, True),
        ({"a.py": "from bot.b import B\n", "b.py": "import os\nfrom engine import x\n"}, False),
    ],
)
def test_the_cycle_finder_sees_every_kind_of_import(
    tmp_path: Path, files: dict[str, str], cycle: bool
) -> None:
    (tmp_path / "bot").mkdir()
    (tmp_path / "bot" / "__init__.py").write_text('"""bot."""\n')
    for name, source in files.items():
        (tmp_path / "bot" / name).write_text(source)
    assert (find_cycle(import_graph(tmp_path)) is not None) is cycle
