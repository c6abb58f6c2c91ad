"""`lowrank-rlvr report`: PNGs + one-page HTML from a run folder, saturation step marked, bad input exits 2."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from lowrank_rlvr.cli import app
from lowrank_rlvr.report import HELD_OUT_COLOR, SATURATION_COLOR, TRAIN_COLOR, saturation_step, trailing_mean

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def color_pixels(png: Path, hex_color: str, tolerance: float = 0.03) -> int:
    """How many pixels of the image have (about) this colour: a drawn curve or marker leaves hundreds."""
    import matplotlib.image
    import numpy as np

    image = matplotlib.image.imread(png)[..., :3]  # [H, W, 3] floats in [0, 1]
    target = np.array([int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(image - target).max(axis=-1) < tolerance).sum())


def write_run(run: Path, steps: int = 120, saturate_at: int | None = 40, with_eval: bool = True) -> Path:
    """A run folder written by hand in the trainer's and the eval sweep's formats."""
    rng = random.Random(0)
    run.mkdir(parents=True, exist_ok=True)
    rows = []
    for step in range(1, steps + 1):
        accuracy = 1.0 if saturate_at is not None and step >= saturate_at else rng.choice([0.0, 0.125, 0.25])
        rows.append({
            "step": step, "reward_mean": accuracy, "reward_std": 0.3, "train_accuracy": accuracy,
            "entropy": 0.5 * math.exp(-step / 80) + 0.05, "completion_length": 300 + step, "kl": 0.001 * step,
            "learning_rate": 1e-5, "grad_norm": 0.1, "reflection_per_1k_tokens": 0.5 + step / 100, "seconds": 2.0 * step,
        })
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if with_eval:
        lines = [{"step": s, "benchmarks": {"math500": 0.36 + s / 1000, "amc23": 0.2 + s / 2000}, "average": None}
                 for s in range(0, steps + 1, 20)]
        for line in lines:
            line["average"] = sum(line["benchmarks"].values()) / 2
        (run / "eval_by_step.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run / "history.json").write_text(json.dumps({"0": [0.3, 0.9, 1.0]}))
    (run / "config.yaml").write_text("model:\n  name_or_path: builtin:tiny-qwen2\ndata:\n  examples:\n"
                                     "    - prompt: What is 17+25?\n      answer: '42'\n")
    return run


def test_saturation_is_the_first_step_whose_trailing_mean_reaches_the_threshold():
    steps = [10, 20, 30, 40, 50, 60]
    accuracy = [0.0, 1.0, 0.875, 1.0, 1.0, 1.0]
    assert saturation_step(steps, accuracy, threshold=1.0, window=1) == 20
    assert saturation_step(steps, accuracy, threshold=1.0, window=2) == 50
    assert saturation_step(steps, accuracy, threshold=0.95, window=3) == 40  # mean(1, .875, 1) = .958
    assert saturation_step(steps, accuracy, threshold=1.0, window=3) == 60
    assert saturation_step(steps, [0.5] * 6, threshold=0.95, window=3) is None
    assert saturation_step([1, 2], [1.0, 1.0], threshold=1.0, window=10) == 2  # shorter run: the whole run is the window
    assert trailing_mean([0.0, 1.0, 1.0], 2) == [0.0, 0.5, 1.0]


def test_report_writes_pngs_and_html_with_saturation_marked(cli, tmp_path):
    run = write_run(tmp_path / "run", saturate_at=40)
    result = cli.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "saturation step: 49" in result.output  # the first full window of 10 ones ends at step 49
    out = run / "report"
    pngs = {name: out / f"{name}.png" for name in ("accuracy", "entropy", "completion_length", "reflection", "history")}
    for png in pngs.values():
        assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000
    assert color_pixels(pngs["accuracy"], TRAIN_COLOR) > 200  # training curve
    assert color_pixels(pngs["accuracy"], HELD_OUT_COLOR) > 200  # held-out curve
    for name in ("accuracy", "entropy", "completion_length", "reflection"):
        assert color_pixels(pngs[name], SATURATION_COLOR) > 100, name  # the saturation line, on every plot
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # self-contained: one file to share
    assert "<th>saturation step</th><td>49</td>" in page
    assert "What is 17+25?" in page and "builtin:tiny-qwen2" in page
    # held-out average 28.0% at step 0 -> 37.0% at step 120; at saturation (last eval <= 49: step 40) 31.0%
    assert "28.0% at step 0 -&gt; 37.0% at step 120" in page
    assert "+6.0 points" in page


def test_unsaturated_run_without_eval_has_no_saturation_mark(cli, tmp_path):
    run = write_run(tmp_path / "run", saturate_at=None, with_eval=False)
    out = tmp_path / "elsewhere"
    result = cli.invoke(app, ["report", str(run), "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "saturation step: not reached" in result.output
    assert color_pixels(out / "accuracy.png", SATURATION_COLOR) == 0
    assert color_pixels(out / "accuracy.png", HELD_OUT_COLOR) == 0
    assert color_pixels(out / "accuracy.png", TRAIN_COLOR) > 200
    page = (out / "report.html").read_text()
    assert "not reached" in page and "eval --run" in page


def test_threshold_and_window_move_the_saturation_step(cli, tmp_path):
    run = write_run(tmp_path / "run", saturate_at=40)
    result = cli.invoke(app, ["report", str(run), "--window", "1", "--threshold", "1.0"])
    assert result.exit_code == 0, result.output
    first_one = next(row["step"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                     if row["train_accuracy"] == 1.0)
    assert f"saturation step: {first_one}" in result.output


def test_eval_percentages_are_read_as_percentages(cli, tmp_path):
    run = write_run(tmp_path / "run", with_eval=False)
    (run / "eval_by_step.jsonl").write_text(
        json.dumps({"step": 0, "benchmarks": {"math500": 36.0}, "average": 36.0}) + "\n"
        + json.dumps({"step": 100, "benchmarks": {"math500": 73.6}, "average": 73.6}) + "\n"
    )
    result = cli.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "36.0% at step 0 -&gt; 73.6% at step 100" in (run / "report" / "report.html").read_text()


def test_half_written_last_line_of_a_running_job_is_ignored(cli, tmp_path):
    run = write_run(tmp_path / "run")
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 121, "train_acc')  # no newline: the trainer is writing it now
    result = cli.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "120 (last step 120)" in (run / "report" / "report.html").read_text()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda run: (run / "metrics.jsonl").unlink(), "no metrics.jsonl"),
        (lambda run: (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2,\n{"step": 3}\n'), "line 2: not valid JSON"),
        (lambda run: (run / "metrics.jsonl").write_text('{"train_accuracy": 1.0}\n'), "line 1: expected a JSON object"),
        (lambda run: (run / "metrics.jsonl").write_text(""), "no steps logged yet"),
        (lambda run: (run / "eval_by_step.jsonl").write_text('{"step": 0, "average": 0.3}\n'), "expected 'benchmarks'"),
        (lambda run: (run / "history.json").write_text("{"), "history.json: line 1: history is not valid JSON"),
    ],
)
def test_bad_run_folder_exits_2_with_one_line(cli, tmp_path, setup, message):
    run = write_run(tmp_path / "run")
    setup(run)
    result = cli.invoke(app, ["report", str(run)])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_run_folder_and_bad_options_exit_2(cli, tmp_path):
    assert "run folder not found" in cli.invoke(app, ["report", str(tmp_path / "nope")]).output
    run = write_run(tmp_path / "run")
    assert cli.invoke(app, ["report", str(run), "--threshold", "1.5"]).exit_code == 2
    assert cli.invoke(app, ["report", str(run), "--window", "0"]).exit_code == 2


@pytest.mark.slow
def test_report_renders_from_a_real_tiny_cpu_run(cli, tiny_model, tmp_path):
    """train (30 GRPO steps of the tiny model on CPU) -> eval sweep over its checkpoints -> report."""
    run = tmp_path / "tiny-run"
    result = cli.invoke(app, ["train", "tiny-cpu", "--set", "grpo.max_steps=30", "--set", "grpo.save_steps=15",
                              "--output-dir", str(run)])
    assert result.exit_code == 0, result.output
    result = cli.invoke(app, ["eval", "--run", str(run), "--benchmarks", "math500", "--limit", "2", "--max-tokens", "8",
                              "--backend", "hf"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["step"] for line in (run / "eval_by_step.jsonl").read_text().splitlines()] == [0, 15, 30]

    result = cli.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    out = run / "report"
    for name in ("accuracy", "entropy", "completion_length", "reflection"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000, name
    assert color_pixels(out / "accuracy.png", TRAIN_COLOR) > 200
    assert color_pixels(out / "accuracy.png", HELD_OUT_COLOR) > 50  # three eval points and the line between
    page = (out / "report.html").read_text()
    assert "30 (last step 30)" in page and "at step 0 -&gt;" in page
    assert "not logged by this run" not in page  # the trainer logged entropy, length and reflection words
