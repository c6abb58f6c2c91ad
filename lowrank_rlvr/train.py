"""The one-shot RLVR recipe, straight-line: config -> example(s) -> policy -> TRL GRPOTrainer -> adapter.

The paper (Wang et al. 2025, arXiv 2504.20571, trained with verl): GRPO on one example repeated to fill the batch,
128 prompts x 8 rollouts per step, KL 0.001 (k3, in the loss), entropy bonus 0.001, temperature 0.6, up to 3,072
response tokens, token-level loss averaging, full fine-tuning at lr 1e-6 on 8 GPUs.

Where this recipe departs from it:
- A LoRA adapter on a frozen (4-bit on GPU) base instead of full fine-tuning; the learning rate is ~10x the full
  fine-tune's (1e-5), as LoRA-for-RL results recommend. The KL reference is the base with the adapter switched off.
- The shipped GPU configs sample 16 prompts x 8 rollouts per optimizer step (not 128 x 8) to fit one GPU; the
  group size (8), temperature, KL, entropy and length settings are the paper's.
- TRL's GRPO, not verl's: `loss_type: dapo` is TRL's token-level mean over the whole batch (verl's token-mean),
  and one policy update per generation batch (verl's PPO mini-batching differs in detail).

Run folder (`cfg.output_dir`): `config.yaml` (resolved), `metrics.jsonl` (one line per logged step),
`history.json` (per-example training accuracy per epoch, the paper's format for `select`), `checkpoint-N/`
(adapter + optimizer + scheduler + RNG + step; marked complete only once fully written), `adapter/` (final),
`report/` (plots of the training dynamics and a one-page HTML; `lowrank-rlvr report` redraws it, e.g. after `eval --run`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from lowrank_rlvr.config import RunConfig, config_from_resolved, write_resolved
from lowrank_rlvr.data import build_train_rows, load_examples
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.model import choose_backend, compute_dtype, cuda_available, load_policy

COMPLETE_MARKER = "checkpoint_complete"
REFLECTION_WORDS = re.compile(r"\b(rethink|recheck|recalculate|wait|verify)\b", re.IGNORECASE)


def run_training(cfg: RunConfig, resume: bool = False) -> Path:
    """Train the adapter; returns the final adapter folder."""
    output_dir = Path(cfg.output_dir)
    examples = load_examples(cfg.data)  # bad data fails here, before any model loads
    backend = choose_backend(cfg.model.backend)
    checkpoint = _checkpoint_to_resume(cfg, output_dir) if resume else _check_fresh(output_dir)
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if rank == 0:  # under accelerate/torchrun only the main process writes to the run folder
        write_resolved(cfg, output_dir)
    print(
        f"process {rank}/{world_size}: backend {backend}, {cfg.generation_batch_size // cfg.grpo.num_generations} "
        f"prompts x {cfg.grpo.num_generations} rollouts per generation batch "
        f"({cfg.grpo.per_device_train_batch_size} per device x {cfg.grpo.gradient_accumulation_steps} accumulation "
        f"x {world_size} processes)",
        flush=True,
    )
    if not cuda_available() and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)  # CPU: more threads than cores per process makes small-model steps 10-50x slower
    if not cuda_available() and world_size > 1:
        # accelerate 1.15 names each CPU rank's device "cpu:0", and transformers 5.17 resumes a multi-process run with
        # torch.load(map_location=args.device), which cannot map to an indexed CPU: a plain "cpu" device resumes.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")

    model, tokenizer, peft_config = load_policy(cfg, backend)  # unsloth (if chosen) is imported here, before trl: it patches trl
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from trl import GRPOTrainer

    from lowrank_rlvr.rewards import Grader

    set_seed(cfg.grpo.seed)  # TRL initialises the LoRA weights before the Trainer seeds anything
    # peft 0.21 says so at every save when lm_head is adapted (it then stores the frozen lm_head beside the adapter)
    warnings.filterwarnings("ignore", message="Setting `save_embedding_layers` to `True`")
    train_dataset = Dataset.from_list(build_train_rows(examples, cfg.data.template, cfg.data.repeat, tokenizer))
    recorder = RunRecorder(output_dir, resumed_step=_step_of(checkpoint), is_main=rank == 0)
    with Grader(cfg.reward.workers, cfg.reward.timeout_seconds, cfg.reward.require_simplified_answer) as grader:
        trainer = GRPOTrainer(
            model=model,
            peft_config=peft_config,
            processing_class=tokenizer,
            reward_funcs=reward_functions(grader, cfg.reward.kind, recorder),
            args=grpo_arguments(cfg, backend),
            train_dataset=train_dataset,
            callbacks=[recorder.callback(cfg.grpo.max_steps)],
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log dict; RunRecorder shows a progress bar instead
        if checkpoint is not None:
            print(f"resuming from {checkpoint.name} (step {_step_of(checkpoint)})")
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    adapter_dir, staging = output_dir / "adapter", output_dir / "adapter.partial"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # on every process: under ZeRO-3 it gathers the sharded weights; rank 0 writes
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        shutil.rmtree(adapter_dir, ignore_errors=True)
        staging.rename(adapter_dir)  # atomic: adapter/ is complete or absent
        print(f"adapter saved to {adapter_dir}")
        from lowrank_rlvr.report import build_report

        report_path, _ = build_report(output_dir)
        print(f"report: {report_path}")
    return adapter_dir


def grpo_arguments(cfg: RunConfig, backend: str) -> Any:
    """TRL's GRPOConfig from ours: same names, plus the device and logging choices this tool makes."""
    import torch
    from trl import GRPOConfig

    g = cfg.grpo
    dtype = compute_dtype(cfg.model.dtype)
    on_cpu = not cuda_available()
    return GRPOConfig(
        output_dir=cfg.output_dir,
        num_generations=g.num_generations,
        per_device_train_batch_size=g.per_device_train_batch_size,
        gradient_accumulation_steps=g.gradient_accumulation_steps,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        entropy_coef=g.entropy_coef,
        epsilon=g.epsilon,
        # Unsloth 2026.10.9's GRPOConfig swaps in DAPO-paper defaults (clip-higher 0.28, masking truncated
        # completions, 8-bit Adam) unless these are given: pin them so both backends run the same recipe.
        epsilon_high=g.epsilon,
        mask_truncated_completions=False,
        optim="adamw_torch",
        vllm_importance_sampling_correction=True,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        learning_rate=g.learning_rate,
        lr_scheduler_type=g.lr_scheduler_type,
        warmup_steps=g.warmup_steps,
        weight_decay=g.weight_decay,
        max_grad_norm=g.max_grad_norm,
        max_steps=g.max_steps,
        save_steps=g.save_steps,
        logging_steps=g.logging_steps,
        seed=g.seed,
        # unsloth samples from its colocated engine (fast_inference); hf uses vLLM only when asked
        use_vllm=backend == "unsloth" or g.use_vllm,
        vllm_mode=g.vllm_mode,
        vllm_server_host=g.vllm_server_host,
        vllm_server_port=g.vllm_server_port,
        vllm_gpu_memory_utilization=cfg.model.gpu_memory_utilization,
        use_cpu=on_cpu,
        bf16=dtype == torch.bfloat16 and not on_cpu,
        fp16=dtype == torch.float16 and not on_cpu,
        gradient_checkpointing=cfg.model.gradient_checkpointing and backend == "hf",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient: skip DDP's search for unused ones
        save_strategy="steps",
        report_to="none",
        disable_tqdm=True,  # RunRecorder draws the progress bar
        log_completions=False,
    )


def reward_functions(grader: Any, kind: str, recorder: RunRecorder) -> list:
    """TRL reward callables. `accuracy` is always computed (it is `train_accuracy`); with kind 'format' it is logged
    with weight 0 beside the format reward, which is what trains."""

    def accuracy(prompts, completions, answer, example_index, completion_ids, log_metric=None, **_):
        results = grader.grade(list(completions), list(answer), kind="accuracy")
        rewards = [r.reward for r in results]
        recorder.record_rollouts(example_index, rewards)
        if log_metric is not None:
            log_metric("reflection_per_1k_tokens", reflection_per_1k_tokens(completions, completion_ids))
            log_metric("grader_timeouts", float(sum(r.timed_out for r in results)))
        return rewards

    def format(prompts, completions, answer, **_):  # noqa: A001 - the name TRL logs
        return [r.reward for r in grader.grade(list(completions), list(answer), kind="format")]

    return [accuracy] if kind == "accuracy" else [format, accuracy]


def reflection_per_1k_tokens(completions: list[str], completion_ids: list[list[int]]) -> float:
    """Self-reflection words the paper tracks ('rethink', 'recheck', 'recalculate', 'wait', 'verify') per 1k tokens."""
    words = sum(len(REFLECTION_WORDS.findall(text)) for text in completions)
    tokens = sum(len(ids) for ids in completion_ids)
    return 1000.0 * words / max(tokens, 1)


class RunRecorder:
    """Writes metrics.jsonl and history.json as training goes, marks checkpoints complete, draws the progress bar.

    Only the main process writes. Per-example accuracies are gathered from all processes at each epoch's end.
    """

    def __init__(self, output_dir: Path, resumed_step: int | None, is_main: bool):
        self.output_dir = output_dir
        self.metrics_path = output_dir / "metrics.jsonl"
        self.history_path = output_dir / "history.json"
        self.started = time.monotonic()
        self.epoch_correct: dict[int, list[float]] = defaultdict(list)
        self.history: dict[str, list[float]] = {}
        if not is_main:
            return
        if resumed_step is not None:
            self._truncate_to(resumed_step)
        else:
            self.metrics_path.unlink(missing_ok=True)

    def record_rollouts(self, example_indices: list[int], rewards: list[float]) -> None:
        for index, reward in zip(example_indices, rewards):
            self.epoch_correct[int(index)].append(reward)

    def callback(self, max_steps: int) -> Any:
        from transformers import TrainerCallback

        recorder = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    recorder._start_progress(max_steps, state.global_step)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs and "reward" in logs:
                    recorder._write_metrics(state.global_step, logs)

            def on_save(self, args, state, control, **kwargs):
                if _distributed():  # every process writes its own rng_state_<rank>.pth: wait for all of them
                    import torch.distributed

                    torch.distributed.barrier()
                if state.is_world_process_zero:  # the Trainer has written every file of the checkpoint by now
                    folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                    (folder / COMPLETE_MARKER).write_text(json.dumps({"step": state.global_step}))

            def on_epoch_end(self, args, state, control, **kwargs):
                recorder._close_epoch(state.is_world_process_zero)

            def on_train_end(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    recorder._stop_progress()

        return _Callback()

    # -- progress bar --------------------------------------------------------------------------------------------
    def _start_progress(self, max_steps: int, step: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]GRPO"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        )
        self.task = self.progress.add_task("train", total=max_steps, completed=step, status="")
        self.progress.start()

    def _stop_progress(self) -> None:
        if getattr(self, "progress", None):
            self.progress.stop()

    # -- files ---------------------------------------------------------------------------------------------------
    def _write_metrics(self, step: int, logs: dict) -> None:
        record = {
            "step": step,
            "reward_mean": logs.get("reward"),
            "reward_std": logs.get("reward_std"),
            "train_accuracy": logs.get("rewards/accuracy/mean"),
            "entropy": logs.get("entropy"),
            "completion_length": logs.get("completions/mean_length"),
            "kl": logs.get("kl", 0.0),
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "reflection_per_1k_tokens": logs.get("reflection_per_1k_tokens"),
            "grader_timeouts": logs.get("grader_timeouts"),
            "seconds": round(time.monotonic() - self.started, 3),
        }
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if getattr(self, "progress", None):
            status = f"acc {record['train_accuracy']:.2f}  reward {record['reward_mean']:.2f}"
            self.progress.update(self.task, completed=step, status=status)

    def _close_epoch(self, is_main: bool) -> None:
        from accelerate.utils import gather_object

        local = [(index, sum(values), len(values)) for index, values in self.epoch_correct.items()]
        self.epoch_correct.clear()
        totals: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
        for index, correct, count in gather_object(local) if _distributed() else local:
            totals[index][0] += correct
            totals[index][1] += count
        if not is_main:
            return
        for index, (correct, count) in sorted(totals.items()):
            self.history.setdefault(str(index), []).append(correct / count)
        _atomic_write(self.history_path, json.dumps(self.history, indent=1))

    def _truncate_to(self, step: int) -> None:
        """After a resume, forget what was logged past the checkpoint (it is trained again)."""
        if self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines() if json.loads(line)["step"] <= step]
            _atomic_write(self.metrics_path, "".join(line + "\n" for line in kept))
        if self.history_path.exists():
            self.history = json.loads(self.history_path.read_text())


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _atomic_write(path: Path, text: str) -> None:
    staging = path.with_suffix(path.suffix + ".partial")
    staging.write_text(text)
    staging.replace(path)


def _step_of(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.split("-")[1]) if checkpoint else None


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N folders that were fully written, oldest first."""
    found = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit() and (p / COMPLETE_MARKER).exists()]
    return sorted(found, key=_step_of)


def _check_fresh(output_dir: Path) -> None:
    if any(output_dir.glob("checkpoint-*")) or (output_dir / "adapter").exists():
        raise UserError(f"{output_dir} already holds a run: pass --resume to continue it, or another --output-dir")
    return None


def _checkpoint_to_resume(cfg: RunConfig, output_dir: Path) -> Path:
    checkpoints = complete_checkpoints(output_dir)
    if not checkpoints:
        raise UserError(f"--resume: no complete checkpoint in {output_dir} (start without --resume)")
    saved_path = output_dir / "config.yaml"
    if saved_path.exists():
        saved = config_from_resolved(saved_path).model_dump(mode="json")
        current = cfg.model_dump(mode="json")
        for section in ("model", "lora", "data", "reward"):
            if saved[section] != current[section]:
                raise UserError(f"--resume: '{section}' settings differ from the run's config.yaml in {output_dir}")
    return checkpoints[-1]
