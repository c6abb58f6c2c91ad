"""Experiment tracking: `grpo.report_to` reaches TRL, our own metrics land in the same TensorBoard stream (event
files read back), and a tracker that is not installed stops `train` with one line before any model loads."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torch

from lowrank_rlvr.cli import app
from lowrank_rlvr.config import load_config
from lowrank_rlvr.tracking import TRACKER_PACKAGES
from lowrank_rlvr.train import grpo_arguments

CLI = str(Path(sys.executable).parent / "lowrank-rlvr")


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under `folder`, as tensorboard itself reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_event_files_hold_training_accuracy_and_reflection_rate(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("TENSORBOARD_LOGGING_DIR", None)
    result = subprocess.run(
        [CLI, "train", "configs/tiny-cpu.yaml", "--output-dir", str(run_dir), "--set", "grpo.max_steps=3",
         "--set", "grpo.save_steps=3", "--set", "grpo.report_to=tensorboard"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"tracking: tensorboard event files in {run_dir / 'tensorboard'}" in result.stdout
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    scalars = _scalars(run_dir / "tensorboard")
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # TRL's own metric (the accuracy reward's mean: our train_accuracy) and ours (log_metric), one stream
    for tag, key in [("train/rewards/accuracy/mean", "train_accuracy"),
                     ("train/reflection_per_1k_tokens", "reflection_per_1k_tokens"),
                     ("train/kl", "kl"), ("train/entropy", "entropy")]:
        assert tag in scalars, sorted(scalars)
        assert [step for step, _ in scalars[tag]] == [1, 2, 3]
        assert [value for _, value in scalars[tag]] == pytest.approx([row[key] for row in logged], rel=1e-6), tag


def _missing_tracker() -> str:
    for name, packages in TRACKER_PACKAGES.items():
        if not any(importlib.util.find_spec(package) for package in packages):
            return name
    pytest.skip("every tracker package is installed here")


def test_a_tracker_that_is_not_installed_is_one_line_and_exit_2_before_any_model_loads(cli, tmp_path):
    name = _missing_tracker()
    run_dir = tmp_path / "run"
    result = cli.invoke(app, ["train", "tiny-cpu", "-o", str(run_dir), "--set", f"grpo.report_to=[tensorboard, {name}]"])
    assert result.exit_code == 2, result.output
    package = TRACKER_PACKAGES[name][0]
    assert result.stderr.strip() == (
        f"error: grpo.report_to: '{name}' needs the {package} package (pip install 'lowrank-rlvr[tracking]')"
    )
    assert not run_dir.exists()  # nothing written, no model loaded


def test_an_unknown_tracker_is_refused_when_the_config_loads(cli, tmp_path):
    result = cli.invoke(app, ["train", "tiny-cpu", "-o", str(tmp_path / "run"), "--set", "grpo.report_to=tensorbord"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "grpo.report_to" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_report_to_and_run_name_reach_trls_arguments():
    cfg = load_config("tiny-cpu", ["grpo.report_to=[tensorboard]", "grpo.run_name=pi1-lora"], output_dir="runs/x")
    args = grpo_arguments(cfg, "hf", False, torch.float32)
    assert args.report_to == ["tensorboard"] and args.run_name == "pi1-lora"
    default = grpo_arguments(load_config("tiny-cpu", output_dir="runs/tiny-7"), "hf", False, torch.float32)
    assert default.report_to == []  # 'none': transformers' own spelling of no tracker
    assert default.run_name == "tiny-7"  # the run folder's name


@pytest.mark.slow
def test_wandb_without_an_api_key_logs_offline_into_the_run_folder(tmp_path):
    """No key, no login, no network: the run is logged offline; its record file names our metrics and TRL's."""
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path / "home")}  # no ~/.netrc login
    result = subprocess.run(
        [CLI, "train", "tiny-cpu", "--output-dir", str(run_dir), "--set", "grpo.max_steps=3", "--set",
         "grpo.save_steps=3", "--set", "grpo.report_to=wandb", "--set", "grpo.run_name=tiny-offline"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"tracking: wandb (offline) in {run_dir / 'wandb'}" in result.stdout
    (records,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = records.read_bytes()  # protobuf records: metric names are stored as plain strings
    for key in (b"train/rewards/accuracy/mean", b"train/reflection_per_1k_tokens", b"tiny-offline"):
        assert key in data, key
