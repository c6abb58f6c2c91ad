"""The code's layout: one module one job, listed in README; no import circle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lowrank_rlvr"


def test_every_module_is_in_the_readme_code_map():
    readme = (PACKAGE.parent / "README.md").read_text()
    code_map = readme.split("## How the code is laid out")[1].split("\n## ")[0]
    listed = set(re.findall(r"`(\w+)\.py`", code_map))
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == listed, f"not listed: {sorted(modules - listed)}; gone: {sorted(listed - modules)}"


def test_modules_import_each_other_without_a_circle():
    """Module-level `from lowrank_rlvr.x import ...` edges form no cycle; rewards.py imports nothing of ours."""
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        edges[path.stem] = {
            node.module.split(".")[1] for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lowrank_rlvr.")
        }
    assert edges["rewards"] == set()

    def visit(module: str, stack: tuple[str, ...]) -> None:
        assert module not in stack, " -> ".join(stack + (module,))
        for imported in edges.get(module, ()):
            visit(imported, stack + (module,))

    for module in edges:
        visit(module, ())
