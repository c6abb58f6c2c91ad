"""The Colab and Kaggle notebooks: both run end to end in SMOKE mode in a real Jupyter kernel, and every
`lowrank-rlvr ...` command they run parses with the real CLI in GPU mode too, where the configs they name load.

SMOKE mode is executed for real (nbclient + ipykernel, slow): the settings cell (tagged `parameters`) gets SMOKE, the
runs folder and the local benchmark folder, as papermill would set them, and every cell runs in order; a cell that
raises fails the test, and the run folder, the eval table and the merged export are checked. GPU mode cannot run
here: its settings cell is run as plain Python, each `!lowrank-rlvr` line is expanded the way IPython expands
`{expr}`, and the words go through click's own parser for the Typer app: an unknown subcommand or option, a missing
option value, a missing required argument or a surplus argument fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
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
    cfg = load_config(namespace["CONFIG"])  # a shipped config's name: no checkout needed
    if smoke:
        assert namespace["CONFIG"] == "tiny-cpu"
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


def _parameterized(notebook: Path, **values):
    """The notebook with its settings cell's `NAME = ...` lines replaced (what papermill's parameters do)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    for name, value in values.items():
        cell.source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", cell.source, count=1, flags=re.M)
        assert count == 1, f"no '{name} = ...' line in the settings cell"
    return nb


def _printed(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda n: n.stem)
def test_notebook_runs_end_to_end_in_smoke_mode_in_a_jupyter_kernel(notebook, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    runs = tmp_path / "runs"
    nb = _parameterized(notebook, SMOKE=True, RUNS_DIR=str(runs))  # BENCHMARK_DIR empty: the shipped files
    # the kernel (this interpreter, through ipykernel) finds `lowrank-rlvr` on PATH, as after `pip install`
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    printed = {cell.source.strip(): _printed(cell) for cell in code}
    run, export = runs / "smoke", runs / "smoke-merged"
    # the run folder: config, metrics of the 4 steps, checkpoints, adapter, report
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "report" / "report.html").is_file()
    # the eval table, printed by the eval cell, and its report
    (eval_out,) = [text for source, text in printed.items() if source.startswith("!lowrank-rlvr eval")]
    assert "| benchmark | accuracy | problems | samples |" in eval_out and "| math500 |" in eval_out
    assert json.loads((run / "eval_report.json").read_text())["benchmarks"]["math500"]["num_problems"] == 4
    # the merged export: a plain checkpoint with its model card, and the last cell's answer from it
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in export.iterdir()}
    assert "| math500 |" in (export / "README.md").read_text()  # the eval table made it into the card
    assert _printed(code[-1]).strip()
