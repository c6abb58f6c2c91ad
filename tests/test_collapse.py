"""The collapse detector on real tiny-config curves (recorded on the 2-core development machine) and edge cases."""

from __future__ import annotations

import json
from pathlib import Path

from lowrank_rlvr.collapse import CollapseThresholds, collapse_warnings, scan_for_collapse

DATA = Path(__file__).resolve().parent / "data"


def curve(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def row(step: int, reward: float, entropy: float = 0.4, length: float = 11.0) -> dict:
    return {"step": step, "reward_mean": reward, "train_accuracy": reward, "entropy": entropy,
            "completion_length": length}


def warnings_step_by_step(rows: list[dict]) -> list:
    """What a trainer calling the detector after every logged step would raise."""
    return [warning for end in range(1, len(rows) + 1) for warning in collapse_warnings(rows[:end])]


def test_the_collapsed_default_seed_warns_once_per_kind_soon_after_the_format_broke():
    # tiny-cpu.yaml before its fix, seed 42: 6 rewarded steps in 28, then at step 29 the answer format broke
    # (completion length 11 -> 8 tokens, entropy 0.41 -> 0.01) and the reward stayed 0 for the remaining 171 steps
    rows = curve("tiny-collapsed-seed42.jsonl")
    raised = warnings_step_by_step(rows)
    assert [(w.kind, w.step) for w in raised] == [("entropy_collapse", 33), ("reward_collapse", 57)]
    assert scan_for_collapse(rows) == raised
    entropy, reward = raised
    assert entropy.message.startswith("step 33: entropy") and "11 -> 8 tokens" in entropy.message
    assert "since step 29" in reward.message and "6 of 28 steps were rewarded" in reward.message
    assert all(all(name in w.message for name in ("grpo.learning_rate", "grpo.adam_epsilon", "grpo.warmup_steps"))
               for w in raised)


def test_a_learning_run_that_saturates_with_low_entropy_raises_nothing():
    # seed 1 of the same config: long stretches without reward while exploring, accuracy 1.0 from ~step 95 on,
    # entropy 0.40 -> 0.01 (under 3% of its start) as the policy sharpens on the right answer
    rows = curve("tiny-learned-seed1.jsonl")
    assert sum(r["train_accuracy"] for r in rows[-5:]) / 5 >= 0.9 and rows[-1]["entropy"] < 0.05 * rows[0]["entropy"]
    assert warnings_step_by_step(rows) == []


def test_no_rows_or_too_few_rows_raise_nothing():
    assert collapse_warnings([]) == []
    assert collapse_warnings([row(1, 0.0, entropy=0.0)]) == []


def test_a_run_still_exploring_is_not_a_reward_collapse():
    # one lucky step, then a long stretch without reward: nothing was learned yet, so nothing was lost
    rows = [row(1, 0.125)] + [row(step, 0.0) for step in range(2, 200)]
    assert scan_for_collapse(rows) == []


def test_a_saturated_run_that_drops_to_zero_warns_after_the_shortest_window():
    rows = [row(step, 1.0, entropy=0.01) for step in range(1, 51)]
    rows += [row(step, 0.0, entropy=0.3) for step in range(51, 70)]
    raised = warnings_step_by_step(rows)
    assert [(w.kind, w.step) for w in raised] == [("reward_collapse", 50 + CollapseThresholds().min_zero_steps)]


def test_a_rare_reward_must_stay_away_longer_than_a_frequent_one():
    # rewarded every 4th step (25%): 0.75^n <= 1e-3 first at n = 25 unrewarded steps in a row
    rows = [row(step, 0.125 if step % 4 == 0 else 0.0) for step in range(1, 41)]
    rows += [row(step, 0.0) for step in range(41, 100)]
    assert [(w.kind, w.step) for w in scan_for_collapse(rows)] == [("reward_collapse", 40 + 25)]


def test_entropy_collapse_needs_a_whole_window_of_low_entropy():
    start = [row(step, 0.0) for step in range(1, 11)]
    flicker = [row(step, 0.0, entropy=0.001 if step % 2 else 0.4) for step in range(11, 40)]
    assert scan_for_collapse(start + flicker) == []
    frozen = start + [row(step, 0.0, entropy=0.001) for step in range(11, 16)]
    assert [(w.kind, w.step) for w in collapse_warnings(frozen)] == [("entropy_collapse", 15)]


def test_missing_values_are_skipped_not_read_as_zero():
    rows = [row(step, 1.0) for step in range(1, 11)]
    rows += [{"step": step, "reward_mean": None, "train_accuracy": None, "entropy": None, "completion_length": None}
             for step in range(11, 40)]
    assert scan_for_collapse(rows) == []
    nan_rows = [dict(r, entropy=float("nan")) for r in rows[:10]]
    assert scan_for_collapse(nan_rows) == []


def test_thresholds_can_be_loosened_for_another_model():
    rows = curve("tiny-learned-seed1.jsonl")
    strict = CollapseThresholds(entropy_fraction=0.1, max_accuracy=1.01)  # any low-entropy stretch short of perfect
    assert [w.kind for w in scan_for_collapse(rows, strict)] == ["entropy_collapse"]


def test_a_collapse_while_learning_is_a_reward_collapse_only():
    # tiny-cpu.yaml as shipped, build 0, seed 11: climbing (49 of 105 steps rewarded, accuracy 0.875 at step 105), then
    # one update made "\boxed{4}" the only answer; entropy stayed ~0.06 (15% of its start), so no entropy warning
    rows = curve("tiny-collapsed-while-learning-seed11.jsonl")
    raised = warnings_step_by_step(rows)
    assert [(w.kind, w.step) for w in raised] == [("reward_collapse", 116)]
    assert "since step 106" in raised[0].message and "49 of 105 steps were rewarded" in raised[0].message
