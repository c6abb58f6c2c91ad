"""Control rewards (`reward.kind: random`, `zero`) and the shipped control configs, through the CLI.

The tiny model trains for a few steps on CPU (real TRL, peft, math-verify). What is checked: the random reward's
rate and its reproducibility for a seed; that `zero` moves the adapter only through the entropy term (every
advantage is 0); that accuracy is logged for every control and trains for none; and that each control config is its
treatment with only the documented differences, within 24 GB by `plan`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from lowrank_rlvr.cli import app
from lowrank_rlvr.config import CONFIG_DIR, RewardSettings, load_config
from run_files import metrics

CLI = [str(Path(sys.executable).parent / "lowrank-rlvr")]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env)


def train(run_dir: Path, *overrides: str) -> list[dict]:
    sets = [item for override in overrides for item in ("--set", override)]
    result = run_cli("train", "tiny-cpu", "-o", str(run_dir), *sets)
    assert result.returncode == 0, result.stderr[-3000:]
    return metrics(run_dir)


# -- the reward table ----------------------------------------------------------------------------------------------


def test_every_reward_kind_computes_accuracy_and_only_accuracy_kinds_train_on_it():
    from lowrank_rlvr.config import REWARD_TERMS
    from lowrank_rlvr.reward_funcs import reward_functions, reward_weights

    kinds = typing.get_args(RewardSettings.model_fields["kind"].annotation)
    assert set(REWARD_TERMS) == set(kinds)
    trained_on_accuracy = set()
    for kind in kinds:
        names = [f.__name__ for f in reward_functions(grader=None, kind=kind, recorder=None)]
        terms = dict(zip(names, reward_weights(kind), strict=True))
        assert "accuracy" in terms, kind  # the measurement, in every run
        if terms["accuracy"]:
            trained_on_accuracy.add(kind)
    assert trained_on_accuracy == {"accuracy", "format+accuracy"}
    assert dict(zip([f.__name__ for f in reward_functions(None, "random", None)], reward_weights("random"))) == {
        "random": 1.0, "accuracy": 0.0}
    assert reward_weights("zero") == [0.0]


def test_the_random_reward_ignores_the_text_and_repeats_for_a_seed():
    from lowrank_rlvr.reward_funcs import RandomReward

    draws = [reward for step in range(200) for reward in RandomReward(0.3, seed=5)(50, step)]
    rate, error = sum(draws) / len(draws), math.sqrt(0.3 * 0.7 / len(draws))
    assert abs(rate - 0.3) < 4 * error, (rate, error)
    assert RandomReward(0.3, seed=5)(50, 7) == RandomReward(0.3, seed=5)(50, 7)
    assert RandomReward(0.3, seed=5)(50, 7) != RandomReward(0.3, seed=6)(50, 7)
    assert RandomReward(0.3, seed=5, rank=1)(50, 7) != RandomReward(0.3, seed=5, rank=0)(50, 7)
    twice = RandomReward(0.3, seed=5)
    assert twice(50, 7) != twice(50, 7), "a second call in one step draws new rewards"
    assert set(RandomReward(0.0, seed=1)(100, 0)) == {0.0} and set(RandomReward(1.0, seed=1)(100, 0)) == {1.0}


def test_controls_match_no_paper_row_but_the_base():
    from lowrank_rlvr.paper import reference_for_run, training_of

    for kind in ("random", "zero"):
        cfg = load_config("qwen2.5-math-1.5b-pi1", [f"reward.kind={kind}"])
        assert training_of(cfg) is None
        assert reference_for_run(cfg, step=0).training == "base"
    assert training_of(load_config("qwen2.5-math-1.5b-pi1-wrong-label")) is None  # not pi_1's label


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_a_probability_out_of_range_is_one_line_before_any_model(cli, value, tmp_path):
    result = cli.invoke(app, ["train", "tiny-cpu", "-o", str(tmp_path / "r"), "--set", "reward.kind=random",
                              "--set", f"reward.random_probability={value}"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "reward.random_probability" in result.output
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


# -- training through the CLI --------------------------------------------------------------------------------------

RANDOM = ["reward.kind=random", "reward.random_probability=0.3", "grpo.per_device_train_batch_size=32",
          "grpo.max_completion_length=4", "grpo.max_steps=4", "grpo.save_steps=4"]


@pytest.mark.slow
def test_a_random_reward_run_rewards_at_its_rate_and_repeats_exactly_for_a_seed(tmp_path, tiny_model):
    first = train(tmp_path / "first", *RANDOM)
    again = train(tmp_path / "again", *RANDOM)
    other = train(tmp_path / "other-seed", *RANDOM, "grpo.seed=7")
    rollouts = 32 * len(first)
    rate = sum(row["reward_mean"] for row in first) / len(first)
    error = math.sqrt(0.3 * 0.7 / rollouts)
    assert abs(rate - 0.3) < 4 * error, (rate, error, [row["reward_mean"] for row in first])
    assert [row["reward_mean"] for row in first] == [row["reward_mean"] for row in again]
    assert [row["reward_mean"] for row in first] != [row["reward_mean"] for row in other]
    assert all(row["train_accuracy"] is not None for row in first), "accuracy is still measured"
    assert json.loads((tmp_path / "first" / "history.json").read_text()), "per-example accuracy too"


def lora_weights(adapter_dir: Path) -> dict:
    return load_file(adapter_dir / "adapter_model.safetensors")


ZERO = ["reward.kind=zero", "grpo.beta=0", "grpo.max_steps=2", "grpo.save_steps=1"]


@pytest.mark.slow
def test_zero_reward_moves_the_adapter_only_through_the_entropy_term(tmp_path, tiny_model):
    """Every advantage is 0: with both coefficients 0 the loss is 0 and nothing moves; the entropy bonus moves it."""
    still = tmp_path / "no-entropy"
    rows = train(still, *ZERO, "grpo.entropy_coef=0")
    assert [row["reward_mean"] for row in rows] == [0.0, 0.0]
    assert all(row["train_accuracy"] is not None for row in rows), "accuracy is still measured"
    after_one, after_two = lora_weights(still / "checkpoint-1"), lora_weights(still / "adapter")
    assert all(after_one[name].equal(after_two[name]) for name in after_one), "a step moved the adapter"
    assert all(not tensor.any() for name, tensor in after_two.items() if "lora_B" in name), "B left its zero init"

    moving = tmp_path / "entropy"
    train(moving, *ZERO, "grpo.entropy_coef=0.05")
    moved_one, moved_two = lora_weights(moving / "checkpoint-1"), lora_weights(moving / "adapter")
    assert any(tensor.any() for name, tensor in moved_two.items() if "lora_B" in name)
    assert any(not moved_one[name].equal(moved_two[name]) for name in moved_one)


# -- the shipped control configs -----------------------------------------------------------------------------------

CONTROLS = {  # config -> (its treatment, the settings that differ and how)
    "qwen2.5-math-1.5b-pi1-random": ("qwen2.5-math-1.5b-pi1", {"reward.kind": "random"}),
    "qwen2.5-math-1.5b-pi1-entropy": ("qwen2.5-math-1.5b-pi1", {"reward.kind": "zero", "grpo.beta": 0.0}),
    "qwen2.5-math-1.5b-pi1-wrong-label": ("qwen2.5-math-1.5b-pi1", {"data.examples.0.answer": "4"}),
    "smollm2-135m-cpu-random": ("smollm2-135m-cpu", {"reward.kind": "random"}),
    "smollm2-135m-cpu-entropy": ("smollm2-135m-cpu", {"reward.kind": "zero", "grpo.entropy_coef": 0.001}),
    "smollm2-135m-cpu-wrong-label": ("smollm2-135m-cpu", {"data.examples.0.answer": "43"}),
}


def flatten(node, prefix="") -> dict:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    if isinstance(node, list):
        return {k: v for index, value in enumerate(node) for k, v in flatten(value, f"{prefix}{index}.").items()}
    return {prefix.rstrip("."): node}


@pytest.mark.parametrize("control", sorted(CONTROLS))
def test_a_control_config_is_its_treatment_but_for_what_it_controls(control):
    treatment, differences = CONTROLS[control]
    ours = flatten(load_config(control).model_dump(mode="json"))
    theirs = flatten(load_config(treatment).model_dump(mode="json"))
    changed = {key: ours[key] for key in ours if ours[key] != theirs.get(key)}
    assert changed == differences
    header = (CONFIG_DIR / f"{control}.yaml").read_text().split("\nmodel:")[0]
    assert f"Control for {treatment}" in header and "arXiv" in header  # which paper's row it reproduces


@pytest.mark.parametrize("control", [c for c in sorted(CONTROLS) if c.startswith("qwen")])
def test_the_qwen_controls_fit_24_gb(cli, control):
    result = cli.invoke(app, ["plan", control, "--gpu-memory", "24"])
    assert result.exit_code == 0, result.output
    assert "fits" in result.output


def test_the_control_configs_name_the_treatment_in_their_launch_line():
    for control in CONTROLS:
        first = (CONFIG_DIR / f"{control}.yaml").read_text().splitlines()[0]
        assert first == f"# lowrank-rlvr train configs/{control}.yaml --output-dir runs/{control}"
        assert yaml.safe_load((CONFIG_DIR / f"{control}.yaml").read_text())["model"]
