"""The code's layout as README's code map states it: every module listed once, in a layer; imports go down the
layers only, and form no circle, counting the imports inside functions (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lowrank_rlvr"
LAYERS = ("foundation", "facts and pure rules", "parts", "commands", "entry point")


def code_map() -> dict[str, int]:
    """module -> its layer's position in LAYERS, read from README's table (a blank layer cell continues the last)."""
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme.split("## How the code is laid out")[1].split("\n## ")[0]
    layer, modules = None, {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3:
            continue
        layer = cells[0] or layer
        if layer in LAYERS:
            for module in re.findall(r"`(\w+)\.py`", cells[1]):
                assert module not in modules, f"{module}.py is listed twice"
                modules[module] = LAYERS.index(layer)
    return modules


def imports(path: Path) -> set[str]:
    """Our modules that `path` imports anywhere: at the top, inside functions, under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "lowrank_rlvr":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lowrank_rlvr."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lowrank_rlvr.")}
    return found - {path.stem}


EDGES = {path.stem: imports(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}


def test_every_module_is_in_the_readme_code_map():
    listed = set(code_map())
    assert set(EDGES) == listed, f"not listed: {sorted(set(EDGES) - listed)}; gone: {sorted(listed - set(EDGES))}"


def test_no_module_imports_one_of_a_higher_layer():
    layer = code_map()
    upward = [f"{m} ({LAYERS[layer[m]]}) imports {i} ({LAYERS[layer[i]]})"
              for m, imported in EDGES.items() for i in imported if layer[i] > layer[m]]
    assert not upward, "\n".join(upward)


def test_no_import_circle_counting_imports_inside_functions():
    def visit(module: str, stack: tuple[str, ...]) -> None:
        assert module not in stack, " -> ".join(stack + (module,))
        for imported in EDGES.get(module, ()):
            visit(imported, stack + (module,))

    for module in EDGES:
        visit(module, ())


def test_the_pure_edges_import_only_the_foundation():
    """rewards, history, collapse, parity, templates, tables: plain inputs in, values out, nothing else of ours."""
    foundation = {m for m, n in code_map().items() if n == 0}
    for module in ("rewards", "history", "collapse", "parity", "templates", "tables", "defaults"):
        assert EDGES[module] <= foundation, (module, EDGES[module] - foundation)


def test_each_command_calls_one_entry_point_named_for_it():
    """cli.py parses and calls one function, `<command>_command`, of our package, per command (besides building
    the command's typed options, `<Name>Options`); `plan --env` is the one flag that calls another command's
    (`doctor.env_command`)."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    for function in (node for node in tree.body if isinstance(node, ast.FunctionDef)):
        decorators = [ast.unparse(d) for d in function.decorator_list]
        if not any(d.startswith("app.command") for d in decorators):
            continue
        ours = {alias.name for node in ast.walk(function) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("lowrank_rlvr.") for alias in node.names}
        called = {node.func.id for node in ast.walk(function)
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ours}
        entry_points = {name for name in called if name.endswith("_command")}
        options = {name for name in called if name.endswith("Options")}
        command = "eval" if function.name == "evaluate" else function.name  # `evaluate` would shadow the builtin eval
        expected = {f"{command}_command"} | ({"env_command"} if command == "plan" else set())
        assert entry_points == expected and called == entry_points | options, (function.name, sorted(called))
