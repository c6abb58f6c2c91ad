"""`lowrank-rlvr compare`: two real tiny runs side by side, the numbers of their eval files in its table, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lowrank_rlvr.cli import app
from lowrank_rlvr.compare import binomial_standard_error

CLI = [str(Path(sys.executable).parent / "lowrank-rlvr")]
SHORT = ["--set", "grpo.max_steps=2", "--set", "grpo.save_steps=1", "--set", "grpo.max_completion_length=8"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model, benchmark_dir) -> tuple[Path, Path]:
    """A tiny accuracy run (the treatment) and a random-reward control, both trained and swept by `eval --run`."""
    root = tmp_path_factory.mktemp("compare")
    runs = (root / "treatment", root / "control")
    for run, kind in zip(runs, ("accuracy", "random")):
        result = run_cli("train", "tiny-cpu", "-o", str(run), *SHORT, "--set", f"reward.kind={kind}")
        assert result.returncode == 0, result.stderr[-3000:]
        result = run_cli("eval", "--run", str(run), "--benchmarks", "math500,random_calculation", "--data-dir",
                         str(benchmark_dir), "--limit", "3", "--max-tokens", "8", "--backend", "hf")
        assert result.returncode == 0, result.stderr[-3000:]
    return runs


def sweep(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "eval_by_step.jsonl").read_text().splitlines()]


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {first_cell}")]


def test_two_real_runs_render_and_the_table_holds_their_eval_numbers(two_runs, tmp_path):
    treatment, control = two_runs
    result = run_cli("compare", str(treatment), str(control), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    page = (tmp_path / "out" / "comparison.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "treatment" in page
    for png in ("training_reward.png", "training_accuracy.png", "held_out_final.png", "held_out_math500.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000, png
    assert (tmp_path / "out" / "comparison.md").read_text().strip() in result.stdout
    final_tables = result.stdout.split("best checkpoint")[0]
    for run, label in ((treatment, "treatment (treatment)"), (control, "control")):
        last = sweep(run)[-1]
        row = table_rows(final_tables, label)[0]
        assert row[1] == ("accuracy" if run == treatment else "random") and row[2] == str(last["step"])
        assert row[3].startswith(f"{100 * last['benchmarks']['math500']:.1f} ± ")
        assert row[4].startswith(f"{100 * last['benchmarks']['random_calculation']:.1f} ± ")
        assert row[5].startswith(f"{100 * last['average']:.1f} ± ")
    metrics = [json.loads(line) for line in (control / "metrics.jsonl").read_text().splitlines()]
    training = table_rows(result.stdout.split("training, mean")[1], "control")[0]
    assert training[3] == f"{sum(m['reward_mean'] for m in metrics) / len(metrics):.3f}"


def set_accuracies(run: Path, step: int, accuracies: dict[str, float], problems: int) -> None:
    """Rewrite one sweep step's numbers (eval_by_step.jsonl and its report) as a real sweep would have written them."""
    lines = sweep(run)
    for line in lines:
        if line["step"] == step:
            line["benchmarks"] = dict(accuracies)
            line["average"] = accuracies["math500"]
    (run / "eval_by_step.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    report_path = run / "eval" / f"step-{step}.json"
    report = json.loads(report_path.read_text())
    for name, value in accuracies.items():
        report["benchmarks"][name].update(accuracy=value, num_problems=problems)
    report_path.write_text(json.dumps(report))


def test_differences_from_the_treatment_carry_a_binomial_error_and_a_mark_beyond_two(two_runs, tmp_path, cli):
    treatment, control = (shutil.copytree(run, tmp_path / run.name) for run in two_runs)
    set_accuracies(treatment, 2, {"math500": 0.8, "random_calculation": 0.5}, problems=100)
    set_accuracies(control, 2, {"math500": 0.3, "random_calculation": 0.45}, problems=100)
    result = cli.invoke(app, ["compare", str(treatment), str(control)])
    assert result.exit_code == 0, result.output
    row = table_rows(result.output.split("best checkpoint")[0], "control")[0]
    se_t, se_c = binomial_standard_error(0.8, 100), binomial_standard_error(0.3, 100)
    gap = math.sqrt(se_t**2 + se_c**2)
    assert row[3] == f"30.0 ± {100 * se_c:.1f} (-50.0 ± {100 * gap:.1f} *)"  # 50 points: far beyond 2 errors
    se_t, se_c = binomial_standard_error(0.5, 100), binomial_standard_error(0.45, 100)
    assert row[4] == f"45.0 ± {100 * se_c:.1f} (-5.0 ± {100 * math.sqrt(se_t**2 + se_c**2):.1f})"  # within: no mark
    assert (treatment / "comparison" / "comparison.html").is_file()  # the default: the treatment's comparison/


def test_the_papers_rows_are_shown_where_model_and_example_match_and_never_for_a_control(two_runs, tmp_path, cli):
    from lowrank_rlvr.config import load_config

    pi_1 = load_config("qwen2.5-math-1.5b-pi1").model_dump(mode="json")["data"]
    treatment, control = (shutil.copytree(run, tmp_path / run.name) for run in two_runs)
    shutil.copytree(control, tmp_path / "control-2")
    for run in (treatment, control, tmp_path / "control-2"):  # as if trained on pi_1 with Qwen2.5-Math-1.5B
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["model"]["name_or_path"] = "Qwen/Qwen2.5-Math-1.5B"
        config["data"] = pi_1
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = cli.invoke(app, ["compare", str(treatment), str(control)])
    assert result.exit_code == 0, result.output
    assert table_rows(result.output, "paper, base")[0][3] == "36.0"  # MATH500
    assert table_rows(result.output, "paper, pi_1")[0][3] == "72.8"
    result = cli.invoke(app, ["compare", str(control), str(tmp_path / "control-2")])  # two random-reward runs
    assert result.exit_code == 0, result.output
    assert table_rows(result.output, "paper, base") and not table_rows(result.output, "paper, pi_1")


@pytest.mark.parametrize("case", ["one run", "no eval", "mixed models", "not a run"])
def test_bad_input_is_one_line_and_exit_2(case, two_runs, tmp_path, cli):
    treatment, control = (shutil.copytree(run, tmp_path / run.name) for run in two_runs)
    if case == "one run":
        args, expected = [str(treatment)], "compare needs two runs or more"
    elif case == "no eval":
        (control / "eval_by_step.jsonl").unlink()
        args, expected = [str(treatment), str(control)], "no held-out evaluation"
    elif case == "mixed models":
        config = yaml.safe_load((control / "config.yaml").read_text())
        config["model"]["name_or_path"] = "Qwen/Qwen2.5-Math-7B"
        (control / "config.yaml").write_text(yaml.safe_dump(config))
        args, expected = [str(treatment), str(control)], "runs have different base models"
    else:
        args, expected = [str(treatment), str(tmp_path / "missing")], "run folder not found"
    result = cli.invoke(app, ["compare", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not (treatment / "comparison").exists(), "nothing is written for bad input"
