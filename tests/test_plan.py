"""`lowrank-rlvr plan`: the memory model's shape and monotonicity, its parameter counts against real models, the
verdicts on the shipped configs, and the doctor report."""

from __future__ import annotations

import dataclasses
import re

import pytest

from lowrank_rlvr.cli import app
from lowrank_rlvr.config import CONFIG_DIR, load_config
from lowrank_rlvr.doctor import known_bad_combinations
from lowrank_rlvr.plan import (
    GiB,
    KNOWN_MODELS,
    ModelShape,
    estimate,
    lora_params,
    model_shape,
    plan_inputs,
    weights_bytes,
)

GPU_CONFIGS_24GB = [
    "qwen2.5-math-1.5b-pi1",
    "qwen2.5-math-1.5b-pi13",
    "qwen2.5-math-1.5b-pi1-pi13",
    "qwen2.5-math-1.5b-pi1-format",
    "qwen2.5-math-7b-pi1",
    "llama3.2-3b-instruct-pi1",
    "r1-distill-qwen-1.5b-pi1",
]
T4_GIB = 14.5  # what a 16 GB T4 reports to torch is ~14.6 GiB


def inputs_for(config: str, gpu_gib: float = 24.0, overrides: list[str] = ()):
    cfg = load_config(config, list(overrides))
    return model_shape(cfg.model.name_or_path), plan_inputs(cfg, gpu_gib)


def total_gib(shape: ModelShape, inputs, **changes) -> float:
    return estimate(shape, dataclasses.replace(inputs, **changes)).total_bytes / GiB


# ---- The verdicts, through the CLI. ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", GPU_CONFIGS_24GB)
def test_every_shipped_24gb_config_fits_24_gib(cli, config):
    result = cli.invoke(app, ["plan", config, "--gpu-memory", "24"])
    assert result.exit_code == 0, result.output
    assert "fits:" in result.output
    assert re.search(r"total\s+│\s+\d+\.\d\d", result.output)


def test_t4_config_is_float16_and_fits_a_t4(cli):
    cfg = load_config(CONFIG_DIR / "qwen2.5-math-1.5b-t4.yaml")
    assert cfg.model.dtype == "float16" and cfg.model.load_in_4bit
    result = cli.invoke(app, ["plan", "configs/qwen2.5-math-1.5b-t4.yaml", "--gpu-memory", str(T4_GIB)])
    assert result.exit_code == 0, result.output


def test_7b_at_8_gib_is_refused_with_exit_3(cli):
    result = cli.invoke(app, ["plan", "qwen2.5-math-7b-pi1", "--gpu-memory", "8"])
    assert result.exit_code == 3, result.output
    assert "does not fit" in result.output
    assert "gpu_memory_utilization >=" in result.output  # names the vLLM share the weights and one group need


def test_refusal_lists_settings_that_each_make_it_fit(cli):
    result = cli.invoke(app, ["plan", "qwen2.5-math-7b-pi1", "--gpu-memory", "16"])
    assert result.exit_code == 3, result.output
    advice = re.findall(r"--set (\S+=\S+)", result.output)
    assert any(item.startswith("grpo.per_device_train_batch_size=") for item in advice), result.output
    assert "model.vllm_standby=true" in advice
    for item in advice:
        extra = ["--set", item]
        if item.startswith("grpo.per_device_train_batch_size="):
            accumulation = re.search(r"grpo.gradient_accumulation_steps=(\d+)", result.output).group(1)
            extra += ["--set", f"grpo.gradient_accumulation_steps={accumulation}"]
        retry = cli.invoke(app, ["plan", "qwen2.5-math-7b-pi1", "--gpu-memory", "16", *extra])
        assert retry.exit_code == 0, f"{item}: {retry.output}"


def test_largest_suggested_completion_length_is_the_largest_that_fits(cli):
    result = cli.invoke(app, ["plan", "qwen2.5-math-7b-pi1", "--gpu-memory", "16"])
    length = int(re.search(r"grpo.max_completion_length=(\d+)", result.output).group(1))
    shape, inputs = inputs_for("qwen2.5-math-7b-pi1", 16)
    assert estimate(shape, dataclasses.replace(inputs, max_completion_length=length)).fits
    assert not estimate(shape, dataclasses.replace(inputs, max_completion_length=length + 128)).fits


def test_unknown_model_offline_exits_2_with_one_line(cli, tmp_path):
    config = tmp_path / "c.yaml"
    shipped = (CONFIG_DIR / "qwen2.5-math-1.5b-pi1.yaml").read_text()
    config.write_text(shipped.replace("Qwen/Qwen2.5-Math-1.5B", "nobody/no-such-model"))
    result = cli.invoke(app, ["plan", str(config), "--gpu-memory", "24"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "nobody/no-such-model" in result.output
    assert "built-in table" in result.output


def test_non_positive_gpu_memory_exits_2(cli):
    result = cli.invoke(app, ["plan", "qwen2.5-math-1.5b-pi1", "--gpu-memory", "0"])
    assert result.exit_code == 2 and "--gpu-memory" in result.output


# ---- The memory model. -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [*GPU_CONFIGS_24GB, "qwen2.5-math-1.5b-t4", "tiny-cpu"])
@pytest.mark.parametrize("standby", [False, True])
def test_breakdown_sums_to_the_total_of_the_peak_phase(config, standby):
    shape, inputs = inputs_for(config, overrides=[f"model.vllm_standby={str(standby).lower()}"])
    plan = estimate(shape, inputs)
    phase_totals = {phase: sum(line.bytes for line in lines) for phase, lines in plan.phases.items()}
    assert plan.total_bytes == pytest.approx(sum(line.bytes for line in plan.lines))
    assert plan.total_bytes == pytest.approx(max(phase_totals.values()))
    assert all(line.bytes >= 0 for lines in plan.phases.values() for line in lines)
    assert plan.metrics()["plan/total_gib"] == pytest.approx(plan.total_bytes / GiB)


@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_memory_grows_with_micro_batch_and_completion_length(backend):
    shape, inputs = inputs_for("qwen2.5-math-1.5b-pi1", overrides=[f"model.backend={backend}"])
    batches = [total_gib(shape, inputs, per_device_train_batch_size=b) for b in (1, 2, 4, 8, 16)]
    lengths = [total_gib(shape, inputs, max_completion_length=n) for n in (256, 1024, 3072, 8192)]
    assert batches == sorted(batches) and len(set(batches)) == len(batches)
    assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths)


@pytest.mark.parametrize("utilization", [0.5, 0.2])
def test_memory_never_shrinks_with_more_rollouts_and_grows_once_they_fill_the_kv_cache(utilization):
    shape, inputs = inputs_for("qwen2.5-math-7b-pi1", overrides=[f"model.gpu_memory_utilization={utilization}"])
    totals = [total_gib(shape, inputs, num_generations=g) for g in (2, 4, 8, 16, 64, 128)]
    assert totals == sorted(totals)
    assert totals[-1] > totals[0]  # 128 rollouts of 3k tokens outgrow any share of a 24 GiB card


@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_4bit_weights_are_smaller_than_16bit(backend):
    shape, inputs = inputs_for("qwen2.5-math-7b-pi1", overrides=[f"model.backend={backend}"])
    four, sixteen = (estimate(shape, dataclasses.replace(inputs, load_in_4bit=q)) for q in (True, False))
    weight = lambda plan: next(line.bytes for line in plan.lines if line.name == "base_weights")  # noqa: E731
    assert weight(four) < 0.45 * weight(sixteen)
    assert four.total_bytes < sixteen.total_bytes


def test_standby_trades_a_larger_sampler_for_a_second_phase():
    shape, inputs = inputs_for("qwen2.5-math-7b-pi1", 16)
    plain, standby = estimate(shape, inputs), estimate(shape, dataclasses.replace(inputs, vllm_standby=True))
    assert set(standby.phases) == {"sample (standby)", "train (standby)"}
    assert standby.kv_sequences > plain.kv_sequences
    assert standby.fits and not plain.fits


# ---- Parameter counts against real models and adapters. -----------------------------------------------------------


def _torch_model(shape: ModelShape):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads, intermediate_size=shape.intermediate_size,
        vocab_size=shape.vocab_size, tie_word_embeddings=shape.tied_embeddings,
    )
    with torch.device("meta"):  # shapes only, no memory
        if shape.qkv_bias:
            return Qwen2ForCausalLM(Qwen2Config(**common))
        return LlamaForCausalLM(LlamaConfig(head_dim=shape.head_dim, **common))


@pytest.mark.parametrize("key", sorted(KNOWN_MODELS))
def test_known_shapes_give_the_parameter_count_transformers_builds(key):
    shape = KNOWN_MODELS[key]
    model = _torch_model(shape)
    assert shape.base_params == sum(p.numel() for p in model.parameters())


def test_known_shapes_match_the_published_sizes():
    published = {  # model cards: parameters in billions
        "qwen2.5-math-1.5b": 1.54, "qwen2.5-math-7b": 7.61, "llama-3.2-3b-instruct": 3.21,
        "deepseek-r1-distill-qwen-1.5b": 1.78,
    }
    for key, billions in published.items():
        assert KNOWN_MODELS[key].base_params / 1e9 == pytest.approx(billions, abs=0.01), key


def test_shape_from_a_local_folder_matches_its_weights(tiny_model):
    from safetensors import safe_open

    shape = model_shape(str(tiny_model))
    assert (shape.hidden_size, shape.num_layers, shape.tied_embeddings) == (128, 2, False)
    with safe_open(tiny_model / "model.safetensors", "pt") as f:
        stored = {name: f.get_slice(name).get_shape() for name in f.keys()}
    stored_params = sum(_numel(dims) for dims in stored.values())  # untied: lm_head.weight is stored too
    assert shape.base_params == stored_params
    assert weights_bytes(shape, load_in_4bit=False, compute_bytes=4) == 4 * stored_params


def test_lora_parameter_count_matches_a_real_peft_adapter(tiny_model, tiny_adapter):
    from safetensors import safe_open

    shape = model_shape(str(tiny_model))
    _, inputs = inputs_for("tiny-cpu")  # all-linear, like the adapter fixture (r=8)
    with safe_open(tiny_adapter / "adapter_model.safetensors", "pt") as f:
        adapter_params = sum(_numel(f.get_slice(name).get_shape()) for name in f.keys())
    assert lora_params(shape, 8, inputs.lora_modules) == adapter_params


def _numel(dims) -> int:
    count = 1
    for size in dims:
        count *= size
    return count


# ---- The doctor report. ---------------------------------------------------------------------------------------------


def test_doctor_reports_versions_and_the_backend_auto_picks(cli):
    import torch
    import trl

    result = cli.invoke(app, ["plan", "--env"])
    assert result.exit_code == 0, result.output
    assert f"trl: {trl.__version__}" in result.output
    assert f"torch: {torch.__version__}" in result.output
    if not torch.cuda.is_available():
        assert "backend 'auto' picks: hf" in result.output
        assert "GPU: none visible to torch" in result.output


def test_doctor_warns_about_known_bad_combinations():
    versions = {
        "torch": "2.12.0", "transformers": "5.18.0", "trl": "1.16.0", "peft": "0.21.2", "accelerate": "1.15.0",
        "bitsandbytes": "0.48.0", "unsloth": "2026.10.9", "unsloth_zoo": "2026.10.9", "vllm": "0.30.0",
        "vllm-bnb-plugin": None,
    }
    t4 = {"cuda_build": "12.8", "name": "Tesla T4", "gib": 14.6, "capability": (7, 5), "bf16": False}
    text = "\n".join(known_bad_combinations(versions, t4))
    expected = ("trl 1.16.0", "transformers 5.18.0", "vllm-bnb-plugin", "torch 2.13.0", "bitsandbytes 0.48.0")
    for warning in (*expected, "float16"):
        assert warning in text
    pinned = dict(versions, torch="2.13.0", transformers="5.17.0", trl="1.14.2", bitsandbytes="0.50.2")
    pinned["vllm-bnb-plugin"] = "0.0.3"
    ampere = dict(t4, name="NVIDIA A10", capability=(8, 6), bf16=True)
    assert known_bad_combinations(pinned, ampere) == []
