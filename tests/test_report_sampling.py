"""`lowrank-rlvr report` on a colocated-vLLM run: the sampler/trainer gap plot with its levels, the guard's warning
marked, and the newest kept rollouts on the page. The curve is the measured double-scaled sync
(tests/data/parity-broken-double_scale.jsonl); the run folder around it is written by hand in train's formats."""

from __future__ import annotations

import json
from pathlib import Path

from lowrank_rlvr.cli import app
from lowrank_rlvr.config import load_config
from lowrank_rlvr.parity import first_mismatch
from lowrank_rlvr.runs import RunFolder

DATA = Path(__file__).resolve().parent / "data"


def test_the_report_plots_the_gap_marks_the_warning_and_shows_the_latest_rollouts(cli, tmp_path):
    run = RunFolder(tmp_path / "run")
    cfg = load_config("smollm2-135m-cpu", ["grpo.use_vllm=true"])
    run.write_config(cfg, cfg.launch_summary(1))
    curve = [json.loads(line) for line in (DATA / "parity-broken-double_scale.jsonl").read_text().splitlines()]
    warning = first_mismatch(curve)
    for row in curve:
        warnings = [{"kind": warning.kind, "message": warning.message}] if row["step"] == warning.step else []
        run.append_metrics({**row, "reward_mean": 0.0, "train_accuracy": 0.0, "entropy": 0.5, "completion_length": 32,
                            "warnings": warnings})
    for step in (1, 5):
        run.append_rollouts({"step": step, "prompt": "What is 17+25? <b>", "answer": "42", "completions": [
            {"text": f"step {step}: \\boxed{{42}} <i>", "tokens": 9, "reward": 2.0, "rewards": {"format": 1.0, "accuracy": 1.0},
             "advantage": 0.87, "logp_gap_mean": 0.4, "logp_gap_max": 3.1},
            {"text": "no box", "tokens": 3, "reward": 0.0, "rewards": {"format": 0.0, "accuracy": 0.0},
             "advantage": -0.87, "logp_gap_mean": 0.5, "logp_gap_max": 2.0}]})
    result = cli.invoke(app, ["report", str(run.path)])
    assert result.exit_code == 0, result.output
    page = (run.report_dir / "report.html").read_text()
    assert (run.report_dir / "sampling.png").stat().st_size > 0 and 'alt="sampling"' in page
    assert f"warning at step {warning.step}" in page and "not serving the trained weights" in page
    assert "Latest rollouts (step 5, answer 42)" in page and "step 5: \\boxed{42} &lt;i&gt;" in page
    assert "step 1:" not in page and "<i>" not in page and "What is 17+25? &lt;b&gt;" in page  # escaped
