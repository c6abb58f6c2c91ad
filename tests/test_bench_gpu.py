"""The GPU benchmark rehearsed on CPU (issue 24), and the unsloth backend without vLLM (`model.fast_inference`).

`scripts/bench_gpu.py --rehearse` runs the benchmark's own code path (config -> runtime -> load_policy -> TRL's
GRPOTrainer -> compute_loss + backward + AdamW on synthetic worst-case rollouts -> generate -> plan) on the hf
backend with tiny shapes, since Unsloth cannot be imported without CUDA. What only a GPU can show (Unsloth's load,
its fused loss, the memory figures) is not tested here. The unsloth branch of our wiring is tested with the backend
name as the stand-in: `grpo_arguments(cfg, "unsloth", ...)` builds TRL's real GRPOConfig.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lowrank_rlvr.cli import app

REPO = Path(__file__).resolve().parents[1]
SCHEMA = (  # issue 24: every run carries these
    "device", "model", "backend", "config", "peak_memory_gb", "step_seconds", "update_seconds", "generation_seconds",
    "trained_tokens_per_second", "generated_tokens_per_second", "plan_estimate_gb",
)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench-gpu")
    command = [
        sys.executable, str(REPO / "scripts" / "bench_gpu.py"), "--rehearse", "--output-dir", str(out),
        "--work-dir", str(out / "work"), "--steps", "2", "--generate-tokens", "8",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = list(out.glob("gpu-rehearsal-cpu-*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_rehearsal_writes_the_gpu_schema_for_both_configs(rehearsal):
    assert rehearsal["finished"] and rehearsal["rehearsal"] and not rehearsal["skipped"]
    assert rehearsal["versions"]["trl"] == "1.14.2" and rehearsal["versions"]["transformers"] == "5.17.0"
    runs = {run["config"]["name"]: run for run in rehearsal["runs"]}
    assert sorted(runs) == ["qwen2.5-math-1.5b-pi1", "qwen2.5-math-7b-pi1"]
    for run in runs.values():
        assert run["status"] == "ok", run.get("traceback_tail")
        missing = [key for key in SCHEMA if run.get(key) is None]
        assert not missing, missing
        assert run["backend"] == "hf" and run["device"] == rehearsal["device"]
        assert run["config"]["fast_inference"] is False and run["config"]["use_vllm"] is False
        trl = run["config"]["trl_args"]  # what TRL's GRPOConfig holds: the bench's settings reached it unchanged
        assert (trl["per_device_train_batch_size"], trl["gradient_accumulation_steps"], trl["use_vllm"]) == (
            run["config"]["per_device_train_batch_size"], run["config"]["gradient_accumulation_steps"], False
        )
        assert trl["max_completion_length"] == run["config"]["max_completion_length"]


def test_rehearsal_steps_are_one_worst_case_group_through_the_real_update(rehearsal):
    """8 completions of max_completion_length per optimizer step: 1 micro-batch of 8 (1.5B), 2 of 4 (7B)."""
    runs = {run["config"]["name"]: run for run in rehearsal["runs"]}
    assert (runs["qwen2.5-math-1.5b-pi1"]["config"]["gradient_accumulation_steps"],
            runs["qwen2.5-math-7b-pi1"]["config"]["gradient_accumulation_steps"]) == (1, 2)
    for run in runs.values():
        config = run["config"]
        assert config["completions_per_step"] == 8 == config["num_generations"]
        assert config["sequence_tokens"] == config["prompt_tokens"] + config["max_completion_length"]
        assert run["trained_tokens_per_step"] == 8 * config["sequence_tokens"]
        steps = run["steps"]
        assert len(steps) == 2 and all(len(s["losses"]) == config["gradient_accumulation_steps"] for s in steps)
        assert all(math.isfinite(loss) for s in steps for loss in s["losses"])
        assert all(s["grad_norm"] > 0 for s in steps)
        assert run["adapter_changed"]  # the optimizer moved the LoRA weights (B starts at zero)
        assert run["step_seconds"] == pytest.approx(run["update_seconds"] + run["scoring_seconds"], abs=1e-3)
        assert run["trained_tokens_per_second"] == pytest.approx(
            run["trained_tokens_per_step"] / run["update_seconds"], rel=1e-3
        )
        assert run["generated_tokens"] == 8 * 8  # one group, every sequence forced to the asked length
        assert run["plan_estimate_gb"] == pytest.approx(sum(run["plan_lines_gb"].values()), abs=0.01)
        assert run["plan_estimate_gb"] == run["plan_phases_gb"]["train"]
        assert run["peak_memory_gb"] > 0


def test_fast_inference_off_plans_no_vllm_share(cli):
    with_vllm = cli.invoke(app, ["plan", "qwen2.5-math-1.5b-pi1", "--gpu-memory", "24"])
    without = cli.invoke(app, ["plan", "qwen2.5-math-1.5b-pi1", "--gpu-memory", "24", "--set",
                               "model.fast_inference=false"])
    assert with_vllm.exit_code == 0 and without.exit_code == 0, without.output
    assert "vllm_kv_cache" in with_vllm.output and "vllm_runtime" in with_vllm.output
    assert "vllm" not in without.output.lower() and "generate_kv_cache" in without.output
    assert "other phase 'train'" in without.output  # Unsloth's update, after generate's phase


def test_fast_inference_off_reaches_trl_as_use_vllm_false():
    import torch

    from lowrank_rlvr.config import load_config
    from lowrank_rlvr.train import grpo_arguments

    def use_vllm(*overrides: str) -> bool:
        cfg = load_config("qwen2.5-math-1.5b-pi1", list(overrides), output_dir="unused")
        return grpo_arguments(cfg, "unsloth", False, torch.float32).use_vllm

    assert use_vllm() is True
    assert use_vllm("model.fast_inference=false") is False
    # grpo.use_vllm is the hf backend's (with 'auto' it is refused on a 4-bit base: auto may become hf, issue 25)
    assert use_vllm("model.backend=unsloth", "model.fast_inference=false", "grpo.use_vllm=true") is False


def test_standby_without_fast_inference_is_rejected_before_any_model(cli):
    result = cli.invoke(app, ["plan", "qwen2.5-math-1.5b-pi1", "--set", "model.fast_inference=false",
                              "--set", "model.vllm_standby=true"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith(
        "qwen2.5-math-1.5b-pi1.yaml: model: vllm_standby needs fast_inference "
        "(standby shares memory with Unsloth's vLLM engine)"
    ), lines


def test_rehearsal_time_budget_skips_what_would_not_finish(tmp_path):
    """A spent budget starts no model and still writes a finished file that says why."""
    command = [
        sys.executable, str(REPO / "scripts" / "bench_gpu.py"), "--rehearse", "--output-dir", str(tmp_path),
        "--work-dir", str(tmp_path / "work"), "--time-budget", "0",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = tmp_path.glob("gpu-rehearsal-cpu-*.json")
    data = json.loads(result.read_text())
    assert data["finished"] and data["runs"] == []
    assert [s["model"] for s in data["skipped"]] == ["qwen2.5-math-1.5b", "qwen2.5-math-7b"]
    assert all(s["why"].startswith("time budget") for s in data["skipped"])
