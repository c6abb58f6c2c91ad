"""End-to-end training through the CLI on the tiny CPU config: learning signal, run folder, weights, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lowrank_rlvr.cli import app
from run_files import metrics, sha256

CLI = [str(Path(sys.executable).parent / "lowrank-rlvr")]
# Every metrics.jsonl key is written at every step (None where the logs lacked it): these are the ones TRL must fill.
FILLED_BY_TRL = ("reward_mean", "reward_std", "train_accuracy", "entropy", "completion_length", "kl", "learning_rate",
                 "grad_norm", "reflection_per_1k_tokens", "grader_timeouts")
# `train` in a subprocess, SIGKILLed by itself right after checkpoint-N is marked complete: a deterministic kill point
# (the real CLI; only RunFolder.mark_complete is wrapped, to kill the process at that moment).
KILL_AFTER_CHECKPOINT = """
import os, signal, sys
from lowrank_rlvr.runs import RunFolder
kill_at, mark_complete = int(sys.argv[1]), RunFolder.mark_complete
def mark_and_kill(self, step):
    mark_complete(self, step)
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
RunFolder.mark_complete = mark_and_kill
from lowrank_rlvr.cli import app
app(sys.argv[2:], prog_name="lowrank-rlvr")
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model):
    """The shipped tiny-cpu.yaml, unchanged, trained once for the tests below."""
    run_dir = tmp_path_factory.mktemp("train") / "tiny"
    base_before = sha256(tiny_model / "model.safetensors")
    result = run_cli("train", "configs/tiny-cpu.yaml", "--output-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return {"dir": run_dir, "base_before": base_before, "result": result}


@pytest.mark.slow
def test_tiny_config_learns_its_one_example_from_reward_alone(tiny_run):
    # Not a lucky seed: the shipped recipe learned on >= 19 of 20 seeds for each of three builds of the tiny model
    # (benchmarks/results/tiny-seeds-*.json), so a failure here is a regression of the recipe, not bad luck.
    rows = metrics(tiny_run["dir"])
    assert [r["step"] for r in rows] == list(range(1, 201))  # every step of grpo.max_steps (200) done, once
    unfilled = [(row["step"], key) for row in rows for key in FILLED_BY_TRL if row[key] is None]
    assert not unfilled, f"metrics TRL did not fill: {unfilled[:5]}"
    assert all(row["format_reward"] is None for row in rows)  # reward.kind accuracy: no format reward is logged
    accuracy = [r["train_accuracy"] for r in rows]
    first, last = sum(accuracy[:5]) / 5, sum(accuracy[-5:]) / 5
    per_10_steps = " ".join(  # step: mean accuracy / mean completion length, to tell "never learned" from "collapsed"
        f"{chunk[0]['step']}:{sum(r['train_accuracy'] for r in chunk) / len(chunk):.2f}"
        f"/{sum(r['completion_length'] for r in chunk) / len(chunk):.0f}tok"
        for chunk in (rows[start : start + 10] for start in range(0, len(rows), 10))
    )
    assert first <= 0.5 and last >= 0.9, f"training accuracy {first:.2f} -> {last:.2f}; per 10 steps: {per_10_steps}"


@pytest.mark.slow
def test_run_folder_holds_config_adapter_checkpoints_and_history(tiny_run, tiny_model):
    run_dir = tiny_run["dir"]
    resolved = (run_dir / "config.yaml").read_text()
    assert "num_generations: 8" in resolved and "generation_batch_size: 8" in resolved
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert Path(adapter_config["base_model_name_or_path"]) == tiny_model
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-100", "checkpoint-200"]
    for checkpoint in run_dir.glob("checkpoint-*"):
        assert (checkpoint / "checkpoint_complete").exists() and (checkpoint / "optimizer.pt").exists()
    history = json.loads((run_dir / "history.json").read_text())
    assert list(history) == ["0"] and len(history["0"]) == 2  # 200 steps over 128 prompts: an epoch and a part
    assert "adapter saved to" in tiny_run["result"].stdout
    assert (run_dir / "report" / "report.html").is_file() and (run_dir / "report" / "accuracy.png").stat().st_size > 0


@pytest.mark.slow
def test_lora_weights_changed_and_base_weights_did_not(tiny_run, tiny_model):
    final = load_file(tiny_run["dir"] / "adapter" / "adapter_model.safetensors")
    early = load_file(tiny_run["dir"] / "checkpoint-100" / "adapter_model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    # the adapter holds LoRA tensors, plus (peft's rule when lm_head is adapted) a copy of the frozen lm_head
    copied = {name for name in final if "lora_" not in name}
    assert copied == {"base_model.model.lm_head.base_layer.weight"}
    assert (final.pop("base_model.model.lm_head.base_layer.weight") == base["lm_head.weight"]).all()
    # peft initialises every lora_B to zero: training must have moved all of them, and kept moving after step 100
    assert all(t.abs().sum() > 0 for name, t in final.items() if "lora_B" in name)
    assert any(not (final[name] == early[name]).all() for name in final if "lora_" in name)
    assert sha256(tiny_model / "model.safetensors") == tiny_run["base_before"]


@pytest.mark.slow
def test_resume_after_kill_reaches_max_steps(tmp_path, tiny_model):
    run_dir = tmp_path / "killed"
    args = ["train", "tiny-cpu", "--output-dir", str(run_dir), "--set", "grpo.max_steps=30", "--set", "grpo.save_steps=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT, "10", *args], capture_output=True, text=True,
                            env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (run_dir / "checkpoint-10" / "checkpoint_complete").exists()
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 11))  # killed at step 10: nothing after it
    assert not (run_dir / "checkpoint-20").exists() and not (run_dir / "adapter").exists()
    # a checkpoint cut off mid-write has no completion marker and must be ignored
    (run_dir / "checkpoint-25").mkdir(exist_ok=True)

    result = run_cli(*args, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from checkpoint-10 (step 10)" in result.stdout
    steps = [r["step"] for r in metrics(run_dir)]
    assert steps == list(range(1, 31)), "every step logged exactly once across the kill"
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()


def test_a_used_run_folder_needs_resume(cli, tmp_path):
    (tmp_path / "run" / "checkpoint-5").mkdir(parents=True)
    result = cli.invoke(app, ["train", "tiny-cpu", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "already holds a run: pass --resume" in result.stderr


def test_unsloth_backend_without_cuda_is_one_line_and_exit_2(cli, tmp_path):
    unsloth = ["--set", "model.backend=unsloth", "--set", "model.dtype=auto"]  # tiny-cpu's float32 is hf-only
    result = cli.invoke(app, ["train", "tiny-cpu", "-o", str(tmp_path / "run"), *unsloth])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: backend 'unsloth' needs a CUDA GPU and none was found (use model.backend: hf)"
    assert not (tmp_path / "run").exists()


def test_auto_backend_is_hf_without_cuda():
    from lowrank_rlvr.backends import choose_backend

    assert choose_backend("auto", on_cuda=False) == "hf" and choose_backend("hf", on_cuda=False) == "hf"


def test_a_metrics_row_holds_every_documented_key_in_order(tmp_path):
    from lowrank_rlvr.recorder import RunRecorder
    from lowrank_rlvr.runs import METRIC_KEYS, RunFolder
    from lowrank_rlvr.runtime import Launch

    run = RunFolder(tmp_path)
    recorder = RunRecorder(run, Launch(0, 1), resumed_step=None)
    recorder._write_metrics(1, {"reward": 0.5, "rewards/accuracy/mean": 0.25, "entropy": 0.3})
    [row] = run.read_metrics()
    assert tuple(row) == METRIC_KEYS
    assert (row["step"], row["reward_mean"], row["train_accuracy"], row["entropy"]) == (1, 0.5, 0.25, 0.3)
    assert row["kl"] == 0.0 and row["grad_norm"] is None and row["sampling_logp_difference_mean"] is None


def test_the_unsloth_path_gets_the_papers_settings_and_colocated_sampling():
    """Unsloth 2026.10.9's GRPOConfig swaps in DAPO defaults unless told otherwise: every one must be explicit."""
    from lowrank_rlvr.config import load_config
    from lowrank_rlvr.train import grpo_arguments

    import torch

    args = grpo_arguments(load_config("qwen2.5-math-1.5b-pi1", output_dir="unused"), "unsloth", False, torch.float32)
    assert args.use_vllm and args.vllm_mode == "colocate" and not args.gradient_checkpointing
    assert (args.beta, args.entropy_coef, args.temperature, args.num_generations) == (0.001, 0.001, 0.6, 8)
    assert (args.epsilon, args.epsilon_high, args.mask_truncated_completions) == (0.2, 0.2, False)
    assert args.optim == "adamw_torch" and args.loss_type == "dapo" and args.vllm_importance_sampling_correction


def test_every_grpo_setting_reaches_trl_under_its_name_or_is_named_as_ours():
    """A setting added to GRPOSettings must be passed to TRL (SAME_AS_TRL) or say why not (NOT_AS_TRL)."""
    from lowrank_rlvr.config import GRPOSettings, load_config
    from lowrank_rlvr.train import NOT_AS_TRL, SAME_AS_TRL, grpo_arguments

    import torch

    assert set(GRPOSettings.model_fields) == set(SAME_AS_TRL) | set(NOT_AS_TRL)
    assert not set(SAME_AS_TRL) & set(NOT_AS_TRL)
    overrides = ["grpo.learning_rate=3e-5", "grpo.top_p=0.9", "grpo.vllm_server_port=8123", "grpo.seed=7"]
    cfg = load_config("tiny-cpu", overrides, output_dir="unused")
    args = grpo_arguments(cfg, "hf", False, torch.float32)
    assert {name: getattr(args, name) for name in SAME_AS_TRL if name != "report_to"} == {
        name: getattr(cfg.grpo, name) for name in SAME_AS_TRL if name != "report_to"}
    assert (args.learning_rate, args.top_p, args.vllm_server_port, args.seed) == (3e-5, 0.9, 8123, 7)


# -- resume from every place a kill can leave a run ----------------------------------------------------------------
# A SIGKILL leaves the run folder in one of these states (writes are atomic: a file or folder is there whole or not
# at all, and a checkpoint counts only with its completion marker). Each is made from a finished 6-step run, and
# `--resume` must end with steps 1..6 logged once, the final adapter and the report.
SHORT = ["--set", "grpo.max_steps=6", "--set", "grpo.save_steps=3"]


@pytest.fixture(scope="module")
def finished_short_run(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("short") / "run"
    result = run_cli("train", "tiny-cpu", "--output-dir", str(run_dir), *SHORT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    return run_dir


def _killed_before_the_first_checkpoint(run: Path) -> None:
    for checkpoint in run.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    shutil.rmtree(run / "adapter"), shutil.rmtree(run / "report")
    _keep_metrics(run, 2)


def _killed_between_checkpoints(run: Path) -> None:
    shutil.rmtree(run / "checkpoint-6"), shutil.rmtree(run / "adapter"), shutil.rmtree(run / "report")
    _keep_metrics(run, 5)


def _killed_after_the_last_checkpoint(run: Path) -> None:
    shutil.rmtree(run / "adapter"), shutil.rmtree(run / "report")


def _killed_during_the_final_save(run: Path) -> None:
    (run / "adapter").rename(run / "adapter.partial")
    (run / "adapter.partial" / "adapter_model.safetensors").write_bytes(b"half a file")
    shutil.rmtree(run / "report")


def _killed_while_drawing_the_report(run: Path) -> None:
    shutil.rmtree(run / "report")


def _keep_metrics(run: Path, last_step: int) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:last_step]) + '{"step": 9, "rew')  # and a torn line


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill, says",
    [
        (_killed_before_the_first_checkpoint, "training from the start"),
        (_killed_between_checkpoints, "resuming from checkpoint-3"),
        (_killed_after_the_last_checkpoint, "checkpoint-6 is the last step"),
        (_killed_during_the_final_save, "checkpoint-6 is the last step"),
        (_killed_while_drawing_the_report, "already finished"),
        (lambda run: None, "already finished"),
    ],
    ids=["before-first-checkpoint", "between-checkpoints", "after-last-checkpoint", "during-final-save",
         "during-report", "finished"],
)
def test_resume_after_a_kill_anywhere_ends_at_exactly_max_steps(finished_short_run, tmp_path, kill, says):
    run = tmp_path / "run"
    shutil.copytree(finished_short_run, run)
    kill(run)
    result = run_cli("train", "tiny-cpu", "--output-dir", str(run), *SHORT, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert says in result.stdout, result.stdout[-2000:]
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5, 6], "steps 1..max_steps, each logged once"
    assert sorted(p.name for p in run.glob("checkpoint-*")) in (["checkpoint-3", "checkpoint-6"],)
    load_file(run / "adapter" / "adapter_model.safetensors")  # whole, loadable
    assert not (run / "adapter.partial").exists()
    assert (run / "report" / "report.html").is_file()


def test_the_format_baseline_hands_trl_the_format_reward_alone():
    """TRL sums every reward function it is given (weight 1 each unless told): accuracy must ride along at 0."""
    import torch

    from lowrank_rlvr.config import load_config
    from lowrank_rlvr.reward_funcs import reward_functions
    from lowrank_rlvr.train import grpo_arguments

    cfg = load_config("tiny-cpu", ["reward.kind=format"], output_dir="unused")
    names = [f.__name__ for f in reward_functions(grader=None, kind="format", recorder=None)]
    weights = grpo_arguments(cfg, "hf", False, torch.float32).reward_weights
    assert dict(zip(names, weights, strict=True)) == {"format": 1.0, "accuracy": 0.0}


@pytest.mark.slow
def test_a_format_run_logs_the_format_reward_as_its_reward(tmp_path, tiny_model):
    run = tmp_path / "format"
    result = run_cli("train", "tiny-cpu", "-o", str(run), "--set", "reward.kind=format", *SHORT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = metrics(run)
    assert all(row["reward_mean"] == pytest.approx(row["format_reward"]) for row in rows), rows
    assert all(row["reward_mean"] <= 1.0 for row in rows), "the format reward's maximum is 1"
    assert all(row["train_accuracy"] is not None for row in rows), "accuracy is still logged"


@pytest.mark.slow
def test_a_collapsing_run_says_so_records_it_and_marks_it_in_the_report_and_tracker(tmp_path, tiny_model):
    """lr 0.05 without clipping turns the tiny policy deterministic on a wrong answer within a few steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "collapse"
    result = run_cli(
        "train", "tiny-cpu", "-o", str(run), "--set", "grpo.max_steps=20", "--set", "grpo.save_steps=20",
        "--set", "grpo.learning_rate=0.05", "--set", "grpo.max_grad_norm=10", "--set", "grpo.warmup_steps=0",
        "--set", "grpo.report_to=tensorboard",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = metrics(run)
    curve = [(r["step"], r["train_accuracy"], round(r["entropy"], 4)) for r in rows]
    warned = [(r["step"], w["kind"]) for r in rows for w in r["warnings"]]
    assert [kind for _, kind in warned] == ["entropy_collapse"], curve  # once, not at every step after
    step = warned[0][0]
    printed = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert len(printed) == 1 and f"step {step}: entropy" in printed[0] and "grpo.learning_rate" in printed[0]
    assert f"warning at step {step}" in (run / "report" / "report.html").read_text()
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = [tag for tag in events.Tags()["scalars"] if tag.endswith("warnings/entropy_collapse")]
    assert tags and [e.step for e in events.Scalars(tags[0])] == [step]


def test_format_plus_accuracy_trains_on_both_rewards():
    import torch

    from lowrank_rlvr.config import load_config
    from lowrank_rlvr.reward_funcs import reward_functions
    from lowrank_rlvr.train import grpo_arguments

    cfg = load_config("tiny-cpu", ["reward.kind=format+accuracy"], output_dir="unused")
    names = [f.__name__ for f in reward_functions(grader=None, kind=cfg.reward.kind, recorder=None)]
    weights = grpo_arguments(cfg, "hf", False, torch.float32).reward_weights
    assert dict(zip(names, weights, strict=True)) == {"format": 1.0, "accuracy": 1.0}
