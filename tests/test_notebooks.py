"""The Colab and Kaggle notebooks: every `lowrank-rlvr ...` command they run parses with the real CLI, in GPU and in
SMOKE mode, and the configs they name load.

Executing the notebooks (training, evaluation with Hub downloads) would be too slow for CI. Instead the settings cell
(tagged `parameters`) is run as plain Python with SMOKE and HUB_REPO set, each `!lowrank-rlvr` line is expanded the
way IPython expands `{expr}`, and the words go through click's own parser for the Typer app: an unknown subcommand or
option, a missing option value, a missing required argument or a surplus argument fails the test.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer
from typer._click.exceptions import UsageError  # typer 0.29 vendors click: its errors are not click's

from lowrank_rlvr.cli import app

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = {"plan", "train", "eval", "merge"}


def _cells(notebook: Path, kind: str) -> list[dict]:
    data = json.loads(notebook.read_text())
    assert data["nbformat"] == 4
    return [cell for cell in data["cells"] if cell["cell_type"] == kind]


def _settings(notebook: Path, smoke: bool, hub_repo: str) -> dict:
    """Run the settings cell with SMOKE and HUB_REPO replaced; return its variables."""
    (cell,) = [c for c in _cells(notebook, "code") if "parameters" in c["metadata"].get("tags", [])]
    source = "".join(cell["source"])
    assert re.search(r"^SMOKE = False\b", source, re.M) and re.search(r'^HUB_REPO = ""', source, re.M)
    source = re.sub(r"^SMOKE = False", f"SMOKE = {smoke}", source, flags=re.M)
    source = re.sub(r'^HUB_REPO = ""', f"HUB_REPO = {hub_repo!r}", source, flags=re.M)
    namespace: dict = {}
    exec(compile(source, f"{notebook.name}:settings", "exec"), namespace)  # noqa: S102 - our own notebook's cell
    return namespace


def _cli_lines(notebook: Path) -> list[str]:
    lines = []
    for cell in _cells(notebook, "code"):
        for line in "".join(cell["source"]).splitlines():
            stripped = line.strip()
            if stripped.startswith("!lowrank-rlvr"):
                lines.append(stripped[1:])
    return lines


def _expand(line: str, namespace: dict) -> list[str]:
    """IPython's `!cmd {expr}` expansion, then shell words."""
    expanded = re.sub(r"\{([^{}]+)\}", lambda m: str(eval(m.group(1), namespace)), line)  # noqa: S307
    return shlex.split(expanded)


def _parse(words: list[str]):
    """Parse argv with the real Typer app without running the command: click (as vendored by typer) converts the
    values and raises UsageError for an unknown option, a missing value or argument, or a surplus argument."""
    group = typer.main.get_command(app)
    assert words[0] == "lowrank-rlvr"
    name, *args = words[1:]
    command = group.commands.get(name)
    assert command is not None, f"no subcommand {name!r}"
    # resilient parsing: values are not converted or validated (paths need not exist yet), callbacks do not run;
    # unknown options and missing option values still raise, surplus arguments land in ctx.args
    return command.make_context(name, list(args))


def test_notebooks_exist():
    assert {n.name for n in NOTEBOOKS} == {"colab_one_shot_rlvr.ipynb", "kaggle_one_shot_rlvr.ipynb"}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda n: n.stem)
@pytest.mark.parametrize("smoke", [False, True], ids=["gpu", "smoke"])
def test_every_notebook_command_parses_with_the_real_cli(notebook: Path, smoke: bool):
    namespace = _settings(notebook, smoke, hub_repo="" if smoke else "someone/qwen-pi1")
    lines = _cli_lines(notebook)
    contexts = {}
    for line in lines:
        words = _expand(line, namespace)
        contexts.setdefault(words[1], []).append(_parse(words))
    assert STEPS <= set(contexts), f"missing steps: {STEPS - set(contexts)}"
    merge = contexts["merge"][0].params
    if smoke:
        assert merge["push_to_hub"] is None
    else:
        assert merge["push_to_hub"] == "someone/qwen-pi1" and merge["private"] is True


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda n: n.stem)
@pytest.mark.parametrize("smoke", [False, True], ids=["gpu", "smoke"])
def test_notebook_configs_load_and_fit_the_platform(notebook: Path, smoke: bool):
    from lowrank_rlvr.config import load_config

    namespace = _settings(notebook, smoke, hub_repo="")
    config_path = REPO_ROOT / namespace["CONFIG"]
    cfg = load_config(config_path)
    if smoke:
        assert config_path.name == "tiny-cpu.yaml"
        assert cfg.model.name_or_path == namespace["BASE_MODEL"] == "builtin:tiny-qwen2"
    else:
        # T4 and P100: 16 GB, no bfloat16
        assert cfg.model.dtype == "float16" and cfg.model.load_in_4bit
        assert cfg.model.name_or_path == namespace["BASE_MODEL"]


def test_parser_check_catches_a_wrong_option():
    """The check above can fail: a misspelt option, a surplus argument and a missing --output are all caught."""
    with pytest.raises(UsageError, match="--push-to-hbu"):
        _parse(["lowrank-rlvr", "merge", "runs/x/adapter", "--output", "out", "--push-to-hbu", "a/b"])
    with pytest.raises(UsageError, match="unexpected extra argument"):
        _parse(["lowrank-rlvr", "merge", "runs/x/adapter", "extra", "--output", "out"])
    with pytest.raises(UsageError, match="Missing parameter: output"):
        _parse(["lowrank-rlvr", "merge", "runs/x/adapter"])
    with pytest.raises(UsageError, match="requires an argument"):
        _parse(["lowrank-rlvr", "merge", "runs/x/adapter", "--output"])
    with pytest.raises(AssertionError, match="no subcommand"):
        _parse(["lowrank-rlvr", "export", "x"])


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda n: n.stem)
def test_try_the_merged_model_cell_runs_on_a_tiny_export(notebook: Path, tiny_adapter: Path, tmp_path: Path, capsys):
    """The last cell is plain Python (no shell): run it for real on a merged tiny model, as in SMOKE mode."""
    from typer.testing import CliRunner

    export = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge", str(tiny_adapter), "--output", str(export), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    last = "".join(_cells(notebook, "code")[-1]["source"])
    assert "EXPORT_DIR" in last and not any(line.lstrip().startswith(("!", "%")) for line in last.splitlines())
    exec(compile(last, f"{notebook.name}:last", "exec"), {"SMOKE": True, "EXPORT_DIR": str(export)})  # noqa: S102
    assert capsys.readouterr().out.strip()  # it printed the model's answer
