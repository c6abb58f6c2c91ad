"""The parity guard's detector (lowrank_rlvr.parity), pure: on measured curves and on edge cases. The guard firing
inside a real colocated vLLM run with a broken weight sync is tests/test_train_vllm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowrank_rlvr.parity import (
    SAMPLING_KEYS, ParityThresholds, first_mismatch, limit_exceeded, parity_warnings, sampling_values,
)

DATA = Path(__file__).resolve().parent / "data"


def row(step: int, mean: float | None, largest: float | None = None) -> dict:
    return {"step": step, "sampling_logp_difference_mean": mean,
            "sampling_logp_difference_max": largest if largest is not None else (None if mean is None else 4 * mean),
            "importance_sampling_ratio_min": 0.6, "importance_sampling_ratio_max": 1.4}


def step_by_step(rows: list[dict]) -> list:
    return [warning for end in range(1, len(rows) + 1) for warning in parity_warnings(rows[:end])]


def test_trl_names_map_onto_metrics_jsonl_names():
    logs = {"sampling/sampling_logp_difference/mean": 0.03, "sampling/importance_sampling_ratio/min": 0.7,
            "reward": 1.0}
    values = sampling_values(logs)
    assert set(values) == set(SAMPLING_KEYS)
    assert values["sampling_logp_difference_mean"] == 0.03 and values["importance_sampling_ratio_min"] == 0.7
    assert values["importance_sampling_ratio_max"] is None  # not logged: a run without a separate sampler
    assert sampling_values({"sampling/sampling_logp_difference/mean": float("nan")})["sampling_logp_difference_mean"] is None


def test_a_healthy_gap_raises_nothing_and_never_stops():
    rows = [row(step, 0.022 + 0.001 * (step % 12)) for step in range(1, 60)]
    assert step_by_step(rows) == []
    assert all(limit_exceeded(r, 0.5) is None for r in rows)


def test_without_a_sampler_nothing_is_raised():
    rows = [{"step": step, "reward_mean": 0.5} for step in range(1, 20)]
    assert step_by_step(rows) == [] and limit_exceeded(rows[-1], 0.5) is None


def test_one_noisy_step_does_not_warn_two_in_a_row_do_once():
    rows = [row(1, 0.03), row(2, 0.3), row(3, 0.03), row(4, 0.2), row(5, 0.25), row(6, 0.4), row(7, 0.5)]
    raised = step_by_step(rows)
    assert [(w.step, w.kind) for w in raised] == [(5, "sampler_mismatch")]
    assert first_mismatch(rows) == raised[0]
    message = raised[0].message
    assert message.startswith("step 5: sampler and trainer log-probabilities of the sampled tokens differ by 0.25")
    assert "max 1" in message and "importance ratio 0.6-1.4" in message and "for 2 steps" in message
    assert "grpo.use_vllm: false" in message and "not serving the trained weights" in message


def test_the_level_and_window_are_the_detector_s_thresholds():
    rows = [row(1, 0.06), row(2, 0.07), row(3, 0.2)]
    assert step_by_step(rows) == []  # under the default level, then only one step above it
    assert first_mismatch(rows, ParityThresholds(warn_mean=0.05, window=2)).step == 2
    assert first_mismatch(rows, ParityThresholds(warn_mean=0.15, window=1)).step == 3


def test_past_the_hard_limit_the_error_names_the_step_the_figure_and_the_setting():
    assert limit_exceeded(row(3, 0.49), 0.5) is None
    error = limit_exceeded(row(4, 0.8), 0.5)
    assert error.startswith("step 4: sampler and trainer log-probabilities of the sampled tokens differ by 0.8")
    assert "past grpo.max_sampling_logp_difference = 0.5: training stopped" in error
    assert limit_exceeded(row(4, 80.0), None) is None  # null: never stop
    assert limit_exceeded(row(4, None), 0.5) is None


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("parity-healthy-*.jsonl")))
def test_measured_healthy_colocated_runs_raise_nothing(name):
    rows = [json.loads(line) for line in (DATA / name).read_text().splitlines()]
    assert rows and step_by_step(rows) == []
    assert all(limit_exceeded(r, 0.5) is None for r in rows)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("parity-broken-*.jsonl")))
def test_measured_broken_sync_runs_warn_within_a_few_steps(name):
    rows = [json.loads(line) for line in (DATA / name).read_text().splitlines()]
    raised = step_by_step(rows)
    assert len(raised) == 1 and raised[0].step <= 4
