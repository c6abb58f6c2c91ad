"""QLoRA on CPU, end to end through the CLI on the real SmolLM2-135M-Instruct (`builtin:smollm2-135m`).

`model.load_in_4bit=true` on the hf backend: the base is NF4 4-bit through bitsandbytes 0.50.2 (its `Linear4bit`
runs on CPU), prepared by peft's `prepare_model_for_kbit_training`, with LoRA over the 4-bit layers. With `beta > 0`
TRL 1.14.2 keeps no reference model for a peft model (grpo_trainer.py:982-985) and takes the reference log-probs with
the adapter switched off (2789): the 4-bit base itself. One run is trained, checkpointed, resumed to `max_steps`,
and its adapter merged into the float32 base (never into the 4-bit model, see `lowrank_rlvr.merge`).

Short on purpose: 4 rollouts of 12 tokens a step. The base model almost never earns SmolLM2's reward in so few
rollouts, so the entropy bonus (`entropy_coef` 0.01) is what moves the adapter: the gradient through the 4-bit layers
is then never zero, whatever the rollouts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from run_files import sha256

CLI = str(Path(sys.executable).parent / "lowrank-rlvr")
QLORA = ["--set", "model.load_in_4bit=true", "--set", "grpo.num_generations=4",
         "--set", "grpo.per_device_train_batch_size=4", "--set", "grpo.max_completion_length=12",
         "--set", "grpo.beta=0.01", "--set", "grpo.entropy_coef=0.01", "--set", "grpo.save_steps=1"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def base() -> Path:
    from lowrank_rlvr.builtin import smollm2_model_dir

    return smollm2_model_dir()


@pytest.fixture(scope="module")
def qlora_run(base: Path, tmp_path_factory) -> dict:
    """2 steps, then `--resume` to 3: the same run folder."""
    run = tmp_path_factory.mktemp("qlora") / "run"
    before = sha256(base / "model.safetensors")
    first = run_cli("train", "smollm2-135m-cpu", "-o", str(run), *QLORA, "--set", "grpo.max_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    resumed = run_cli("train", "smollm2-135m-cpu", "-o", str(run), *QLORA, "--set", "grpo.max_steps=3", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"dir": run, "base_before": before, "resumed": resumed}


@pytest.mark.slow
def test_a_4bit_run_trains_checkpoints_and_resumes_to_max_steps(qlora_run: dict):
    import yaml

    run = qlora_run["dir"]
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["load_in_4bit"] is True
    assert "resuming from checkpoint-2 (step 2)" in qlora_run["resumed"].stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]  # each step logged once across the two commands
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert all(row["entropy"] is not None for row in rows)  # the hf backend measures it


@pytest.mark.slow
def test_the_adapter_moved_the_4bit_base_did_not_and_the_kl_reference_is_the_base(qlora_run: dict, base: Path):
    from safetensors.torch import load_file

    run = qlora_run["dir"]
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    lora_b = {name: tensor for name, tensor in weights.items() if "lora_B" in name}
    assert lora_b and all(tensor.abs().max() > 0 for tensor in lora_b.values())  # peft starts every B at zero
    assert not any(".ref." in name for name in weights)  # no second adapter kept as the reference
    assert sha256(base / "model.safetensors") == qlora_run["base_before"]
    kl = [json.loads(line)["kl"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    # step 1: the adapter is still zero, so the policy IS the reference (the 4-bit base, adapter off): KL exactly 0;
    # a reference loaded apart (another copy, another precision) would differ. Then the adapter moves, and so does KL.
    assert kl[0] == 0.0 and all(value > 0 for value in kl[1:]), kl


@pytest.mark.slow
def test_merging_the_4bit_trained_adapter_into_the_float32_base(qlora_run: dict, base: Path, tmp_path: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    merged = run_cli("merge", str(qlora_run["dir"] / "adapter"), "--output", str(out), "--dtype", "fp32")
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert "quantization_config" not in json.loads((out / "config.json").read_text())  # a plain float32 model

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("What is 17+25? Put your final answer within \\boxed{}.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        untrained = plain(ids).logits
        with_adapter = PeftModel.from_pretrained(plain, qlora_run["dir"] / "adapter").eval()(ids).logits
    effect = (with_adapter - untrained).abs().max().item()
    assert effect > 1e-3, "the adapter must change the logits, or the comparison below says nothing"
    assert (exported - with_adapter).abs().max().item() < 1e-3 * effect  # merged == float32 base + adapter
