"""The policy: base model + LoRA adapter, loaded by the backend `runtime.choose_backend` picked.

- `hf`: transformers `AutoModelForCausalLM` (optionally 4-bit NF4 through bitsandbytes) + a peft LoRA adapter.
  Runs on CPU (tests, the tiny demo) and on any number of GPUs under `accelerate launch`.
- `unsloth`: Unsloth's `FastLanguageModel` (4-bit, fused kernels, gradient checkpointing "unsloth") with a colocated
  vLLM engine (`fast_inference=True`) that samples from the live LoRA weights, or without one
  (`model.fast_inference: false`: TRL samples with transformers `generate`). CUDA only; imported lazily.

Either way the frozen base is never changed: only the adapter trains, and with `beta > 0` the KL reference is the
same base with the adapter switched off (no second copy of the weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lowrank_rlvr.config import RunConfig
from lowrank_rlvr.errors import UserError

if TYPE_CHECKING:
    from lowrank_rlvr.runtime import Launch, Runtime


def load_policy(cfg: RunConfig, runtime: "Runtime") -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config) for the chosen backend.

    hf: the bare base and a LoraConfig; TRL's GRPOTrainer wraps it, and computes the KL reference with the adapter
    disabled (a model that is already a PeftModel would make TRL keep a second "ref" adapter copy instead).
    unsloth: Unsloth's own PeftModel (it must apply LoRA itself), no config.
    """
    if runtime.backend == "unsloth":
        return _load_unsloth(cfg, runtime)
    return _load_hf(cfg, runtime)


def hf_device_map(launch: "Launch", on_cuda: bool, load_in_4bit: bool) -> dict[str, int] | None:
    """Where the hf backend loads the base: a 4-bit base straight onto this rank's GPU (`cuda:<local_rank>`).

    transformers 5.17's bnb 4-bit quantizer puts a model without a device_map on `torch.cuda.current_device()`, and
    accelerate 1.15 refuses to train a 4-bit model that sits on another rank's GPU. A 16-bit base (or CPU) is loaded
    without one and moved by the Trainer (a device_map would also conflict with DeepSpeed ZeRO-3).
    """
    if not (on_cuda and load_in_4bit):
        return None
    return {"": launch.local_rank}


def _load_hf(cfg: RunConfig, runtime: "Runtime") -> tuple[Any, Any, Any]:
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = runtime.dtype
    quantization = None
    if cfg.model.load_in_4bit:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
    tokenizer = runtime.tokenizer
    try:
        model = AutoModelForCausalLM.from_pretrained(
            runtime.model_path,
            dtype=dtype,
            quantization_config=quantization,
            device_map=hf_device_map(runtime.launch, runtime.on_cuda, cfg.model.load_in_4bit),
        )
    except OSError as exc:
        raise UserError(f"model {cfg.model.name_or_path!r} could not be loaded: {exc}".splitlines()[0]) from None
    if cfg.model.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.model.gradient_checkpointing)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.modules(),
        task_type="CAUSAL_LM",
    )
    return model, tokenizer, lora


def _load_unsloth(cfg: RunConfig, runtime: "Runtime") -> tuple[Any, Any, None]:
    """Unsloth 2026.10.9: 4-bit base, fused kernels, vLLM colocated (`fast_inference`, loader.py:1262, default
    False there) serving the live LoRA, unless `model.fast_inference` is off. `runtime.import_backend` imported
    unsloth (and set UNSLOTH_VLLM_STANDBY) before transformers and CUDA."""
    from unsloth import FastLanguageModel

    # vLLM's context is sized once, here: the longest rendered prompt of the data plus the completion budget.
    max_seq_length = runtime.longest_prompt_tokens + cfg.grpo.max_completion_length
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=runtime.model_path,
        max_seq_length=max_seq_length,
        load_in_4bit=cfg.model.load_in_4bit,
        dtype=runtime.dtype,
        fast_inference=cfg.model.fast_inference,
        max_lora_rank=cfg.lora.r,
        gpu_memory_utilization=cfg.model.gpu_memory_utilization,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.modules(),
        use_gradient_checkpointing="unsloth" if cfg.model.gradient_checkpointing else False,
        random_state=cfg.grpo.seed,
    )
    return model, tokenizer, None
