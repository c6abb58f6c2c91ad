"""The paper's reference figures: the lookup, and the paper column beside ours in `eval`, `eval --run`, `report` and
the merged model card whenever the base model and the example set match a row (and nowhere else)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lowrank_rlvr.cli import app
from lowrank_rlvr.config import load_config
from lowrank_rlvr.runs import RunFolder
from lowrank_rlvr.paper import R1_CONTEXT, ROWS, reference, reference_table, training_of
from lowrank_rlvr.pretrained import model_key

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_row_is_found_by_its_model_and_training_and_no_other_is():
    """The lookup, not the figures (those live once, in paper.py, and the README table is checked against them)."""
    for row in ROWS:
        assert reference(row.model, row.training, context=row.note or R1_CONTEXT) is row, row
    assert reference("Qwen/Qwen2.5-Math-7B", "pi_13") is None  # the paper has no such row
    assert reference("Qwen/Qwen2.5-Math-1.5B", None) is None
    assert reference("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "pi_1").note == R1_CONTEXT == "8k"  # the default


def test_each_row_average_is_the_mean_of_its_six_figures_to_rounding():
    for row in ROWS:
        assert abs(sum(row.benchmarks.values()) / 6 - row.average) <= 0.1, row


def test_model_ids_match_across_mirrors_and_local_folders():
    assert model_key("unsloth/Qwen2.5-Math-1.5B-bnb-4bit") == model_key("/models/Qwen2.5-Math-1.5B/") == "qwen2.5-math-1.5b"
    assert reference("unsloth/Llama-3.2-3B-Instruct-bnb-4bit", "base").average == 17.5


def test_the_example_set_is_read_from_the_runs_config():
    assert training_of(load_config("qwen2.5-math-1.5b-pi1")) == "pi_1"  # inline example, recognised by its text
    assert training_of({"data": {"path": "x/pi13_r128.parquet"}}) == "pi_13"
    assert training_of(load_config("qwen2.5-math-1.5b-pi1", ["data={path: pi13_r128}"])) == "pi_13"  # shipped, by name
    assert training_of({"data": {"path": "x/dsr_sub.parquet", "indices": [682, 124]}}) == "pi_1+pi_13"
    assert training_of({"data": {"path": "x/dsr_sub.parquet"}}) == "dsr_sub"
    assert training_of({"data": {"path": "x/pi2_r128.parquet"}}) is None  # no row for pi_2
    assert training_of({"data": {"examples": [{"prompt": "What is 17+25?", "answer": "42"}]}}) is None
    assert training_of({"data": {"path": "x/pi1_r128.parquet"}, "reward": {"kind": "format"}}) == "format"


def test_readme_shows_the_table_stored_in_paper_py():
    assert reference_table() in README.read_text()


# ---- beside ours, through the CLI ---------------------------------------------------------------------------------


@pytest.fixture()
def qwen_named_tiny(tiny_model, tmp_path) -> Path:
    """The tiny model in a folder named like the paper's model: the lookup matches on the name."""
    folder = tmp_path / "Qwen2.5-Math-1.5B"
    folder.symlink_to(tiny_model, target_is_directory=True)
    return folder


def _run_folder(tmp_path: Path, tiny_adapter: Path, config: str, overrides: list[str] = ()) -> Path:
    run = tmp_path / "run"
    cfg = load_config(config, list(overrides), output_dir=str(run))
    RunFolder(run).write_config(cfg, cfg.launch_summary(1))
    shutil.copytree(tiny_adapter, run / "adapter")
    return run


EVAL = ["--benchmarks", "math500,aime24", "--limit", "1", "--samples", "1", "--max-tokens", "4", "--backend", "hf"]


def test_eval_of_the_base_model_shows_the_papers_base_column(cli, qwen_named_tiny, benchmark_dir, tmp_path):
    result = cli.invoke(app, ["eval", str(qwen_named_tiny), *EVAL, "--data-dir", str(benchmark_dir),
                              "--output", str(tmp_path / "base.json")])
    assert result.exit_code == 0, result.output
    assert "| benchmark | accuracy | paper, base | problems | samples |" in result.stdout
    assert "| 36.0 | 1 | 1 |" in result.stdout and "| 6.7 | 1 | 1 |" in result.stdout
    assert "| 21.4 |" in result.stdout  # the paper's mean over the two benchmarks evaluated, (36.0 + 6.7) / 2


def test_eval_of_a_pi1_run_shows_the_papers_pi1_column(cli, qwen_named_tiny, tiny_adapter, benchmark_dir, tmp_path):
    run = _run_folder(tmp_path, tiny_adapter, "qwen2.5-math-1.5b-pi1")
    result = cli.invoke(app, ["eval", str(qwen_named_tiny), "--adapter", str(run / "adapter"), *EVAL,
                              "--data-dir", str(benchmark_dir)])
    assert result.exit_code == 0, result.output
    assert "paper, pi_1" in result.stdout and "| 72.8 |" in result.stdout and "| 15.4 |" in result.stdout


def test_eval_sweep_of_a_pi1_run_ends_with_the_papers_base_and_pi1_rows(cli, qwen_named_tiny, tiny_adapter, benchmark_dir,
                                                                       tmp_path):
    run = _run_folder(tmp_path, tiny_adapter, "qwen2.5-math-1.5b-pi1")  # adapter/ is evaluated as step 1000
    result = cli.invoke(app, ["eval", str(qwen_named_tiny), "--run", str(run), *EVAL,
                              "--data-dir", str(benchmark_dir)])
    assert result.exit_code == 0, result.output
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| step | math500 | aime24 | average |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| 0", "| 1000", "| paper, base", "| paper, pi_1"]
    assert table[-2] == "| paper, base | 36.0 | 6.7 | 21.4 |" and table[-1] == "| paper, pi_1 | 72.8 | 15.4 | 44.1 |"


def test_eval_of_an_unknown_example_shows_no_paper_column(cli, qwen_named_tiny, tiny_adapter, benchmark_dir, tmp_path):
    run = _run_folder(tmp_path, tiny_adapter, "tiny-cpu")  # "What is 17+25?": not in the paper
    result = cli.invoke(app, ["eval", str(qwen_named_tiny), "--adapter", str(run / "adapter"), *EVAL,
                              "--data-dir", str(benchmark_dir)])
    assert result.exit_code == 0, result.output
    assert "paper" not in result.stdout.split("report:")[0]


def test_report_draws_the_papers_figures_for_a_matching_run(cli, tiny_adapter, tmp_path):
    run = _run_folder(tmp_path, tiny_adapter, "qwen2.5-math-1.5b-pi1")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_accuracy": 0.5}) + "\n" for s in (1, 2)))
    (run / "eval_by_step.jsonl").write_text(
        json.dumps({"step": 0, "benchmarks": {"math500": 0.35}, "average": 0.35}) + "\n"
        + json.dumps({"step": 2, "benchmarks": {"math500": 0.60}, "average": 0.60}) + "\n"
    )
    from lowrank_rlvr.report import paper_lines, read_run

    assert [(label, value) for label, value, _ in paper_lines(read_run(run))] == [
        ("paper, base: 36.0% (math500)", 36.0), ("paper, pi_1: 72.8% (math500)", 72.8)]
    result = cli.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report" / "report.html").read_text()
    assert "<th>paper, pi_1</th><td>72.8%" in page and "<th>paper, base</th><td>36.0%" in page


def test_report_of_an_unknown_example_draws_no_paper_lines(tiny_adapter, tmp_path):
    run = _run_folder(tmp_path, tiny_adapter, "tiny-cpu")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train_accuracy": 0.5}) + "\n")
    from lowrank_rlvr.report import paper_lines, read_run

    assert paper_lines(read_run(run)) == []


def test_model_card_sets_the_papers_figures_beside_ours(cli, tiny_adapter, tmp_path):
    run = _run_folder(tmp_path, tiny_adapter, "qwen2.5-math-1.5b-pi1")
    report = {"model": "Qwen/Qwen2.5-Math-1.5B", "adapter": str(run / "adapter"), "average": 0.5, "settings": {},
              "benchmarks": {"math500": {"accuracy": 0.7, "num_problems": 500, "num_samples": 1},
                             "aime24": {"accuracy": 0.3, "num_problems": 30, "num_samples": 8}}}
    (run / "eval_report.json").write_text(json.dumps(report))
    result = cli.invoke(app, ["merge", str(run / "adapter"), "--output", str(tmp_path / "merged"), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "| benchmark | this model | paper, pi_1 | problems | samples per problem |" in card
    assert "| math500 | 70.0% | 72.8% | 500 | 1 |" in card and "| aime24 | 30.0% | 15.4% | 30 | 8 |" in card
