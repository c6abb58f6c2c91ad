"""What each training backend changes: the choice, the import order, the policy's loading and TRL's settings.

Both backends train the same recipe through TRL's `GRPOTrainer`; the frozen base is never changed, only the LoRA
adapter trains, and with `beta > 0` the KL reference is the same base with the adapter switched off.

What unsloth changes, compared with hf (transformers + peft):

| | `hf` | `unsloth` (CUDA only) |
|---|---|---|
| picked by `auto` | without CUDA or without the package | with CUDA and the `[gpu]` extra |
| imported | lazily | first: before transformers and CUDA (`import_backend`) |
| base model | `AutoModelForCausalLM` | `FastLanguageModel` (fused kernels) |
| 4-bit base | bitsandbytes NF4 on this rank's GPU (`hf_device_map`), `prepare_model_for_kbit_training` | Unsloth's |
| LoRA | a peft `LoraConfig`, applied by TRL | applied by Unsloth (`get_peft_model`), no peft config |
| TRL's `use_vllm` | `grpo.use_vllm` | `model.fast_inference`: its vLLM sized to longest prompt + completion |
| gradient checkpointing | the Trainer's | Unsloth's own ("unsloth"); the Trainer's is off |
| entropy logged | yes | no (`ENTROPY_NOT_MEASURED`); `grpo.entropy_coef` still applies |
| GRPOConfig defaults | TRL's | DAPO's, pinned back to the recipe by `train.grpo_arguments` |

Plain functions, no class per backend: each difference is one `if backend == "unsloth"` in the function it belongs to.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from lowrank_rlvr.config import UNSLOTH_FLOAT32, RunConfig
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.runtime import Launch

# TRL 1.14.2 logs `entropy` from its own loss only (grpo_trainer.py:3341, in `_compute_loss`); Unsloth 2026.10.9
# replaces that loss (unsloth/models/rl_replacements.py:4760-5184: it logs completion_length, kl, sampling/*,
# clip_ratio/*) and applies the entropy bonus without logging the entropy (unsloth_zoo rl_replacements.py:3849-3860).
ENTROPY_NOT_MEASURED = (
    "note: entropy is not measured on this backend: the trainer logs none (Unsloth's GRPO loss does not report it; "
    "grpo.entropy_coef still applies), so metrics.jsonl records entropy null and the entropy-collapse check is off"
)


def choose_backend(requested: str, on_cuda: bool) -> str:
    """'auto' -> 'unsloth' with CUDA and the package, else 'hf'. An impossible explicit request is a UserError."""
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "auto":
        return "unsloth" if on_cuda and has_unsloth else "hf"
    if requested == "unsloth":
        if not on_cuda:
            raise UserError("backend 'unsloth' needs a CUDA GPU and none was found (use model.backend: hf)")
        if not has_unsloth:
            raise UserError("backend 'unsloth' needs the unsloth package: pip install -e '.[gpu]'")
    return requested


def import_backend(backend: str, vllm_standby: bool) -> None:
    """Import Unsloth first when it is the backend: it patches transformers, trl and peft as it is imported, and
    unsloth_zoo 2026.10.9 sets the CUDA allocator from UNSLOTH_VLLM_STANDBY at import (unsloth_zoo/__init__.py:321),
    so both must happen before transformers is imported and before CUDA is initialised."""
    if backend != "unsloth":
        return
    # Set both ways: an inherited "1" would otherwise stay on (unsloth_zoo vllm_utils.py:4426 ORs it with the argument).
    os.environ["UNSLOTH_VLLM_STANDBY"] = "1" if vllm_standby else "0"
    import unsloth  # noqa: F401


def check_dtype(cfg: RunConfig, backend: str) -> None:
    """float32 cannot run in Unsloth's vLLM engine: refused where 'auto' became unsloth (an explicit unsloth backend
    is refused when the config loads, config.py)."""
    if cfg.model.float32_in_unsloth_vllm(backend):
        raise UserError(f"model.dtype: {UNSLOTH_FLOAT32}")


def trainer_logs_entropy(backend: str) -> bool:
    """Whether the trainer logs the entropy (see ENTROPY_NOT_MEASURED): known before the first step."""
    return backend != "unsloth"


def samples_with_vllm(backend: str, fast_inference: bool, use_vllm: bool) -> bool:
    """TRL's `use_vllm`: unsloth samples from its colocated engine unless model.fast_inference is off; hf uses vLLM
    only when asked (grpo.use_vllm)."""
    return fast_inference if backend == "unsloth" else use_vllm


def trl_settings(cfg: RunConfig, backend: str) -> dict[str, Any]:
    """The GRPOConfig settings that depend on the backend."""
    return {
        "use_vllm": samples_with_vllm(backend, cfg.model.fast_inference, cfg.grpo.use_vllm),
        # Unsloth checkpoints the gradients itself (get_peft_model below); the Trainer's would do it a second time
        "gradient_checkpointing": cfg.model.gradient_checkpointing and backend == "hf",
    }


def load_policy(
    cfg: RunConfig, backend: str, model_path: str, tokenizer: Any, dtype: Any, launch: Launch, on_cuda: bool,
    longest_prompt_tokens: int,
) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config) for the chosen backend.

    hf: the bare base and a LoraConfig; TRL's GRPOTrainer wraps it, and computes the KL reference with the adapter
    disabled (a model that is already a PeftModel would make TRL keep a second "ref" adapter copy instead).
    unsloth: Unsloth's own PeftModel (it must apply LoRA itself), no config; it loads its own tokenizer.
    """
    if backend == "unsloth":
        # vLLM's context is sized once, here: the longest rendered prompt of the data plus the completion budget.
        return _load_unsloth(cfg, model_path, dtype, longest_prompt_tokens + cfg.grpo.max_completion_length)
    return _load_hf(cfg, model_path, tokenizer, dtype, hf_device_map(launch, on_cuda, cfg.model.load_in_4bit))


def hf_device_map(launch: Launch, on_cuda: bool, load_in_4bit: bool) -> dict[str, int] | None:
    """Where the hf backend loads the base: a 4-bit base straight onto this rank's GPU (`cuda:<local_rank>`).

    transformers 5.17's bnb 4-bit quantizer puts a model without a device_map on `torch.cuda.current_device()`, and
    accelerate 1.15 refuses to train a 4-bit model that sits on another rank's GPU. A 16-bit base (or CPU) is loaded
    without one and moved by the Trainer (a device_map would also conflict with DeepSpeed ZeRO-3).
    """
    if not (on_cuda and load_in_4bit):
        return None
    return {"": launch.local_rank}


def _load_hf(
    cfg: RunConfig, model_path: str, tokenizer: Any, dtype: Any, device_map: dict[str, int] | None
) -> tuple[Any, Any, Any]:
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = None
    if cfg.model.load_in_4bit:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype, quantization_config=quantization, device_map=device_map
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


def _load_unsloth(cfg: RunConfig, model_path: str, dtype: Any, max_seq_length: int) -> tuple[Any, Any, None]:
    """Unsloth 2026.10.9: 4-bit base, fused kernels, vLLM colocated (`fast_inference`, loader.py:1262, default
    False there) serving the live LoRA, unless `model.fast_inference` is off. `import_backend` imported unsloth (and
    set UNSLOTH_VLLM_STANDBY) before transformers and CUDA."""
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_path,
        max_seq_length=max_seq_length,
        load_in_4bit=cfg.model.load_in_4bit,
        dtype=dtype,
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
