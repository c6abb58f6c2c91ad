"""`lowrank-rlvr merge`: merged logits equal base + adapter, a plain checkpoint, the model card, errors, Hub upload.

Everything runs on the tiny Qwen2 and a LoRA adapter with non-zero weights (`tiny_adapter`). The Hub is unreachable
here: the upload path runs for real against a closed local port (HF_ENDPOINT=http://127.0.0.1:9).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lowrank_rlvr.cli import app

PROMPTS = [
    "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
    "<|im_start|>user\nWhat is 17+25?<|im_end|>\n<|im_start|>assistant\n",
    "Question: Find x such that 2x+3=7.\nAnswer: Let's think step by step.",
]
REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "lowrank-rlvr")


def _merge(cli, *args: str):
    return cli.invoke(app, ["merge", *map(str, args)])


def _errors(output: str) -> list[str]:
    """The `error:` lines (the runner's output also holds transformers' progress bars from stderr)."""
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def merged_fp32(tiny_adapter: Path, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp("merged") / "tiny-merged"
    result = CliRunner().invoke(app, ["merge", str(tiny_adapter), "--output", str(out), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    return out


def _logits(model, tokenizer, text: str):
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]  # [1, L]
    with torch.no_grad():
        return model(input_ids=ids).logits  # [1, L, V]


def _greedy(model, tokenizer, text: str, new_tokens: int = 24) -> str:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]  # [1, L]
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)  # [1, L + new]
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def _reference(tiny_model: Path, tiny_adapter: Path):
    """Base + adapter, unmerged, exactly as training and `eval --adapter` see it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    return PeftModel.from_pretrained(base, tiny_adapter).eval(), AutoTokenizer.from_pretrained(tiny_model)


def test_merged_logits_equal_base_plus_adapter(merged_fp32: Path, tiny_model: Path, tiny_adapter: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference, tokenizer = _reference(tiny_model, tiny_adapter)
    merged = AutoModelForCausalLM.from_pretrained(merged_fp32).eval()
    plain_base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    for text in PROMPTS:
        expected = _logits(reference, tokenizer, text)
        got = _logits(merged, AutoTokenizer.from_pretrained(merged_fp32), text)
        scale = expected.abs().max()
        assert ((got - expected).abs().max() / scale).item() < 1e-3
        # the adapter matters: without it the logits are far off, so the check above can fail
        assert ((_logits(plain_base, tokenizer, text) - expected).abs().max() / scale).item() > 1e-2


def test_merged_model_reloads_and_generates_the_same_greedy_text(merged_fp32: Path, tiny_model, tiny_adapter):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference, tokenizer = _reference(tiny_model, tiny_adapter)
    merged = AutoModelForCausalLM.from_pretrained(merged_fp32).eval()
    merged_tokenizer = AutoTokenizer.from_pretrained(merged_fp32)
    for text in PROMPTS:
        assert _greedy(merged, merged_tokenizer, text) == _greedy(reference, tokenizer, text)


def test_export_is_a_plain_checkpoint(merged_fp32: Path):
    from safetensors import safe_open

    names = {p.name for p in merged_fp32.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert not any(name.startswith("adapter_") for name in names)
    config = json.loads((merged_fp32 / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    with safe_open(merged_fp32 / "model.safetensors", framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and not any("lora" in key or "base_layer" in key for key in keys)
    assert not any(p.name.startswith(".") for p in merged_fp32.parent.iterdir())  # no staging folder left behind


def test_bf16_export_stores_bf16_weights(cli, tiny_adapter: Path, tmp_path: Path):
    import torch
    from safetensors import safe_open

    result = _merge(cli, tiny_adapter, "--output", tmp_path / "bf16")
    assert result.exit_code == 0, result.output
    with safe_open(tmp_path / "bf16" / "model.safetensors", framework="pt") as handle:
        dtypes = {handle.get_tensor(key).dtype for key in handle.keys()}
    assert dtypes == {torch.bfloat16}
    assert "(bf16)" in result.output


# ---------------------------------------------------------------------------------------------------- errors


def test_missing_adapter_is_one_line_exit_2(cli, tmp_path: Path):
    result = _merge(cli, tmp_path / "no-such-adapter", "--output", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: adapter folder not found: {tmp_path / 'no-such-adapter'}"]


def test_folder_without_adapter_config_is_refused(cli, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = _merge(cli, tmp_path / "empty", "--output", tmp_path / "out")
    assert result.exit_code == 2
    assert "no adapter_config.json" in result.output


def test_non_empty_output_is_refused_unless_overwrite(cli, tiny_adapter: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _merge(cli, tiny_adapter, "--output", out)
    assert result.exit_code == 2
    assert len(_errors(result.output)) == 1 and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "mine"

    result = _merge(cli, tiny_adapter, "--output", out, "--overwrite", "--dtype", "fp32")
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def _save_random_qwen2(folder: Path, tiny_model: Path, **sizes) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model)
    for key, value in sizes.items():
        setattr(config, key, value)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


def test_base_with_other_shapes_is_refused(cli, tiny_model: Path, tiny_adapter: Path, tmp_path: Path):
    narrow = _save_random_qwen2(tmp_path / "narrow", tiny_model, hidden_size=64, intermediate_size=128)
    result = _merge(cli, tiny_adapter, "--output", tmp_path / "out", "--base", narrow)
    assert result.exit_code == 2
    lines = _errors(result.output)
    assert len(lines) == 1 and "does not fit base" in lines[0] and "size mismatch" in lines[0]
    assert not (tmp_path / "out").exists()


def test_base_with_fewer_layers_is_refused(cli, tiny_model: Path, tiny_adapter: Path, tmp_path: Path):
    # same shapes, one layer: peft would load (strict=False) and merge half the adapter without a word
    shallow = _save_random_qwen2(tmp_path / "shallow", tiny_model, num_hidden_layers=1, layer_types=["full_attention"])
    result = _merge(cli, tiny_adapter, "--output", tmp_path / "out", "--base", shallow)
    assert result.exit_code == 2
    lines = _errors(result.output)
    assert len(lines) == 1 and "adapter tensors have no place in it" in lines[0]


def test_quantized_base_is_refused(cli, tiny_model: Path, tiny_adapter: Path, tmp_path: Path):
    quantized = tmp_path / "quantized"
    shutil.copytree(tiny_model, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    result = _merge(cli, tiny_adapter, "--output", tmp_path / "out", "--base", quantized)
    assert result.exit_code == 2
    assert "stored quantized" in result.output


def test_prequantized_base_name_maps_to_its_16bit_twin():
    from lowrank_rlvr.adapters import Adapter
    from lowrank_rlvr.merge import choose_base

    assert choose_base(Adapter(Path("adapter"), {"base_model_name_or_path": "unsloth/qwen2.5-math-1.5b-bnb-4bit"}), None, None) == (
        "unsloth/qwen2.5-math-1.5b"
    )
    assert choose_base(Adapter(Path("adapter"), {"base_model_name_or_path": "Qwen/Qwen2.5-Math-1.5B"}), None, None) == "Qwen/Qwen2.5-Math-1.5B"
    assert choose_base(Adapter(Path("adapter"), {"base_model_name_or_path": "a/b-bnb-4bit"}), None, "my/base") == "my/base"


def test_unknown_dtype_is_refused(cli, tiny_adapter: Path, tmp_path: Path):
    result = _merge(cli, tiny_adapter, "--output", tmp_path / "out", "--dtype", "int4")
    assert result.exit_code == 2
    assert "--dtype 'int4'" in result.output


@pytest.mark.skipif(bool(__import__("importlib").util.find_spec("unsloth")), reason="unsloth is installed")
def test_gguf_without_unsloth_fails_before_merging(cli, tiny_adapter: Path, tmp_path: Path):
    result = _merge(cli, tiny_adapter, "--output", tmp_path / "out", "--gguf", "q4_k_m")
    assert result.exit_code == 2
    assert "needs Unsloth" in result.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- model card


@pytest.fixture()
def run_dir(tiny_adapter: Path, tmp_path: Path) -> Path:
    """A run folder as `lowrank-rlvr train` and `eval` leave it (config, adapter, checkpoint, metrics, eval)."""
    from lowrank_rlvr.config import load_config
    from lowrank_rlvr.runs import RunFolder

    run = tmp_path / "run"
    cfg = load_config("tiny-cpu", output_dir=str(run))
    RunFolder(run).write_config(cfg, cfg.launch_summary(1))
    shutil.copytree(tiny_adapter, run / "adapter")
    shutil.copytree(tiny_adapter, run / "checkpoint-100")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_accuracy": 0.5}) + "\n" for s in (1, 2, 300)))
    report = {
        "model": "builtin:tiny-qwen2",
        "adapter": str(run / "adapter"),
        "benchmarks": {
            "math500": {"accuracy": 0.736, "num_problems": 500, "num_samples": 1},
            "aime24": {"accuracy": 0.1667, "num_problems": 30, "num_samples": 8},
        },
        "average": 0.45135,
        "settings": {"backend": "hf", "template": "qwen-math-cot", "max_tokens": 3072, "report": "/x/y.json"},
    }
    (run / "eval_report.json").write_text(json.dumps(report))
    sweep = [
        {"step": 0, "benchmarks": {"math500": 0.36, "aime24": 0.0667}, "average": 0.21335},
        {"step": 100, "benchmarks": {"math500": 0.70, "aime24": 0.1}, "average": 0.4},
    ]
    (run / "eval_by_step.jsonl").write_text("".join(json.dumps(line) + "\n" for line in sweep))
    return run


def test_model_card_has_metadata_recipe_and_eval_table(cli, run_dir: Path, tmp_path: Path):
    from huggingface_hub import ModelCard

    out = tmp_path / "export"
    result = _merge(cli, run_dir / "adapter", "--output", out, "--dtype", "fp32")
    assert result.exit_code == 0, result.output
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers"
    assert "lowrank-rlvr" in card.data.tags and "grpo" in card.data.tags
    text = card.text
    assert "after 300 steps of one-shot RLVR" in text  # last line of metrics.jsonl
    assert "What is 17+25?" in text and "Answer: `42`" in text
    assert "| LoRA | r=16, alpha=32" in text
    assert "| math500 | 36.0% | 73.6% | 500 | 1 |" in text  # base column from the sweep's step 0
    assert "| aime24 | 6.7% | 16.7% | 30 | 8 |" in text
    assert "| **average** | 21.3% | 45.1% | | |" in text
    assert "/x/y.json" not in text  # local paths of the eval report stay out of a public card


def test_model_card_of_a_checkpoint_uses_its_own_eval_report(cli, run_dir: Path, tmp_path: Path):
    out = tmp_path / "export"
    report = json.loads((run_dir / "eval_report.json").read_text())
    report["benchmarks"]["math500"]["accuracy"] = 0.7
    (run_dir / "eval_report-checkpoint-100.json").write_text(json.dumps(report))
    result = _merge(cli, run_dir / "checkpoint-100", "--output", out, "--dtype", "fp32")
    assert result.exit_code == 0, result.output
    text = (out / "README.md").read_text()
    assert "after 100 steps of one-shot RLVR" in text
    assert "| math500 | 36.0% | 70.0% | 500 | 1 |" in text


def test_model_card_without_eval_report_has_no_table(cli, run_dir: Path, tmp_path: Path):
    (run_dir / "eval_report.json").unlink()
    out = tmp_path / "export"
    result = _merge(cli, run_dir / "adapter", "--output", out, "--dtype", "fp32")
    assert result.exit_code == 0, result.output
    text = (out / "README.md").read_text()
    assert "## Training recipe" in text and "## Evaluation" not in text


def test_model_card_names_a_hub_base_and_inherits_its_license():
    from huggingface_hub import ModelCard

    card = ModelCard(
        __import__("lowrank_rlvr.card", fromlist=["model_card"]).model_card(
            base_name="Qwen/Qwen2.5-Math-1.5B", dtype="bf16", model_id="me/qwen-pi1", license="apache-2.0"
        )
    )
    assert card.data.base_model == "Qwen/Qwen2.5-Math-1.5B"
    assert card.data.license == "apache-2.0"
    assert "LLM('me/qwen-pi1')" in card.text


# ---------------------------------------------------------------------------------------------------- Hub upload


def _run_cli(args: list[str], env_changes: dict[str, str | None]) -> subprocess.CompletedProcess:
    """The installed console script in a fresh process: huggingface_hub reads HF_ENDPOINT/HF_HUB_OFFLINE at import."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True)


def test_failed_upload_says_why_and_keeps_the_export(tiny_adapter: Path, tmp_path: Path):
    out = tmp_path / "export"
    token = "hf_notARealTokenForTheClosedPort"
    proc = _run_cli(
        ["merge", str(tiny_adapter), "--output", str(out), "--dtype", "fp32", "--push-to-hub", "me/tiny-pi1", "--private"],
        {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": token, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")},
    )
    assert proc.returncode == 2, proc.stderr
    errors = _errors(proc.stderr)
    assert len(errors) == 1
    assert "upload to me/tiny-pi1 failed" in errors[0] and "ConnectError" in errors[0]
    assert f"intact in {out}" in errors[0]
    assert token not in proc.stdout + proc.stderr
    assert not any(token in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())
    # the local export is complete and loads
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out) is not None
    assert "me/tiny-pi1" in (out / "README.md").read_text()


def test_upload_without_token_fails_before_merging(tiny_adapter: Path, tmp_path: Path):
    out = tmp_path / "export"
    proc = _run_cli(
        ["merge", str(tiny_adapter), "--output", str(out), "--push-to-hub", "me/tiny-pi1"],
        {"HF_TOKEN": None, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --push-to-hub: no Hugging Face token")
    assert not out.exists()


def test_upload_in_offline_mode_or_to_a_bad_repo_id_is_refused(cli, tiny_adapter: Path, tmp_path: Path):
    result = _merge(cli, tiny_adapter, "--output", tmp_path / "out", "--push-to-hub", "not a repo")
    assert result.exit_code == 2 and "expected a Hub repo id" in result.output
    result = _merge(cli, tiny_adapter, "--output", tmp_path / "out", "--push-to-hub", "me/tiny")  # conftest: offline
    assert result.exit_code == 2 and "HF_HUB_OFFLINE=1" in result.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- vLLM


VLLM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from vllm import LLM, SamplingParams

    if __name__ == "__main__":  # vLLM starts worker processes: the guard keeps them from rerunning this
        model_dir, prompts_file, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
        prompts = json.load(open(prompts_file))
        llm = LLM(model=model_dir, dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outputs]))
    """
)


def _vllm_python() -> str:
    """The interpreter of the vLLM venv (`make setup-vllm`), or LOWRANK_RLVR_VLLM_PYTHON; skip when there is none,
    fail when `make test-vllm` requires it (LOWRANK_RLVR_REQUIRE_VLLM=1)."""
    python = Path(os.environ.get("LOWRANK_RLVR_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
    if python.exists():
        return str(python)
    if os.environ.get("LOWRANK_RLVR_REQUIRE_VLLM") == "1":
        pytest.fail(f"no vLLM interpreter at {python}: run make setup-vllm")
    pytest.skip(f"no vLLM interpreter at {python} (make setup-vllm)")


@pytest.mark.vllm
def test_vllm_loads_the_merged_model_and_generates_the_same_greedy_tokens(merged_fp32: Path, tiny_model, tiny_adapter, tmp_path):
    python = _vllm_python()
    new_tokens = 16
    reference, tokenizer = _reference(tiny_model, tiny_adapter)
    expected = []
    for text in PROMPTS:  # base + adapter, unmerged; EOS masked for all new tokens (vLLM: min_tokens)
        ids = tokenizer(text, return_tensors="pt")["input_ids"]  # [1, L]
        out = reference.generate(input_ids=ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        expected.append(out[0, ids.shape[1] :].tolist())  # [new_tokens]
    with reference.disable_adapter():  # the adapter changes the greedy tokens, so a merge that lost it would fail
        without = [
            reference.generate(input_ids=tokenizer(t, return_tensors="pt")["input_ids"], max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False)[0, -new_tokens:].tolist()
            for t in PROMPTS
        ]
    assert without != expected

    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    (tmp_path / "generate.py").write_text(VLLM_SCRIPT)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(
        [python, str(tmp_path / "generate.py"), str(merged_fp32), str(tmp_path / "prompts.json"), str(new_tokens)],
        env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result_line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    assert json.loads(result_line.removeprefix("RESULT ")) == expected


# ---------------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_merging_a_real_tiny_training_run(tiny_model: Path, tmp_path: Path):
    """`train` (4 GRPO steps on CPU) then `merge`: the trained adapter, merged, reproduces base + adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    env = {"HF_HUB_OFFLINE": "1"}
    proc = _run_cli(["train", "tiny-cpu", "-o", str(run), "--set", "grpo.max_steps=4", "--set", "grpo.save_steps=2"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run_cli(["merge", str(run / "adapter"), "--output", str(tmp_path / "merged"), "--dtype", "fp32"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    reference, tokenizer = _reference(tiny_model, run / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    for text in PROMPTS:
        expected = _logits(reference, tokenizer, text)
        got = _logits(merged, AutoTokenizer.from_pretrained(tmp_path / "merged"), text)
        assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-3
        assert _greedy(merged, tokenizer, text) == _greedy(reference, tokenizer, text)
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "`builtin:tiny-qwen2` after 4 steps of one-shot RLVR" in card and "What is 17+25?" in card
