"""Shipped configs: listed by `lowrank-rlvr configs`, usable by name from any folder, and carried inside the wheel
(built here, installed into a fresh venv outside the checkout, `plan NAME` run from an empty folder)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from lowrank_rlvr.cli import app
from lowrank_rlvr.config import CONFIG_DIR
from lowrank_rlvr.shipped import describe_header

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def test_configs_lists_every_shipped_config_with_its_model_and_what_it_is(cli):
    result = cli.invoke(app, ["configs"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "model", "what", "it", "is"]
    for path in SHIPPED:
        model = yaml.safe_load(path.read_text())["model"]["name_or_path"]
        (line,) = [line for line in lines if line.split()[:1] == [path.stem]]
        assert line.split()[1] == model
        assert describe_header(path.read_text()) in line and len(describe_header(path.read_text())) > 20
    assert CONFIG_DIR == REPO_ROOT / "configs"  # a clone reads the one copy at the top of the repository


def test_the_description_is_the_first_sentence_after_the_launch_command():
    header = "# lowrank-rlvr train configs/a.yaml \\\n#   --output-dir x\n#\n# Does this. Then that.\n# More.\nmodel: {}\n"
    assert describe_header(header) == "Does this."


def test_a_shipped_config_is_usable_by_name_and_by_its_documented_path_from_any_folder(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    for config in ("qwen2.5-math-1.5b-pi1", "configs/qwen2.5-math-1.5b-pi1.yaml"):
        result = cli.invoke(app, ["plan", config, "--gpu-memory", "24"])
        assert result.exit_code == 0, result.output
        assert "fits:" in result.stdout
    result = cli.invoke(app, ["plan", "qwen2.5-math-1.5b-pi7", "--gpu-memory", "24"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: config not found: qwen2.5-math-1.5b-pi7 (`lowrank-rlvr configs` lists the shipped ones, usable by name)"
    )


def _purelib(python: Path | str) -> str:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
def test_the_built_wheel_carries_the_configs_and_plans_one_by_name_outside_the_checkout(tmp_path):
    wheel_dir, venv, cwd = tmp_path / "wheel", tmp_path / "venv", tmp_path / "elsewhere"
    cwd.mkdir()
    # no build isolation where this venv's setuptools is recent enough: the build needs no download then
    isolation = [] if int(importlib.metadata.version("setuptools").split(".")[0]) < 68 else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, str(REPO_ROOT), "-w",
                    str(wheel_dir)], check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("lowrank_rlvr-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True)
    # the dependencies (torch, transformers, ...) come from this venv, appended after the wheel's own site-packages
    Path(_purelib(venv / "bin" / "python"), "main-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(venv / "bin" / "lowrank-rlvr"), "plan", "qwen2.5-math-1.5b-pi1", "--gpu-memory", "24"],
                            cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fits:" in result.stdout and "total" in result.stdout
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import lowrank_rlvr.config as c; print(c.CONFIG_DIR)"],
                           cwd=cwd, capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert Path(where) == Path(_purelib(venv / "bin" / "python")) / "lowrank_rlvr" / "configs"  # not the checkout's
    assert sorted(p.name for p in Path(where).glob("*.yaml")) == sorted(p.name for p in SHIPPED)
    listed = subprocess.run([str(venv / "bin" / "lowrank-rlvr"), "configs"], cwd=cwd, capture_output=True, text=True,
                            env=env)
    assert listed.returncode == 0 and "tiny-cpu" in listed.stdout

    # the paper's data is in the wheel: a shipped benchmark evaluates with no data folder, offline
    packaged = Path(_purelib(venv / "bin" / "python")) / "lowrank_rlvr" / "paper_data"
    assert sorted(p.relative_to(packaged).as_posix() for p in packaged.rglob("*") if p.is_file()) == sorted(
        p.relative_to(REPO_ROOT / "data").as_posix() for p in (REPO_ROOT / "data").rglob("*") if p.is_file())
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    evaluated = subprocess.run([str(venv / "bin" / "lowrank-rlvr"), "eval", "builtin:tiny-qwen2", "--benchmarks",
                                "minerva_math", "--limit", "1", "--max-tokens", "4", "--backend", "hf"],
                               cwd=cwd, capture_output=True, text=True, env=offline)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (record,) = [json.loads(line) for line in (cwd / "eval_report.jsonl").read_text().splitlines()]
    assert record["source"] == str(packaged / "benchmarks" / "minerva_math.jsonl")


@pytest.mark.parametrize("config, parquets", [
    ("qwen2.5-math-1.5b-pi1", ["pi1_r128"]),
    ("qwen2.5-math-1.5b-pi13", ["pi13_r128"]),
    ("qwen2.5-math-1.5b-pi1-pi13", ["pi1_r128", "pi13_r128"]),
    ("qwen2.5-math-1.5b-pi1-format", ["pi1_r128"]),
])
def test_paper_configs_carry_the_papers_examples_verbatim(config, parquets):
    from lowrank_rlvr.config import load_config
    from lowrank_rlvr.data import load_examples

    cfg = load_config(config)
    paper = [load_examples(load_config(config, [f"data={{path: {name}}}"]).data)[0]  # the shipped file, by name
             for name in parquets]
    ours = load_examples(cfg.data)
    assert [(e.prompt, e.answer) for e in ours] == [(e.prompt, e.answer) for e in paper]
    assert cfg.reward.kind == ("format" if config.endswith("format") else "accuracy")
