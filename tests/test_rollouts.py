"""rollouts.jsonl on the plain hf backend (transformers generate, no vLLM): one group per kept step, its rewards
matching metrics.jsonl, no sampler gap, no paths; the report shows the newest group. Through the CLI, tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lowrank_rlvr.rollouts import due, group_record

CLI = [str(Path(sys.executable).parent / "lowrank-rlvr")]


def test_steps_kept_are_the_first_and_every_nth():
    assert [s for s in range(1, 13) if due(s, 5)] == [1, 5, 10]
    assert [s for s in range(1, 4) if due(s, 1)] == [1, 2, 3]
    assert not any(due(s, 0) for s in range(1, 20))


def test_a_group_record_sums_the_weighted_rewards_of_its_first_group_only():
    record = group_record(
        7, ["p1", "p1", "p2", "p2"], ["42"] * 4, ["a", "b", "c", "d"], [3, 4, 5, 6],
        {"format": [1.0, 0.0, 1.0, 1.0], "accuracy": [1.0, 0.0, 0.0, 1.0]}, [1.0, 1.0],
        [1.0, -1.0, 0.0, 0.0], [(0.1, 0.5), None, None, None], group_size=2,
    )
    assert record["step"] == 7 and record["prompt"] == "p1" and record["answer"] == "42"
    assert [c["text"] for c in record["completions"]] == ["a", "b"]
    assert [c["reward"] for c in record["completions"]] == [2.0, 0.0]
    assert record["completions"][0]["logp_gap_mean"] == 0.1 and record["completions"][1]["logp_gap_max"] is None


@pytest.mark.slow
def test_a_tiny_run_keeps_one_group_per_kept_step_and_the_report_shows_the_latest(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [*CLI, "train", "tiny-cpu", "--output-dir", str(run_dir), "--set", "grpo.max_steps=3", "--set",
         "grpo.save_steps=3", "--set", "grpo.log_rollouts_steps=2"],
        capture_output=True, text=True, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    metrics = {row["step"]: row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    assert [r["step"] for r in rollouts] == [1, 2]
    for record in rollouts:
        completions = record["completions"]
        assert len(completions) == 8 and record["answer"] == "42" and "17+25" in record["prompt"]
        assert all(c["rewards"].keys() == {"accuracy"} and c["reward"] == c["rewards"]["accuracy"] for c in completions)
        # one group is the whole batch here (8 per device, 8 rollouts): its mean reward is the step's accuracy
        step = metrics[record["step"]]
        assert sum(c["reward"] for c in completions) / 8 == pytest.approx(step["train_accuracy"])
        assert sum(c["tokens"] for c in completions) / 8 == pytest.approx(step["completion_length"])
        assert abs(sum(c["advantage"] for c in completions)) < 1e-4  # group-relative: centred on the group mean
        assert all(c["logp_gap_mean"] is None and c["logp_gap_max"] is None for c in completions)  # no vLLM
        assert all(isinstance(c["text"], str) and c["tokens"] >= 1 for c in completions)
    text = (run_dir / "rollouts.jsonl").read_text()
    assert str(tmp_path) not in text and str(Path.home()) not in text
    assert all(row["sampling_logp_difference_mean"] is None for row in metrics.values())  # nothing to compare
    page = (run_dir / "report" / "report.html").read_text()
    assert "Latest rollouts (step 2, answer 42)" in page
    assert not (run_dir / "report" / "sampling.png").exists()  # no sampler, no gap plot


def test_rollouts_are_read_by_step_and_forgotten_after_a_resumed_checkpoint(tmp_path):
    from lowrank_rlvr.runs import RunFolder

    run = RunFolder(tmp_path)
    assert run.read_rollouts() == []
    run.keep_rollouts_through(3)  # a resumed run without rollouts: nothing to do, no file made
    assert not run.rollouts_path.exists()
    for step, text in ((1, "a"), (10, "b"), (20, "c"), (10, "b again")):  # resumed after step 1: step 10 kept again
        run.append_rollouts({"step": step, "completions": [{"text": text}]})
    assert [(r["step"], r["completions"][0]["text"]) for r in run.read_rollouts()] == [(1, "a"), (10, "b again"), (20, "c")]
    run.keep_rollouts_through(10)
    assert [r["step"] for r in run.read_rollouts()] == [1, 10]
    run.keep_rollouts_through(None)  # a fresh start
    assert run.read_rollouts() == []
