"""The policy: base model + LoRA adapter. The only module that chooses between Unsloth and transformers + peft.

- `hf`: transformers `AutoModelForCausalLM` (optionally 4-bit NF4 through bitsandbytes) + a peft LoRA adapter.
  Runs on CPU (tests, the tiny demo) and on any number of GPUs under `accelerate launch`.
- `unsloth`: Unsloth's `FastLanguageModel` (4-bit, fused kernels, gradient checkpointing "unsloth") with a colocated
  vLLM engine (`fast_inference=True`) that samples from the live LoRA weights. CUDA only; imported lazily.

Either way the frozen base is never changed: only the adapter trains, and with `beta > 0` the KL reference is the
same base with the adapter switched off (no second copy of the weights).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from lowrank_rlvr.config import SMOLLM2_MODEL, TINY_MODEL, RunConfig
from lowrank_rlvr.errors import UserError


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_backend(requested: str) -> str:
    """'auto' -> 'unsloth' with CUDA and the package, else 'hf'. An impossible explicit request is a UserError."""
    has_cuda = cuda_available()
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "auto":
        return "unsloth" if has_cuda and has_unsloth else "hf"
    if requested == "unsloth":
        if not has_cuda:
            raise UserError("backend 'unsloth' needs a CUDA GPU and none was found (use model.backend: hf)")
        if not has_unsloth:
            raise UserError("backend 'unsloth' needs the unsloth package: pip install -e '.[gpu]'")
    return requested


def resolve_model_path(name_or_path: str) -> str:
    """Map `builtin:tiny-qwen2` / `builtin:smollm2-135m` to their local folders (built on first use); pass Hub ids
    and folders through."""
    if name_or_path == TINY_MODEL:
        from lowrank_rlvr.tiny import tiny_model_dir

        return str(tiny_model_dir())
    if name_or_path == SMOLLM2_MODEL:
        from lowrank_rlvr.smollm2 import smollm2_model_dir

        return str(smollm2_model_dir())
    return name_or_path


def compute_dtype(setting: str) -> Any:
    """The torch dtype for `model.dtype` on this machine ('auto': bf16 if the GPU has it, fp16 on older GPUs, fp32 on CPU)."""
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if not cuda_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_policy(cfg: RunConfig, backend: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config) for the chosen backend.

    hf: the bare base and a LoraConfig; TRL's GRPOTrainer wraps it, and computes the KL reference with the adapter
    disabled (a model that is already a PeftModel would make TRL keep a second "ref" adapter copy instead).
    unsloth: Unsloth's own PeftModel (it must apply LoRA itself), no config.
    """
    if backend == "unsloth":
        return _load_unsloth(cfg)
    return _load_hf(cfg)


def _lora_target_modules(cfg: RunConfig) -> list[str] | str:
    if cfg.lora.target_modules != "all-linear":
        return cfg.lora.target_modules
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _load_hf(cfg: RunConfig) -> tuple[Any, Any, Any]:
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = resolve_model_path(cfg.model.name_or_path)
    dtype = compute_dtype(cfg.model.dtype)
    quantization = None
    if cfg.model.load_in_4bit:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quantization)
    except OSError as exc:
        raise UserError(f"model {cfg.model.name_or_path!r} could not be loaded: {exc}".splitlines()[0]) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.model.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.model.gradient_checkpointing)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=_lora_target_modules(cfg),
        task_type="CAUSAL_LM",
    )
    return model, tokenizer, lora


def _load_unsloth(cfg: RunConfig) -> tuple[Any, Any, None]:
    """Unsloth 2026.10.9: 4-bit base, fused kernels, vLLM colocated (`fast_inference`) serving the live LoRA."""
    if cfg.model.vllm_standby:
        # Read by unsloth_zoo when vLLM starts: weights and KV cache are offloaded in turns with training.
        os.environ["UNSLOTH_VLLM_STANDBY"] = "1"
    from unsloth import FastLanguageModel  # noqa: F401  (import before trl/transformers models: it patches them)

    path = resolve_model_path(cfg.model.name_or_path)
    # vLLM's context is sized once, here: the longest rendered prompt of the data plus the completion budget.
    max_seq_length = _longest_prompt_tokens(cfg, path) + cfg.grpo.max_completion_length
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=max_seq_length,
        load_in_4bit=cfg.model.load_in_4bit,
        dtype=compute_dtype(cfg.model.dtype),
        fast_inference=True,
        max_lora_rank=cfg.lora.r,
        gpu_memory_utilization=cfg.model.gpu_memory_utilization,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=_lora_target_modules(cfg),
        use_gradient_checkpointing="unsloth" if cfg.model.gradient_checkpointing else False,
        random_state=cfg.grpo.seed,
    )
    return model, tokenizer, None


def _longest_prompt_tokens(cfg: RunConfig, path: str) -> int:
    from transformers import AutoTokenizer

    from lowrank_rlvr.data import load_examples, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(path)
    rendered = [render_prompt(ex.prompt, cfg.data.template, tokenizer) for ex in load_examples(cfg.data)]
    return max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rendered)
