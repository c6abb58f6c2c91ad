"""`lowrank-rlvr plan`: peak GPU memory of a config, estimated before anything is downloaded.

Nothing here touches a GPU, a model's weights or (unless a shape is missing everywhere else) the network. The model's
shape comes from, in order: a local folder's `config.json`; the built-in table of the paper's models below
(`KNOWN_MODELS`, offline); the Hub's `config.json` when online. The estimate is a sum of named lines, one per thing
that holds GPU memory, so the breakdown table always adds up to the total.

The memory model (all formulas live in `phase_lines`, the `*_phases` it picks from and the helpers after them)
------------------------------------------------------------------------------------------------------------
Sizes are bytes, printed in GiB (what `torch.cuda` and `nvidia-smi` report: a "24 GB" RTX 4090 is 23.99 GiB,
an L4 22.5, an A10 22.2, a T4 15.0). `--gpu-memory` is in the same unit.

Tokens. One micro-batch holds `per_device_train_batch_size` sequences of `prompt + max_completion_length` tokens:
every completion is assumed to run to the limit (the worst case, which long-thinking models do reach). The prompt
length is estimated from the config's example text (about 3 characters per token, plus the chat template).

unsloth backend (`auto` on a CUDA machine with the [gpu] extra), colocated vLLM:
- CUDA context: a fixed `CUDA_CONTEXT_GIB`.
- Base weights, once: Unsloth's vLLM engine loads them and the training model points at the same tensors. Linear
  layers in NF4 (`NF4_BITS`: 4 bits + a double-quantized absmax per 64 weights), embeddings, the LM head (when not
  tied) and norms in 16 bit. `load_in_4bit: false` keeps every linear in the compute dtype.
- vLLM runtime: non-torch memory and CUDA graphs (fixed), the profile-run activation peak for
  `max_num_batched_tokens`, the sampler's logits for `max_num_seqs`, and the LoRA slot buffers (max_lora_rank =
  `lora.r` rounded up to a rank vLLM supports). `max_num_batched_tokens` / `max_num_seqs` follow Unsloth's table
  (unsloth_zoo 2026.10.9 vllm_utils.py:4807-4816), keyed by the memory left for the KV cache.
- vLLM KV cache: vLLM takes `gpu_memory_utilization x GPU` in all (weights + runtime + KV cache). Unsloth's share
  is of the memory FREE when vLLM loads, not of the card (unsloth_zoo 2026.10.9 vllm_utils.py:2585-2587,
  `free_memory = gpu_memory_utilization * free_memory`): planned as a share of the whole GPU, which holds when
  nothing else (another process, a notebook's earlier model) holds memory on it at load. The KV cache is
  what is left of that share, but at least one GRPO group (`num_generations` sequences of prompt + completion) must
  fit in it at once; when it does not, the line shows what the group needs and the plan fails with the share to ask.
- LoRA: parameters, gradients and AdamW's two moments, all fp32 (16 bytes per adapter parameter). Only the seven
  projections (q/k/v/o/gate/up/down) are counted; other `lora.target_modules` names are ignored.
- Checkpoints: with Unsloth's gradient checkpointing ("unsloth") each layer's input goes to CPU RAM; two hidden
  states per micro-batch stay on the GPU (one in flight each way).
- One layer's recompute + backward: the activations a LLaMA/Qwen decoder layer saves per token (norm inputs and
  outputs, q/k/v, attention output, gate/up/act/product of the MLP: `6h + 2 kv_dim + 4i` values, flash attention so
  no L^2 term), times `BACKWARD_FACTOR` for the gradients alive while that layer runs backward.
- Logits: Unsloth scores log-probs (and entropies) chunk by chunk from hidden states; a chunk's fp32 logits are
  capped at `UNSLOTH_LOGIT_CHUNK_GIB` (UNSLOTH_LOGPROB_CHUNK_GB, default 2.0, unsloth_zoo fused_linear.py:69); we
  count two such buffers (logits and their softmax / gradient).
- Rollout buffers: the generation batch's token ids and its old / sampling / reference log-probs.
- Fragmentation: `FRAGMENTATION` of the transient training memory (checkpoints, layer, logits).
- Standby (`model.vllm_standby`): vLLM frees its KV cache while the policy trains and takes it back to sample.
  Two phases, generation (vLLM's share + LoRA states) and training (weights + runtime + training memory); the peak
  is the larger. Unsloth then overrides `gpu_memory_utilization` with its own target (`standby_utilization`,
  vllm_utils.py:4471-4495), so the config's value is not used.

unsloth backend without vLLM (`model.fast_inference: false`): TRL samples with transformers `generate`, so there is
no vLLM share: the two phases of the hf backend below (generation KV cache, then training), with Unsloth's training
memory (offloaded checkpoints, chunked logits).

hf backend (transformers + peft): two phases. Generation with `generate` keeps a KV cache for the whole generation
batch (`per_device_train_batch_size x gradient_accumulation_steps` sequences); training computes the full logits of
a micro-batch (TRL 1.14.2 without Liger: `tokens x vocab x (dtype + fp32 log-softmax + fp32 gradient)`) and keeps
one checkpoint per layer on the GPU. With `grpo.use_vllm`, TRL's colocated vLLM holds its own 16-bit copy of the
weights inside its share, next to the training model.

Not counted: the reference model (with LoRA, `beta > 0` is the base with the adapter switched off: no extra weights;
its no-grad scoring pass peaks below the training backward), optimizer step temporaries, and Unsloth's dynamic
4-bit quantization keeping a few layers in 16 bit. The constants are first guesses, not yet checked against a GPU
measurement (`benchmarks/README.md` says what has been measured); change them here, in one place.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lowrank_rlvr.adapters import VLLM_LORA_RANKS
from lowrank_rlvr.backends import samples_with_vllm
from lowrank_rlvr.builtin import resolve_model_path
from lowrank_rlvr.config import ALL_LINEAR_MODULES, RunConfig, load_config
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.pretrained import model_key

GiB = 1024**3

# Assumptions of the memory model (see the module docstring), to be calibrated by scripts/bench_gpu.py.
CUDA_CONTEXT_GIB = 0.6  # torch's CUDA context, cuBLAS/cuDNN handles and workspaces
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # bitsandbytes NF4, blocksize 64, double-quantized absmax: 4.127 bits
VLLM_FIXED_GIB = 0.13 + 0.3  # non-torch forward memory (Unsloth's table, vllm_utils.py:4789) + CUDA graphs
UNSLOTH_LOGIT_CHUNK_GIB = 2.0  # unsloth_zoo fused_losses/fused_linear.py:69, UNSLOTH_LOGPROB_CHUNK_GB
BACKWARD_FACTOR = 1.5  # gradients alive while one layer runs backward, relative to what it saved
FRAGMENTATION = 0.10  # allocator slack on transient training memory
CHARS_PER_TOKEN = 3.0  # math text with LaTeX; an overestimate of tokens for English prose
TEMPLATE_TOKENS = {"qwen-math-cot": 0, "plain": 0, "chat": 64}  # chat: model templates (Llama's date header)
HUB_DATASET_PROMPT_TOKENS = 256  # a Hub dataset is not read by the planner
DEFAULT_GPU_GIB = 24.0  # planned for when no GPU is detected and --gpu-memory is not given

# Unsloth's vLLM sizing (unsloth_zoo 2026.10.9 vllm_utils.py:4807-4816): GiB left for the KV cache ->
# (max_num_batched_tokens, max_num_seqs).
VLLM_BATCH_TIERS = (
    (2, 2048, 8),
    (4, 2048, 16),
    (8, 4096, 32),
    (12, 4096, 48),
    (16, 6144, 64),
    (24, 6144, 80),
    (40, 8192, 96),
    (48, 8192, 112),
    (80, 8192, 128),
    (math.inf, 8192, 256),
)


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory depends on (config.json names in comments)."""

    name: str
    hidden_size: int  # hidden_size
    num_layers: int  # num_hidden_layers
    num_heads: int  # num_attention_heads
    num_kv_heads: int  # num_key_value_heads
    head_dim: int  # head_dim, else hidden_size // num_attention_heads
    intermediate_size: int  # intermediate_size
    vocab_size: int  # vocab_size
    tied_embeddings: bool  # tie_word_embeddings
    qkv_bias: bool  # attention_bias; Qwen2 always has q/k/v biases
    source: str = "built-in table"

    @classmethod
    def from_config_json(cls, config: dict, name: str, source: str) -> ModelShape:
        config = config.get("text_config") or config  # multimodal checkpoints nest the language model
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            return cls(
                name=name,
                hidden_size=hidden,
                num_layers=int(config["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                intermediate_size=int(config["intermediate_size"]),
                vocab_size=int(config["vocab_size"]),
                # Missing means untied for most architectures; untied also counts more memory, the safe side.
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
                source=source,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source}: not a decoder-only transformer config (missing or bad {exc})") from None

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer."""
        h, i, kv_dim = self.hidden_size, self.intermediate_size, self.kv_dim
        q_dim = self.num_heads * self.head_dim
        return {
            "q_proj": (h, q_dim),
            "k_proj": (h, kv_dim),
            "v_proj": (h, kv_dim),
            "o_proj": (q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        return self.num_layers * sum(n_in * n_out for n_in, n_out in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        """Input embeddings plus the LM head when it is a separate matrix."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def base_params(self) -> int:
        """Every parameter of the base model: linears, embeddings (+ LM head), RMSNorm weights, q/k/v biases."""
        norms = (2 * self.num_layers + 1) * self.hidden_size
        biases = self.num_layers * (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.qkv_bias else 0
        return self.linear_params + self.embedding_params + norms + biases

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


# The paper's models, for planning offline. Numbers from each model's config.json on the Hub, as mirrored in:
# - Qwen2.5-Math-1.5B / -7B: Lightning-AI/litgpt litgpt/config.py (`qwen_2_5_math`, citing
#   huggingface.co/Qwen/Qwen2.5-Math-{1.5B,7B}/blob/main/config.json): n_embd, n_layer, n_head, n_query_groups,
#   intermediate_size, padded_vocab_size. Tied embeddings: Qwen2.5 ties them at 1.5B and not at 7B (Qwen2 blog
#   table, quoted in InternLM/lmdeploy#1782; Qwen2.5-1.5B and -7B config.json as quoted in public repos).
# - Llama-3.2-3B-Instruct: its config.json (mirrored in Gusiion/meta-llama-Llama-3.2-3B-Instruct config.json).
# - DeepSeek-R1-Distill-Qwen-1.5B: its Qwen2Config dump (`"_name_or_path": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"`,
#   tie_word_embeddings false, unlike the Qwen2.5-Math-1.5B it was distilled into).
_QWEN2 = dict(num_layers=28, head_dim=128, qkv_bias=True)
KNOWN_MODELS = {
    "qwen2.5-math-1.5b": ModelShape(
        "Qwen/Qwen2.5-Math-1.5B", hidden_size=1536, num_heads=12, num_kv_heads=2, intermediate_size=8960,
        vocab_size=151936, tied_embeddings=True, **_QWEN2,
    ),
    "qwen2.5-math-7b": ModelShape(
        "Qwen/Qwen2.5-Math-7B", hidden_size=3584, num_heads=28, num_kv_heads=4, intermediate_size=18944,
        vocab_size=152064, tied_embeddings=False, **_QWEN2,
    ),
    "llama-3.2-3b-instruct": ModelShape(
        "meta-llama/Llama-3.2-3B-Instruct", hidden_size=3072, num_layers=28, num_heads=24, num_kv_heads=8,
        head_dim=128, intermediate_size=8192, vocab_size=128256, tied_embeddings=True, qkv_bias=False,
    ),
    "deepseek-r1-distill-qwen-1.5b": ModelShape(
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", hidden_size=1536, num_heads=12, num_kv_heads=2,
        intermediate_size=8960, vocab_size=151936, tied_embeddings=False, **_QWEN2,
    ),
}


def model_shape(name_or_path: str) -> ModelShape:
    """Shape of a model from a local folder, the built-in table, or the Hub's config.json (only when online)."""
    if name_or_path.startswith("builtin:"):
        name_or_path = resolve_model_path(name_or_path)  # built (or fetched) once, then local
    folder = Path(name_or_path).expanduser()
    if (folder / "config.json").is_file():
        config_json = folder / "config.json"
        return ModelShape.from_config_json(_read_json(config_json), name_or_path, str(config_json))
    if folder.is_dir():
        raise UserError(f"model folder {folder} has no config.json")
    if model_key(name_or_path) in KNOWN_MODELS:
        return KNOWN_MODELS[model_key(name_or_path)]
    return _hub_shape(name_or_path)


def _hub_shape(repo_id: str) -> ModelShape:
    known = ", ".join(shape.name for shape in KNOWN_MODELS.values())
    unknown = f"model {repo_id!r}: not a local folder and not in the built-in table ({known})"
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id, "config.json")  # honours HF_HUB_OFFLINE and the local cache
    except Exception as exc:  # offline, no such repo, gated: the user has to give a folder or a known model
        reason = type(exc).__name__
        raise UserError(f"{unknown}, and its config.json could not be read from the Hub ({reason})") from None
    return ModelShape.from_config_json(_read_json(Path(path)), repo_id, f"{repo_id} (Hub config.json)")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read model config ({exc})") from None


@dataclass(frozen=True)
class PlanInputs:
    """The plain numbers the memory model reads, taken from a RunConfig (`plan_inputs`) or set directly."""

    backend: str  # "unsloth" or "hf"
    load_in_4bit: bool
    compute_bytes: int  # 2 for bf16/fp16, 4 for fp32
    lora_rank: int
    lora_modules: tuple[str, ...]
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    num_generations: int
    prompt_tokens: int
    max_completion_length: int
    gpu_memory_utilization: float
    vllm_standby: bool
    use_vllm: bool  # hf backend only: TRL's colocated vLLM
    fast_inference: bool  # unsloth backend only: Unsloth's colocated vLLM (False: transformers generate)
    gradient_checkpointing: bool
    beta: float
    gpu_bytes: float

    @property
    def sequence_tokens(self) -> int:
        return self.prompt_tokens + self.max_completion_length

    @property
    def generation_batch(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def samples_with_vllm(self) -> bool:
        return samples_with_vllm(self.backend, self.fast_inference, self.use_vllm)


@dataclass(frozen=True)
class Line:
    name: str
    bytes: float
    note: str = ""


@dataclass(frozen=True)
class Plan:
    shape: ModelShape
    inputs: PlanInputs
    phases: dict[str, list[Line]]  # phase name -> what is on the GPU at that phase's peak
    problems: tuple[str, ...]  # reasons it cannot run, besides the total exceeding the GPU
    kv_sequences: float  # how many full-length sequences the sampler's KV cache holds at once

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda phase: sum(line.bytes for line in self.phases[phase]))

    @property
    def lines(self) -> list[Line]:
        return self.phases[self.peak_phase]

    @property
    def total_bytes(self) -> float:
        return sum(line.bytes for line in self.lines)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.inputs.gpu_bytes and not self.problems

    def metrics(self) -> dict[str, float]:
        return {
            "plan/total_gib": self.total_bytes / GiB,
            "plan/gpu_gib": self.inputs.gpu_bytes / GiB,
            "plan/kv_sequences": self.kv_sequences,
            **{f"plan/{line.name}_gib": line.bytes / GiB for line in self.lines},
        }


def plan_inputs(cfg: RunConfig, gpu_gib: float) -> PlanInputs:
    """The memory model's inputs for a config; `auto` is planned as `unsloth`, what it picks on a CUDA machine."""
    g = cfg.grpo
    modules = tuple(m for m in cfg.lora.modules() if m in ALL_LINEAR_MODULES)  # the seven projections counted
    return PlanInputs(
        backend="hf" if cfg.model.backend == "hf" else "unsloth",
        load_in_4bit=cfg.model.load_in_4bit,
        compute_bytes=4 if cfg.model.dtype == "float32" else 2,
        lora_rank=cfg.lora.r,
        lora_modules=modules,
        per_device_train_batch_size=g.per_device_train_batch_size,
        gradient_accumulation_steps=g.gradient_accumulation_steps,  # per process: each samples its own batch
        num_generations=g.num_generations,
        prompt_tokens=estimate_prompt_tokens(cfg),
        max_completion_length=g.max_completion_length,
        gpu_memory_utilization=cfg.model.gpu_memory_utilization,
        vllm_standby=cfg.model.vllm_standby,
        use_vllm=g.use_vllm,
        fast_inference=cfg.model.fast_inference,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        beta=g.beta,
        gpu_bytes=gpu_gib * GiB,
    )


def estimate_prompt_tokens(cfg: RunConfig) -> int:
    """Longest prompt of the config's data in tokens, from its characters (no tokenizer is loaded)."""
    from lowrank_rlvr.data import load_examples
    from lowrank_rlvr.templates import render_prompt

    template = cfg.data.template
    if cfg.data.dataset is not None:
        return HUB_DATASET_PROMPT_TOKENS
    problems = [example.prompt for example in load_examples(cfg.data)]
    rendered = [problem if template == "chat" else render_prompt(problem, template) for problem in problems]
    return max(math.ceil(len(text) / CHARS_PER_TOKEN) for text in rendered) + TEMPLATE_TOKENS[template]


def estimate(shape: ModelShape, inputs: PlanInputs) -> Plan:
    """Peak GPU memory of one training run, as named lines per phase (see the module docstring)."""
    phases, problems, kv_sequences = phase_lines(shape, inputs)
    return Plan(shape, inputs, phases, tuple(problems), kv_sequences)


# ---- The memory model: every formula is below this line. ---------------------------------------------------------


def phase_lines(shape: ModelShape, x: PlanInputs) -> tuple[dict[str, list[Line]], list[str], float]:
    """The lines of every phase, the reasons it cannot run, and how many full sequences the sampler's KV cache holds
    at once: the lines every backend has, then those of how it samples (Unsloth's vLLM, TRL's vLLM, `generate`)."""
    context = Line("cuda_context", CUDA_CONTEXT_GIB * GiB, "torch CUDA context and library workspaces")
    weights = Line("base_weights", weights_bytes(shape, x.load_in_4bit, x.compute_bytes), _weights_note(x))
    adapter = lora_params(shape, x.lora_rank, x.lora_modules)
    lora_states = Line("lora_states", adapter * 16, f"r={x.lora_rank}: fp32 weights, grads, AdamW m and v")
    shared = [context, weights, lora_states, *training_lines(shape, x)]
    if x.backend == "unsloth" and x.fast_inference:
        return unsloth_vllm_phases(shape, x, shared)
    if x.samples_with_vllm:
        return trl_vllm_phases(shape, x, shared)
    return generate_phases(shape, x, shared)


def unsloth_vllm_phases(
    shape: ModelShape, x: PlanInputs, shared: list[Line]
) -> tuple[dict[str, list[Line]], list[str], float]:
    """Unsloth's colocated vLLM: one copy of the weights, shared with training, inside vLLM's share; with standby,
    a sampling phase and a training phase (vLLM's KV cache freed)."""
    context, weights, lora_states, *training = shared
    problems: list[str] = []
    kv_needed = _group_kv_bytes(shape, x)
    utilization = standby_utilization(x.gpu_bytes) if x.vllm_standby else x.gpu_memory_utilization
    share = utilization * x.gpu_bytes
    runtime = vllm_runtime_bytes(shape, x, kv_budget=share - weights.bytes)
    kv_reserved = share - weights.bytes - runtime
    kv_note = _kv_note(kv_reserved, kv_needed, utilization, x.num_generations)
    kv = Line("vllm_kv_cache", max(kv_reserved, kv_needed), kv_note)
    vllm = [weights, Line("vllm_runtime", runtime, "activations, sampler, LoRA slots, CUDA graphs"), kv]
    if kv_reserved < kv_needed:
        need = (weights.bytes + runtime + kv_needed) / x.gpu_bytes
        problems.append(
            f"vLLM's share ({utilization:.2f} x GPU) leaves {max(kv_reserved, 0) / GiB:.2f} GiB for the KV cache; "
            f"one group of {x.num_generations} rollouts needs {kv_needed / GiB:.2f} GiB "
            f"(gpu_memory_utilization >= {math.ceil(need * 100) / 100:.2f})"
        )
    kv_sequences = max(kv_reserved, 0) / (x.sequence_tokens * kv_bytes_per_token(shape, x.compute_bytes))
    if not x.vllm_standby:
        return {"train + sample": [context, *vllm, lora_states, *training]}, problems, kv_sequences
    phases = {
        "sample (standby)": [context, *vllm, lora_states],
        "train (standby)": [
            context, weights, Line("vllm_runtime", runtime, "kept while vLLM sleeps"), lora_states, *training
        ],
    }
    return phases, problems, kv_sequences


def trl_vllm_phases(
    shape: ModelShape, x: PlanInputs, shared: list[Line]
) -> tuple[dict[str, list[Line]], list[str], float]:
    """hf backend with TRL's colocated vLLM: its own 16-bit weights inside its share, the training model beside it."""
    context, weights, lora_states, *training = shared
    problems: list[str] = []
    kv_needed = _group_kv_bytes(shape, x)
    share = x.gpu_memory_utilization * x.gpu_bytes
    vllm_weights = weights_bytes(shape, False, 2)
    runtime = vllm_runtime_bytes(shape, x, kv_budget=share - vllm_weights)
    kv_reserved = share - vllm_weights - runtime
    if kv_reserved < kv_needed:
        problems.append(
            f"TRL's vLLM share ({x.gpu_memory_utilization:.2f} x GPU) cannot hold its 16-bit weights and one group "
            f"of {x.num_generations} rollouts ({(vllm_weights + runtime + kv_needed) / GiB:.2f} GiB)"
        )
    vllm = [
        Line("vllm_weights", vllm_weights, "TRL's vLLM loads its own 16-bit copy"),
        Line("vllm_runtime", runtime, "activations, sampler, CUDA graphs"),
        Line(
            "vllm_kv_cache",
            max(kv_reserved, kv_needed),
            _kv_note(kv_reserved, kv_needed, x.gpu_memory_utilization, x.num_generations),
        ),
    ]
    kv_sequences = max(kv_reserved, 0) / (x.sequence_tokens * kv_bytes_per_token(shape, x.compute_bytes))
    return {"train + sample": [context, *vllm, weights, lora_states, *training]}, problems, kv_sequences


def generate_phases(
    shape: ModelShape, x: PlanInputs, shared: list[Line]
) -> tuple[dict[str, list[Line]], list[str], float]:
    """Sampling with transformers `generate`: a KV cache for the whole generation batch, then the training phase."""
    context, weights, lora_states, *training = shared
    generation_kv = x.generation_batch * x.sequence_tokens * kv_bytes_per_token(shape, x.compute_bytes)
    sample = [
        context,
        weights,
        lora_states,
        Line("generate_kv_cache", generation_kv, f"transformers generate: {x.generation_batch} sequences at once"),
        Line("generate_logits", x.generation_batch * shape.vocab_size * 4, "last-token fp32 logits"),
    ]
    return {"sample": sample, "train": [context, weights, lora_states, *training]}, [], float(x.generation_batch)


def _group_kv_bytes(shape: ModelShape, x: PlanInputs) -> float:
    """KV cache of one GRPO group: `num_generations` sequences of prompt + completion, at once."""
    return x.num_generations * x.sequence_tokens * kv_bytes_per_token(shape, x.compute_bytes)


def training_lines(shape: ModelShape, x: PlanInputs) -> list[Line]:
    """Policy-update memory of one micro-batch: checkpoints, one layer's recompute, logits, rollout buffers."""
    tokens = x.per_device_train_batch_size * x.sequence_tokens
    completion_tokens = x.per_device_train_batch_size * x.max_completion_length
    hidden_state = tokens * shape.hidden_size * x.compute_bytes
    layer = tokens * layer_activation_values(shape) * x.compute_bytes
    if not x.gradient_checkpointing:
        checkpoints = Line("activations", shape.num_layers * layer, "no checkpointing: all layers' activations")
    elif x.backend == "unsloth":
        checkpoints = Line("checkpoints", 2 * hidden_state, "Unsloth offloads layer inputs to CPU RAM; 2 in flight")
    else:
        checkpoints = Line("checkpoints", shape.num_layers * hidden_state, "one hidden state per layer")
    if x.gradient_checkpointing:
        recompute = Line("layer_backward", layer * BACKWARD_FACTOR, f"one layer recomputed + backward, {tokens} tokens")
    else:
        recompute = Line("layer_backward", layer * (BACKWARD_FACTOR - 1), "gradients of the layer running backward")
    if x.backend == "unsloth":
        chunk = min(completion_tokens * shape.vocab_size * 4, UNSLOTH_LOGIT_CHUNK_GIB * GiB)
        logits = Line("logits", 2 * chunk, "chunked fp32 log-probs/entropy (Unsloth), 2 chunk buffers")
    else:
        full = completion_tokens * shape.vocab_size * (x.compute_bytes + 8)
        logits = Line("logits", full, "full logits + fp32 log-softmax + grad")
    rollout_bytes = x.generation_batch * (x.sequence_tokens * 16 + x.max_completion_length * 4 * (2 + (x.beta > 0)))
    rollouts = Line("rollout_buffers", rollout_bytes, f"ids/masks and log-probs of {x.generation_batch} completions")
    transient = checkpoints.bytes + recompute.bytes + logits.bytes
    fragmentation = Line("fragmentation", FRAGMENTATION * transient, "allocator slack")
    return [checkpoints, recompute, logits, rollouts, fragmentation]


def weights_bytes(shape: ModelShape, load_in_4bit: bool, compute_bytes: int) -> float:
    """Linears in NF4 (or the compute dtype); everything else (embeddings, norms, biases) in the compute dtype."""
    linear_bytes = NF4_BITS / 8 if load_in_4bit else compute_bytes
    return shape.linear_params * linear_bytes + (shape.base_params - shape.linear_params) * compute_bytes


def lora_params(shape: ModelShape, rank: int, modules: tuple[str, ...]) -> int:
    """A (rank x in) and B (out x rank) for each adapted projection of every layer."""
    shapes = shape.linear_shapes()
    return shape.num_layers * sum(rank * (shapes[m][0] + shapes[m][1]) for m in modules)


def kv_bytes_per_token(shape: ModelShape, compute_bytes: int) -> int:
    return 2 * shape.num_layers * shape.kv_dim * compute_bytes  # K and V, every layer


def layer_activation_values(shape: ModelShape) -> int:
    """Values one decoder layer saves per token for backward (flash attention, LoRA inputs shared)."""
    return 6 * shape.hidden_size + 2 * shape.kv_dim + 4 * shape.intermediate_size


def vllm_runtime_bytes(shape: ModelShape, x: PlanInputs, kv_budget: float) -> float:
    """vLLM's non-KV memory besides the weights, sized with Unsloth's batching tiers for this KV budget."""
    batched_tokens, max_seqs = next((t, s) for limit, t, s in VLLM_BATCH_TIERS if kv_budget / GiB <= limit)
    activations = batched_tokens * (4 * shape.hidden_size + 2 * shape.intermediate_size) * x.compute_bytes
    sampler = max_seqs * shape.vocab_size * 4 * 8  # fp32 logits, probabilities and sorting copies per sequence
    slot_rank = next((r for r in VLLM_LORA_RANKS if r >= x.lora_rank), x.lora_rank)
    lora_slots = lora_params(shape, slot_rank, x.lora_modules) * x.compute_bytes
    return VLLM_FIXED_GIB * GiB + activations + sampler + lora_slots


def standby_utilization(gpu_bytes: float) -> float:
    """The gpu_memory_utilization Unsloth forces in standby mode (unsloth_zoo 2026.10.9 vllm_utils.py:4471-4480,
    vLLM >= 0.11): a tier by a tenth of the GPU's memory, times 0.95."""
    ten_percent = gpu_bytes / GiB * 0.1
    for floor, target in ((4.0, 0.925), (2.5, 0.9), (2.0, 0.825), (1.4, 0.8), (1.0, 0.775)):
        if ten_percent >= floor:
            return target * 0.95
    return 0.75 * 0.95


def _weights_note(x: PlanInputs) -> str:
    linear = "NF4 linears" if x.load_in_4bit else f"{8 * x.compute_bytes}-bit linears"
    shared = ", shared by vLLM and training" if x.backend == "unsloth" and x.fast_inference else ""
    return f"{linear}, {8 * x.compute_bytes}-bit embeddings{shared}"


def _kv_note(reserved: float, needed: float, utilization: float, num_generations: int) -> str:
    if reserved >= needed:
        return f"rest of vLLM's {utilization:.2f} share; one group of {num_generations} needs {needed / GiB:.2f} GiB"
    return f"one group of {num_generations} rollouts (share leaves only {max(reserved, 0) / GiB:.2f} GiB)"


# ---- What to change when it does not fit. ------------------------------------------------------------------------


def suggestions(shape: ModelShape, x: PlanInputs) -> list[str]:
    """Single-setting changes that make the plan fit, each with the largest value that does."""
    fits = lambda **changes: estimate(shape, dataclasses.replace(x, **changes)).fits  # noqa: E731
    found = []
    for batch in sorted((b for b in _divisors(x.generation_batch) if b < x.per_device_train_batch_size), reverse=True):
        if fits(per_device_train_batch_size=batch, gradient_accumulation_steps=x.generation_batch // batch):
            found.append(
                f"grpo.per_device_train_batch_size={batch} with grpo.gradient_accumulation_steps="
                f"{x.generation_batch // batch} (the same {x.generation_batch} completions per step)"
            )
            break
    for rollouts in sorted((g for g in _divisors(x.generation_batch) if 2 <= g < x.num_generations), reverse=True):
        if fits(num_generations=rollouts):
            found.append(f"grpo.num_generations={rollouts}")
            break
    if fits(max_completion_length=1):
        low, high = 1, x.max_completion_length - 1  # the largest length that fits, by bisection (memory is monotone)
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(max_completion_length=middle) else (low, middle - 1)
        found.append(f"grpo.max_completion_length={low if low < 128 else low - low % 128}")
    if not x.vllm_standby and x.backend == "unsloth" and x.fast_inference and fits(vllm_standby=True):
        found.append("model.vllm_standby=true")
    for rank in (r for r in (2**k for k in range(10, -1, -1)) if r < x.lora_rank):
        if fits(lora_rank=rank):
            found.append(f"lora.r={rank}")
            break
    if x.samples_with_vllm and not x.vllm_standby:
        good = [u / 100 for u in range(20, 96, 5) if fits(gpu_memory_utilization=u / 100)]
        if good:
            found.append(f"model.gpu_memory_utilization between {good[0]:.2f} and {good[-1]:.2f}")
    return found


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---- The command. ------------------------------------------------------------------------------------------------


def plan_command(config: str | None, overrides: list[str], gpu_memory: float | None) -> tuple[str, int]:
    """Text to print and the exit code: 0 fits, 3 does not fit."""
    cfg = load_config(config, overrides)
    if gpu_memory is not None and not 0 < gpu_memory < math.inf:  # also refuses NaN
        raise UserError(f"--gpu-memory must be a positive number (got {gpu_memory})")
    gpu_gib, gpu_source = (gpu_memory, "--gpu-memory") if gpu_memory is not None else detect_gpu_gib()
    shape = model_shape(cfg.model.name_or_path)
    inputs = plan_inputs(cfg, gpu_gib)
    plan = estimate(shape, inputs)
    advice = [] if plan.fits else suggestions(shape, inputs)
    return render(plan, gpu_source, cfg.model.backend, advice), 0 if plan.fits else 3


def detect_gpu_gib() -> tuple[float, str]:
    """Memory of GPU 0 in GiB and where that number came from; DEFAULT_GPU_GIB without a GPU."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.total,name", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.splitlines()[0]
            mib, name = out.split(",", 1)
            return float(mib) / 1024, f"detected: {name.strip()}"
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    return DEFAULT_GPU_GIB, f"no GPU detected; planned for {DEFAULT_GPU_GIB:g} GiB (set --gpu-memory)"


def render(plan: Plan, gpu_source: str, requested_backend: str, advice: list[str]) -> str:
    from rich.console import Console
    from rich.table import Table

    x, shape = plan.inputs, plan.shape
    backend = x.backend if requested_backend == x.backend else f"{x.backend} ('{requested_backend}' on a CUDA machine)"
    table = Table(title=f"Peak GPU memory: {shape.name}, phase '{plan.peak_phase}'", title_justify="left")
    table.add_column("what")
    table.add_column("GiB", justify="right")
    table.add_column("assumption")
    for line in plan.lines:
        table.add_row(line.name, f"{line.bytes / GiB:.2f}", line.note)
    gpu = f"GPU {x.gpu_bytes / GiB:.2f} GiB ({gpu_source})"
    table.add_row("total", f"{plan.total_bytes / GiB:.2f}", gpu, style="bold")
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, no_color=True, highlight=False)
    console.print(
        f"backend {backend}; shape from {shape.source}; {shape.num_layers} layers, hidden {shape.hidden_size}, "
        f"vocab {shape.vocab_size}; prompt ~{x.prompt_tokens} + completion {x.max_completion_length} tokens; "
        f"micro-batch {x.per_device_train_batch_size}, {x.num_generations} rollouts per prompt"
    )
    console.print(table)
    for phase, lines in plan.phases.items():
        if phase != plan.peak_phase:
            console.print(f"other phase '{phase}': {sum(line.bytes for line in lines) / GiB:.2f} GiB")
    if x.samples_with_vllm:
        sequences = f"{plan.kv_sequences:.1f} sequences of {x.sequence_tokens} tokens"
        console.print(f"the sampler's KV cache holds {sequences} at once")
    if x.backend == "unsloth" and x.fast_inference:
        console.print(
            "Unsloth's vLLM share is of the memory free when it loads (unsloth_zoo 2026.10.9), planned here as of the "
            "whole GPU: free it of other processes and models first, or vLLM gets less"
        )
    headroom = (x.gpu_bytes - plan.total_bytes) / GiB
    for problem in plan.problems:
        console.print(f"problem: {problem}")
    if plan.fits:
        console.print(f"fits: {headroom:.2f} GiB to spare")
    else:
        console.print(f"does not fit: {plan.total_bytes / GiB:.2f} GiB needed, {x.gpu_bytes / GiB:.2f} GiB available")
        none_fits = "no single setting change fits; combine several or use a larger GPU"
        console.print("change one of:" if advice else none_fits)
        for item in advice:
            console.print(f"  --set {item}" if "between" not in item else f"  {item}")
    return buffer.getvalue().rstrip()
