"""The 24 GB path measured in one process: Unsloth's 4-bit LoRA policy update at the real Qwen2.5-Math-1.5B and -7B
architectures, a short transformers `generate`, and `plan`'s estimate beside each figure (issue 24).

For each shipped 24 GB config (`qwen2.5-math-1.5b-pi1`, then `qwen2.5-math-7b-pi1`):

1. A model of the real architecture with random weights is written to a scratch folder (shapes from
   `plan.KNOWN_MODELS`, the models' config.json numbers; no download), with a stand-in tokenizer of Qwen2.5's
   vocabulary size (151,665 tokens, its special tokens at their real ids).
2. The config is loaded as `train` loads it (`load_config` with `--set`-style overrides), the runtime worked out by
   `train.training_setup`, the policy loaded by `backends.load_policy` (Unsloth: 4-bit base, LoRA as shipped,
   Unsloth's gradient checkpointing; `model.fast_inference: false`, so TRL's `use_vllm` is off and no vLLM engine
   takes memory) and TRL's `GRPOTrainer` built with `train.grpo_arguments`, exactly as `train` does.
3. A few optimizer steps on synthetic rollouts at the worst case: one group of `num_generations` (8) completions,
   every one `max_completion_length` tokens long, after a prompt of `plan`'s estimated length for the config. One step
   is what TRL does per group: the reference log-probs (no grad, adapter off, `_get_per_token_logps_and_entropies`),
   then per micro-batch the trainer's own `compute_loss` (Unsloth replaces it with its fused loss) and backward, then
   gradient clipping and the AdamW step. Generation is bypassed; the update path is the real one. The shipped
   configs accumulate 16 (1.5B) or 32 (7B) micro-batches per optimizer step; here one step is one group (1 or 2
   micro-batches), so a shipped step's update costs `generation_batch / 8` of these steps.
4. A short `generate` (TRL's generation config, `min_new_tokens = max_new_tokens`) of one group on the same model.
5. `plan`'s estimate for the same settings (`plan.estimate`, its 'train' phase) beside the measured peak.

Memory is the driver's view (NVML, else `torch.cuda.mem_get_info`) sampled every few milliseconds, combined with
torch's exact allocator peak plus the non-torch memory (CUDA context, library workspaces), in GiB as `plan` prints,
per phase: the load (`load_*`), the update steps (`update_*`, which is `peak_memory_gb`; the load's cached blocks are
released first, as the allocator would before failing) and the generate (`generation_*`).
A 24 GB card is emulated on a bigger GPU: torch's allocator is capped with `set_per_process_memory_fraction` at
24 GiB minus the non-torch memory already in use, and the vLLM share (`--fast-inference` only) is rescaled so that it
is the config's share of 24 GiB. Each model's result is written to the JSON file as soon as it exists, so a command
cut short still leaves what was measured; `--time-budget` stops starting work that would not finish in time.

    python scripts/bench_gpu.py --output-dir $OUT --time-budget 460      # on a CUDA machine with Unsloth
    python scripts/bench_gpu.py --rehearse --output-dir /tmp/rehearsal   # CPU: same path, hf backend, tiny shapes

`--rehearse` runs the same code with a tiny Qwen2 of the same layout (hf backend: Unsloth cannot be imported without
CUDA), 32-token completions and process RSS as the "device" memory; tests/test_bench_gpu.py runs it. Its figures say
nothing about a GPU. Results: `<output-dir>/gpu-<device>-<date>.json` (`gpu-rehearsal-cpu-<date>.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Each measured architecture and the shipped config it runs.
MODELS = {"qwen2.5-math-1.5b": "qwen2.5-math-1.5b-pi1", "qwen2.5-math-7b": "qwen2.5-math-7b-pi1"}
# The rest of Qwen2.5-Math's config.json that a model needs; none of it changes memory or speed.
QWEN2_MATH_CONFIG = dict(
    max_position_embeddings=4096, rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}
)
# Qwen2.5's tokenizer: 151,643 byte-level BPE tokens, then its special tokens (<|endoftext|> first); 151,665 in all.
# The embedding matrix has more rows (151,936 / 152,064) than the tokenizer has tokens, as in the real models.
QWEN_TOKENIZER = {"size": 151665, "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
REHEARSAL_TOKENIZER = {"size": 500, "<|endoftext|>": 497, "<|im_start|>": 498, "<|im_end|>": 499}
REHEARSAL_COMPLETION_TOKENS = 32
VERSIONED = (  # pyproject.toml's pins and what Unsloth needs: the GPU machine's own versions get recorded
    "torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "unsloth", "unsloth_zoo", "datasets",
    "triton", "xformers", "vllm", "torchao", "cut_cross_entropy", "pydantic", "typing_extensions", "tokenizers",
    "safetensors", "huggingface_hub", "numpy", "math-verify", "typer", "rich", "PyYAML", "pandas", "pyarrow",
    "matplotlib", "nvidia-ml-py",
)
SAMPLE_SECONDS = 0.005  # how often the driver's memory figure is read
GENERATION_RESERVE_SECONDS = 30  # kept free for the short generate when the time budget runs low


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    import_error = None
    if not args.rehearse:
        try:
            import unsloth  # noqa: F401  (before transformers and trl: it patches them)
        except Exception:  # recorded in the results file: what was missing on arrival
            import_error = traceback.format_exc()[-4000:]
            print(import_error, file=sys.stderr, flush=True)
    import_seconds = time.monotonic() - started
    import torch

    on_cuda = not args.rehearse
    if on_cuda and not torch.cuda.is_available():
        sys.exit("error: no CUDA device (use --rehearse on CPU)")
    memory = DeviceMemory(on_cuda)
    emulation = memory.emulate(args.emulate_gib) if on_cuda else {"emulated_gpu_gib": args.emulate_gib}
    device = torch.cuda.get_device_name(0) if on_cuda else "cpu (rehearsal)"
    slug = "rehearsal-cpu" if args.rehearse else re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = Results(
        out_dir / f"gpu-{slug}-{datetime.date.today().isoformat()}.json",
        {
            "benchmark": "scripts/bench_gpu.py",
            "command": " ".join(["python", "scripts/bench_gpu.py", *sys.argv[1:]]),
            "rehearsal": args.rehearse,
            "device": device,
            "machine": machine_facts(memory),
            "versions": versions(),
            "emulation": emulation,
            "memory_unit": "GiB (2**30 bytes), as `lowrank-rlvr plan` prints",
            "unsloth_import_seconds": None if args.rehearse else round(import_seconds, 1),
            "runs": [],
            "skipped": [],
            "finished": False,
        },
    )
    if import_error is not None:
        results.data["unsloth_import_error"] = import_error
        results.finish(time.monotonic() - started)
        return 1
    budget = Budget(started, args.time_budget)
    work = Path(args.work_dir) if args.work_dir else scratch_dir()
    failures = 0
    for key in args.models:
        if budget.remaining() < args.min_seconds_per_model:
            results.skip(key, f"time budget: {budget.remaining():.0f} s left, {args.min_seconds_per_model} s needed")
            continue
        record = bench_model(key, args, memory, budget, work, results)
        failures += record["status"] != "ok"
    results.finish(time.monotonic() - started)
    print(f"results: {results.path}", flush=True)
    return 1 if failures else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rehearse", action="store_true", help="CPU rehearsal: hf backend, tiny shapes")
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per model; the first is a warm-up")
    parser.add_argument("--generate-tokens", type=int, default=256, help="new tokens per sequence in the generate")
    parser.add_argument("--generate-max-seconds", type=float, default=40.0, help="generate's own time limit")
    parser.add_argument("--emulate-gib", type=float, default=None, help="card to emulate (default: plan's 24 GiB)")
    parser.add_argument("--fast-inference", action="store_true", help="keep Unsloth's vLLM engine (phase 2)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds for the whole process")
    parser.add_argument("--min-seconds-per-model", type=float, default=90.0, help="do not start a model with less")
    parser.add_argument("--output-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--work-dir", default=None, help="scratch for the random weights (default: /dev/shm or tmp)")
    args = parser.parse_args()
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (choose from {', '.join(MODELS)})")
    if args.emulate_gib is None:
        from lowrank_rlvr.plan import DEFAULT_GPU_GIB

        args.emulate_gib = DEFAULT_GPU_GIB
    return args


# ---- One model. --------------------------------------------------------------------------------------------------


def bench_model(key: str, args, memory: DeviceMemory, budget: Budget, work: Path, results: Results) -> dict:
    import torch

    from lowrank_rlvr.config import load_config
    from lowrank_rlvr.backends import load_policy
    from lowrank_rlvr.plan import KNOWN_MODELS, estimate, estimate_prompt_tokens, model_shape, plan_inputs
    from lowrank_rlvr.runtime import Launch
    from lowrank_rlvr.train import grpo_arguments, training_setup

    shape = rehearsal_shape() if args.rehearse else KNOWN_MODELS[key]
    tokenizer_spec = REHEARSAL_TOKENIZER if args.rehearse else QWEN_TOKENIZER
    folder = work / f"{key}-random"
    record = {
        "device": results.data["device"],
        "model": f"{shape.name} architecture, random weights" + (" (rehearsal: tiny shapes)" if args.rehearse else ""),
        "status": "running",
    }
    results.add(record)
    trainer = model = rollouts = None
    try:
        print(f"== {key}: writing a random model ({shape.name})", flush=True)
        t0 = time.perf_counter()
        with memory.uncapped():  # writing the weights is no part of what is measured
            write_random_model(folder, shape, tokenizer_spec, on_cuda=not args.rehearse)
        record["write_random_model_seconds"] = round(time.perf_counter() - t0, 2)

        cfg, overrides = bench_config(key, folder, args, memory, load_config)
        prompt_tokens = estimate_prompt_tokens(cfg)  # the stand-in tokenizer does not tokenize like Qwen's
        runtime = dataclasses.replace(training_setup(cfg, Launch(0, 1)), longest_prompt_tokens=prompt_tokens)
        record["backend"] = runtime.backend
        g = cfg.grpo
        completions = cfg.generation_batch_size()
        plan = estimate(model_shape(str(folder)), plan_inputs(cfg, args.emulate_gib))
        record["config"] = {
            "name": MODELS[key],
            "overrides": overrides,
            "per_device_train_batch_size": g.per_device_train_batch_size,
            "gradient_accumulation_steps": g.gradient_accumulation_steps,
            "completions_per_step": completions,
            "num_generations": g.num_generations,
            "prompt_tokens": prompt_tokens,
            "max_completion_length": g.max_completion_length,
            "sequence_tokens": prompt_tokens + g.max_completion_length,
            "lora_r": cfg.lora.r,
            "lora_target_modules": cfg.lora.target_modules,
            "load_in_4bit": cfg.model.load_in_4bit,
            "dtype": str(runtime.dtype).removeprefix("torch."),
            "gradient_checkpointing": cfg.model.gradient_checkpointing,
            "fast_inference": cfg.model.fast_inference,
            "beta": g.beta,
            "entropy_coef": g.entropy_coef,
            "loss_type": g.loss_type,
        }
        train_phase = plan.phases.get("train") or plan.lines  # with vLLM colocated there is one phase
        record["plan_estimate_gb"] = round(sum(line.bytes for line in train_phase) / 2**30, 3)
        record["plan_lines_gb"] = {line.name: round(line.bytes / 2**30, 3) for line in train_phase}
        record["plan_phases_gb"] = {p: round(sum(x.bytes for x in ls) / 2**30, 3) for p, ls in plan.phases.items()}
        results.save()

        memory.start_phase()
        t0 = time.perf_counter()
        print(f"== {key}: loading the policy ({runtime.backend})", flush=True)
        model, tokenizer, peft_config = load_policy(
            cfg, runtime.backend, runtime.model_path, runtime.tokenizer, runtime.dtype, runtime.launch, runtime.on_cuda,
            runtime.longest_prompt_tokens,
        )
        trainer = build_trainer(cfg, runtime, model, tokenizer, peft_config, grpo_arguments)
        record["config"]["use_vllm"] = bool(trainer.args.use_vllm)  # what TRL was given
        record["config"]["trl_args"] = {  # as the trainer holds them (Unsloth's GRPOConfig may change some)
            name: getattr(trainer.args, name, None) for name in TRL_ARGS
        }
        record["load_seconds"] = round(time.perf_counter() - t0, 2)
        shutil.rmtree(folder, ignore_errors=True)  # loaded (and quantized): the 16-bit copy is not needed any more
        record.update(memory.peak(prefix="load_"))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the load's cached blocks: what the allocator gives back before it would fail
        record["memory_after_load"] = memory.snapshot()

        rollouts = SyntheticRollouts(cfg, prompt_tokens, tokenizer_spec["<|endoftext|>"], shape.vocab_size, trainer)
        steps = run_steps(trainer, rollouts, args.steps, budget, key)
        record["steps"] = steps
        timed = steps[1:] or steps  # the first step compiles kernels
        record["update_seconds"] = round(mean(s["update_seconds"] for s in timed), 4)
        record["scoring_seconds"] = round(mean(s["scoring_seconds"] for s in timed), 4)
        record["step_seconds"] = round(record["update_seconds"] + record["scoring_seconds"], 4)
        tokens = completions * (prompt_tokens + g.max_completion_length)
        record["trained_tokens_per_step"] = tokens
        record["trained_tokens_per_second"] = round(tokens / record["update_seconds"], 1)
        record["completion_tokens_per_second"] = round(completions * g.max_completion_length / record["update_seconds"], 1)
        record["shipped_step_update_seconds_estimate"] = round(
            record["step_seconds"] * load_config(MODELS[key]).generation_batch_size() / completions, 2
        )
        record["adapter_changed"] = rollouts.adapter_changed()
        record.update(memory.peak(prefix="update_"))
        record["peak_memory_gb"] = record["update_peak_memory_gb"]
        record["plan_error_percent"] = round(100 * (record["plan_estimate_gb"] / record["peak_memory_gb"] - 1), 1)
        record["fits_emulated_card"] = record["peak_memory_gb"] <= args.emulate_gib
        results.save()

        print(f"== {key}: generate", flush=True)
        generation = run_generate(trainer, rollouts, args, budget)
        record.update(generation)
        record.update(memory.peak(prefix="generation_"))
        record["status"] = "ok"
    except Exception as exc:  # out of memory under the emulation is a result too
        oom = isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError))
        record["status"] = "out of memory" if oom else "error"
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        record["traceback_tail"] = traceback.format_exc()[-4000:]
        record.update(memory.peak(prefix="at_failure_"))
        print(record["traceback_tail"], file=sys.stderr, flush=True)
    finally:
        trainer = model = rollouts = None  # noqa: F841  (the references that keep the GPU memory)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        shutil.rmtree(folder, ignore_errors=True)
        record["memory_after_release"] = memory.snapshot()
        results.save()
    print(f"== {key}: {record['status']}: " + json.dumps({k: record.get(k) for k in SUMMARY_KEYS}), flush=True)
    return record


TRL_ARGS = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation", "generation_batch_size",
    "num_generations", "max_completion_length", "use_vllm", "loss_type", "beta", "epsilon", "epsilon_high",
    "optim", "learning_rate", "bf16", "fp16", "gradient_checkpointing", "temperature",
)
SUMMARY_KEYS = (
    "peak_memory_gb", "plan_estimate_gb", "plan_error_percent", "step_seconds", "update_seconds",
    "trained_tokens_per_second", "generated_tokens_per_second",
)


def bench_config(key: str, folder: Path, args, memory: DeviceMemory, load_config):
    """The shipped config with the bench's overrides, loaded as `train` loads it."""
    shipped = load_config(MODELS[key])
    g = shipped.grpo
    overrides = [
        f"model.name_or_path={folder}",
        f"grpo.gradient_accumulation_steps={g.num_generations // g.per_device_train_batch_size}",  # one group a step
    ]
    if args.rehearse:
        overrides += [
            "model.backend=hf", "model.load_in_4bit=false", "model.dtype=float32", "model.fast_inference=false",
            f"grpo.max_completion_length={REHEARSAL_COMPLETION_TOKENS}",
        ]
    elif args.fast_inference:  # the config's share of the emulated card, not of the whole GPU
        share = shipped.model.gpu_memory_utilization * args.emulate_gib / memory.total_gib
        overrides += ["model.backend=unsloth", "model.fast_inference=true", f"model.gpu_memory_utilization={share:.4f}"]
    else:
        overrides += ["model.backend=unsloth", "model.fast_inference=false"]
    output_dir = tempfile.mkdtemp(prefix=f"bench-gpu-{key}-")
    return load_config(MODELS[key], overrides, output_dir=output_dir), overrides


def build_trainer(cfg, runtime, model, tokenizer, peft_config, grpo_arguments):
    """TRL's GRPOTrainer as `train` builds it; its reward is never called (no rollouts are sampled through it)."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from lowrank_rlvr.data import build_train_rows

    def accuracy(prompts, completions, **_):
        return [0.0] * len(completions)

    rows = build_train_rows(runtime.examples, cfg.data.template, cfg.data.repeat, tokenizer)
    return GRPOTrainer(
        model=model,
        peft_config=peft_config,
        processing_class=tokenizer,
        reward_funcs=[accuracy],
        args=grpo_arguments(cfg, runtime.backend, runtime.on_cuda, runtime.dtype),
        train_dataset=Dataset.from_list(rows),
    )


class SyntheticRollouts:
    """One group of worst-case rollouts in the layout TRL 1.14.2's `_generate_and_score_completions` returns
    (grpo_trainer.py:2964-2979): every completion runs to `max_completion_length`, none ends early."""

    def __init__(self, cfg, prompt_tokens: int, first_special: int, vocab_size: int, trainer):
        import torch

        g = cfg.grpo
        self.trainer = trainer
        self.device = trainer.accelerator.device
        self.per_device = g.per_device_train_batch_size
        self.micro_batches = g.gradient_accumulation_steps
        self.prompt_tokens, self.completion_tokens = prompt_tokens, g.max_completion_length
        self.first_special = first_special  # ids below it are ordinary tokens
        self.uniform_logp = -math.log(vocab_size)  # a random model's log-prob of any token
        self.generator = torch.Generator().manual_seed(0)
        self.max_grad_norm = g.max_grad_norm
        self.lora_before = self._lora_b()

    def micro_batch(self) -> dict:
        import torch

        n, p, c = self.per_device, self.prompt_tokens, self.completion_tokens
        ids = lambda length: torch.randint(0, self.first_special, (n, length), generator=self.generator)  # noqa: E731
        batch = {
            "prompt_ids": ids(p),
            "prompt_mask": torch.ones(n, p, dtype=torch.long),
            "completion_ids": ids(c),
            "completion_mask": torch.ones(n, c, dtype=torch.int),
            "advantages": torch.randn(n, generator=self.generator),
            # TRL: the completion tokens of the whole generation batch (all micro-batches), gathered over processes
            "num_items_in_batch": torch.tensor(n * c * self.micro_batches),
            "ref_per_token_logps": torch.full((n, c), self.uniform_logp),
        }
        if self.trainer.args.use_vllm:  # vLLM sampling: old log-probs and TRL's importance-sampling ratio
            batch["old_per_token_logps"] = torch.full((n, c), self.uniform_logp)
            batch["sampling_per_token_logps"] = torch.full((n, c), self.uniform_logp)
            batch["importance_sampling_ratio"] = torch.ones(n, c)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _lora_b(self) -> list:
        return [p.detach().clone() for name, p in self.trainer.model.named_parameters() if "lora_B" in name][:4]

    def adapter_changed(self) -> bool:
        return any(bool((a != b).any()) for a, b in zip(self.lora_before, self._lora_b()))


def run_steps(trainer, rollouts: SyntheticRollouts, count: int, budget: Budget, key: str) -> list[dict]:
    """`count` optimizer steps, each: reference scoring, then compute_loss + backward per micro-batch, clip, AdamW."""
    import torch

    model = trainer.model
    optimizer = trainer.create_optimizer()
    # transformers 5.17 Trainer sets this inside its training loop (trainer.py:1813); TRL's and Unsloth's losses
    # divide by it.
    trainer.current_gradient_accumulation_steps = rollouts.micro_batches
    params = [p for p in model.parameters() if p.requires_grad]
    steps = []
    for step in range(count):
        if steps and budget.remaining() < 2 * steps[-1]["seconds"] + GENERATION_RESERVE_SECONDS:
            print(f"   time budget: stopping after {len(steps)} steps", flush=True)
            break
        batches = [rollouts.micro_batch() for _ in range(rollouts.micro_batches)]
        model.train()
        synchronize()
        t0 = time.perf_counter()
        with torch.no_grad(), model.disable_adapter():  # TRL's KL reference: the base with the adapter off
            for batch in batches:
                input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
                mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
                # private to TRL 1.14.2 (grpo_trainer.py:1380), replaced by Unsloth 2026.10.9 (rl_replacements.py:3420)
                trainer._get_per_token_logps_and_entropies(
                    model, input_ids, mask, rollouts.completion_tokens, batch_size=rollouts.per_device
                )
        synchronize()
        t1 = time.perf_counter()
        losses = []
        for batch in batches:
            with trainer.compute_loss_context_manager():
                loss = trainer.compute_loss(model, batch)
            trainer.accelerator.backward(loss)
            losses.append(float(loss.detach()))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, rollouts.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        t2 = time.perf_counter()
        steps.append({
            "step": step + 1, "scoring_seconds": round(t1 - t0, 4), "update_seconds": round(t2 - t1, 4),
            "seconds": round(t2 - t0, 4), "losses": losses, "grad_norm": grad_norm,
        })
        print(f"   {key} step {step + 1}: scoring {t1 - t0:.2f} s, update {t2 - t1:.2f} s, loss {losses}", flush=True)
    return steps


def run_generate(trainer, rollouts: SyntheticRollouts, args, budget: Budget) -> dict:
    """One group through `generate` with TRL's generation config, every sequence forced to `generate_tokens`."""
    import torch

    from transformers import GenerationConfig

    model = trainer.model
    built = getattr(trainer, "generation_config", None)  # TRL 1.14.2's GRPOTrainer builds it (grpo_trainer.py:1130)
    a = trainer.args
    config = copy.deepcopy(built) if built is not None else GenerationConfig(
        do_sample=True, temperature=a.temperature, top_p=a.top_p, pad_token_id=trainer.processing_class.pad_token_id
    )
    new_tokens = min(args.generate_tokens, rollouts.completion_tokens)
    config.max_new_tokens = config.min_new_tokens = new_tokens
    config.max_time = max(5.0, min(args.generate_max_seconds, budget.remaining() - 10))
    n = trainer.args.num_generations
    prompt = torch.randint(0, rollouts.first_special, (1, rollouts.prompt_tokens), generator=rollouts.generator)
    input_ids = prompt.repeat(n, 1).to(rollouts.device)  # one group: the same prompt 8 times, as TRL samples it
    synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
    synchronize()
    seconds = time.perf_counter() - t0
    generated = n * (output.shape[1] - input_ids.shape[1])
    return {
        "generation_seconds": round(seconds, 3),
        "generation_sequences": n,
        "generation_new_tokens_asked": new_tokens,
        "generated_tokens": int(generated),
        "generated_tokens_per_second": round(generated / seconds, 1),
        "generation_max_time": config.max_time,
        "generation_config": "TRL's" if built is not None else "fallback (TRL built none)",
    }


# ---- Random weights and a tokenizer of the right size. -----------------------------------------------------------


def rehearsal_shape():
    from lowrank_rlvr.plan import ModelShape

    return ModelShape(
        "rehearsal tiny Qwen2", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
        intermediate_size=128, vocab_size=512, tied_embeddings=False, qkv_bias=True,
    )


def write_random_model(folder: Path, shape, tokenizer_spec: dict, on_cuda: bool) -> None:
    """config.json, random 16-bit (rehearsal: 32-bit) safetensors weights and the tokenizer, into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    shutil.rmtree(folder, ignore_errors=True)
    eos = tokenizer_spec["<|endoftext|>"]
    config = Qwen2Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        tie_word_embeddings=shape.tied_embeddings,
        bos_token_id=eos,
        eos_token_id=eos,
        **QWEN2_MATH_CONFIG,
    )
    assert config.hidden_size // config.num_attention_heads == shape.head_dim
    torch.manual_seed(0)
    dtype = torch.bfloat16 if on_cuda else torch.float32
    with torch.device("cuda" if on_cuda else "cpu"):  # the 7B's random init takes seconds on a GPU, minutes on CPU
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(folder)
    del model
    if on_cuda:
        torch.cuda.empty_cache()
    write_tokenizer(folder, tokenizer_spec)


def write_tokenizer(folder: Path, spec: dict) -> None:
    """A word-level tokenizer with `spec['size']` tokens, the ChatML special tokens at their ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {spec[name]: name for name in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    vocab = {specials.get(i, f"t{i}"): i for i in range(spec["size"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    assert len(fast) == spec["size"], len(fast)
    fast.save_pretrained(folder)


def scratch_dir() -> Path:
    """/dev/shm when it holds a 7B's 16-bit weights (15 GiB) with room to spare, else the temp folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 20 * 2**30:
        return Path(tempfile.mkdtemp(prefix="bench-gpu-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="bench-gpu-"))


# ---- Memory, time, results. --------------------------------------------------------------------------------------


class DeviceMemory:
    """Memory in use as the driver sees it (NVML's device figure, else cudaMemGetInfo; the lent machine runs only
    this process), sampled in a thread; on CPU (rehearsal) the process's resident set instead."""

    def __init__(self, on_cuda: bool):
        self.on_cuda = on_cuda
        self.source = "process RSS (/proc/self/statm)"
        self.total_gib = 0.0
        self.non_torch_start = 0.0
        self.fraction = 1.0
        if on_cuda:
            import torch

            torch.cuda.init()
            torch.ones(1, device="cuda") @ torch.ones(1, device="cuda")  # context and cuBLAS handle exist now
            self.source = "torch.cuda.mem_get_info (cudaMemGetInfo)"
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml.nvmlDeviceGetHandleByIndex(0)
                pynvml.nvmlDeviceGetMemoryInfo(self.nvml)
                self.source = "NVML nvmlDeviceGetMemoryInfo().used"
            except Exception:
                self.nvml = None
            self.total_gib = torch.cuda.mem_get_info()[1] / 2**30
        self._max = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def used(self) -> float:
        if not self.on_cuda:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        if self.nvml is not None:
            import pynvml

            return float(pynvml.nvmlDeviceGetMemoryInfo(self.nvml).used)
        import torch

        free, total = torch.cuda.mem_get_info()
        return float(total - free)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self._max = max(self._max, self.used())
            except Exception:
                pass
            time.sleep(SAMPLE_SECONDS)

    def emulate(self, gib: float) -> dict:
        """Cap torch's allocator so that torch + what is outside it stays within `gib`."""
        import torch

        self.non_torch_start = self.used() - torch.cuda.memory_reserved()
        fraction = (gib * 2**30 - self.non_torch_start) / (self.total_gib * 2**30)
        torch.cuda.set_per_process_memory_fraction(fraction, 0)
        self.fraction = fraction
        return {
            "emulated_gpu_gib": gib,
            "gpu_total_gib": round(self.total_gib, 3),
            "non_torch_gib_at_start": round(self.non_torch_start / 2**30, 3),
            "torch_memory_fraction": round(fraction, 5),
        }

    @contextlib.contextmanager
    def uncapped(self):
        """The whole GPU for a while (the emulation's cap back on after, with the cache emptied)."""
        import torch

        if not self.on_cuda:
            yield
            return
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        try:
            yield
        finally:
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(self.fraction, 0)

    def start_phase(self) -> None:
        self._max = self.used()
        if self.on_cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def snapshot(self) -> dict:
        out = {"used_gb": round(self.used() / 2**30, 3)}
        if self.on_cuda:
            import torch

            out["torch_allocated_gb"] = round(torch.cuda.memory_allocated() / 2**30, 3)
            out["torch_reserved_gb"] = round(torch.cuda.memory_reserved() / 2**30, 3)
        return out

    def peak(self, prefix: str) -> dict:
        """Peak since the last call (or `start_phase`): max(sampled driver figure, torch's exact reserved peak +
        the non-torch memory now), then a new phase begins."""
        now = self.used()
        sampled = max(self._max, now)
        out = {f"{prefix}driver_peak_sampled_gb": round(sampled / 2**30, 3), "memory_source": self.source}
        peak = sampled
        if self.on_cuda:
            import torch

            reserved_peak = torch.cuda.max_memory_reserved()
            non_torch = now - torch.cuda.memory_reserved()
            peak = max(sampled, reserved_peak + non_torch)
            out[f"{prefix}torch_peak_reserved_gb"] = round(reserved_peak / 2**30, 3)
            out[f"{prefix}torch_peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            out[f"{prefix}non_torch_gb"] = round(non_torch / 2**30, 3)
        out[f"{prefix}peak_memory_gb"] = round(peak / 2**30, 3)
        self.start_phase()
        return out


class Budget:
    def __init__(self, started: float, seconds: float | None):
        self.started, self.seconds = started, seconds

    def remaining(self) -> float:
        return math.inf if self.seconds is None else self.seconds - (time.monotonic() - self.started)


class Results:
    """The JSON file, rewritten whole (beside it, then renamed) after every change."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data
        self.save()

    def add(self, record: dict) -> None:
        self.data["runs"].append(record)
        self.save()

    def skip(self, key: str, why: str) -> None:
        print(f"== {key}: skipped: {why}", flush=True)
        self.data["skipped"].append({"model": key, "why": why})
        self.save()

    def finish(self, seconds: float) -> None:
        self.data["finished"], self.data["seconds"] = True, round(seconds, 1)
        self.save()

    def save(self) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        partial.replace(self.path)


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:
        import torch

        found["torch_cuda"] = torch.version.cuda
    except ImportError:
        pass
    return found


def machine_facts(memory: DeviceMemory) -> dict:
    facts = {"platform": platform.platform(), "cpus": os.cpu_count(), "memory_source": memory.source}
    if memory.on_cuda and getattr(memory, "nvml", None) is not None:
        import pynvml

        facts["driver"] = pynvml.nvmlSystemGetDriverVersion()
    if memory.on_cuda:
        facts["gpu_total_gib"] = round(memory.total_gib, 3)
    return facts


if __name__ == "__main__":
    sys.exit(main())
