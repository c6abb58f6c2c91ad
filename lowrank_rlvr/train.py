"""The one-shot RLVR recipe, straight-line: setup -> train (TRL GRPOTrainer) -> save the adapter -> report.

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

What is written where is `lowrank_rlvr.runs` (the run folder). Only the main process writes it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from lowrank_rlvr.adapters import ADAPTER_FILES
from lowrank_rlvr.collapse import collapse_warnings
from lowrank_rlvr.config import REWARD_TERMS, RunConfig, duration_seconds, load_config
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import check_checkpoint, check_model, writable_dir
from lowrank_rlvr.interrupt import GracefulStop, Stopped
from lowrank_rlvr.model import load_policy
from lowrank_rlvr.parity import ParityWarning, limit_exceeded, parity_warnings, sampling_values
from lowrank_rlvr.rewards import reflection_per_1k_tokens
from lowrank_rlvr.runs import Checkpoint, RunFolder
from lowrank_rlvr.runtime import Launch, Runtime, launch_from_environment, training_runtime
from lowrank_rlvr.tracking import prepare_tracking

# TRL 1.14.2 logs `entropy` from its own loss only (grpo_trainer.py:3341, in `_compute_loss`); Unsloth 2026.10.9
# replaces that loss (unsloth/models/rl_replacements.py:4760-5184: it logs completion_length, kl, sampling/*,
# clip_ratio/*) and applies the entropy bonus without logging the entropy (unsloth_zoo rl_replacements.py:3849-3860).
ENTROPY_NOT_MEASURED = (
    "note: entropy is not measured on this backend: the trainer logs none (Unsloth's GRPO loss does not report it; "
    "grpo.entropy_coef still applies), so metrics.jsonl records entropy null and the entropy-collapse check is off"
)


def train_command(config: str | None, overrides: list[str], output_dir: str | None, resume: bool) -> Path:
    """`lowrank-rlvr train`: the config checked for this launch (before any model loads), then the run."""
    launch = launch_from_environment()
    cfg = load_config(config, overrides, output_dir=output_dir, world_size=launch.world_size)
    words = ["lowrank-rlvr", "train", *([config] if config else []), "--output-dir", cfg.output_dir]
    resume_command = shlex.join([*words, *(w for o in overrides for w in ("--set", o)), "--resume"])
    try:
        return run_training(cfg, launch, resume, resume_command)
    except Stopped as stop:  # a signal or the time budget: a complete checkpoint of the step reached is saved
        if launch.is_main:
            print(stop.message, flush=True)
        raise SystemExit(stop.exit_code) from None


def run_training(cfg: RunConfig, launch: Launch, resume: bool = False, resume_command: str | None = None) -> Path:
    """Train the adapter; returns the final adapter folder. `train` takes the run folder's writer lock (main process)
    before it reads or writes anything there, and holds it to the end."""
    # -- setup: everything that can fail on bad input fails here, before any model loads --------------------------
    run = RunFolder(writable_dir(cfg.output_dir, "run folder (--output-dir)"))
    tracking = prepare_tracking(cfg.grpo.report_to, run)  # a tracker that is not installed fails here
    runtime = training_runtime(cfg, launch)  # and so do bad data and an impossible backend
    check_model(runtime.model_path, "model", shown=cfg.model.name_or_path)  # truncated weights: before loading
    max_time = duration_seconds(cfg.grpo.max_time) if cfg.grpo.max_time is not None else None
    stop = GracefulStop(run, launch, max_time, resume_command or f"lowrank-rlvr train --output-dir {run.path} --resume")
    with run.writer_lock() if launch.is_main else contextlib.nullcontext():  # a second writer stops here, exit 2
        return _train(cfg, launch, resume, run, runtime, tracking, stop)


def _train(
    cfg: RunConfig, launch: Launch, resume: bool, run: RunFolder, runtime: Runtime, tracking: list[str],
    stop: GracefulStop,
) -> Path:
    checkpoint = _starting_point(run, cfg, resume)
    if resume and run.is_finished(cfg.grpo.max_steps):
        print(f"{run.path}: the run already finished ({cfg.grpo.max_steps} steps); nothing to train")
        return _finish(run, launch)
    if checkpoint is not None and checkpoint.step >= cfg.grpo.max_steps:  # killed after its last checkpoint
        print(f"{checkpoint.path.name} is the last step ({cfg.grpo.max_steps}): saving its adapter, no more training")
        if launch.is_main:
            _adapter_from_checkpoint(run, checkpoint)
        return _finish(run, launch)
    if launch.is_main:
        run.write_config(cfg, cfg.launch_summary(launch.world_size))
    _describe(cfg, runtime)
    if launch.is_main and tracking:
        print("\n".join(tracking), flush=True)
    _configure_cpu(runtime)

    model, tokenizer, peft_config = load_policy(cfg, runtime)  # unsloth (if chosen): imported by training_runtime
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from trl import GRPOTrainer

    from lowrank_rlvr.data import build_train_rows
    from lowrank_rlvr.grading import Grader

    set_seed(cfg.grpo.seed)  # TRL initialises the LoRA weights before the Trainer seeds anything
    # peft 0.21 says so at every save when lm_head is adapted (it then stores the frozen lm_head beside the adapter)
    warnings.filterwarnings("ignore", message="Setting `save_embedding_layers` to `True`")
    train_dataset = Dataset.from_list(build_train_rows(runtime.examples, cfg.data.template, cfg.data.repeat, tokenizer))
    recorder = RunRecorder(
        run, launch, resumed_step=checkpoint.step if checkpoint else None,
        sampling_limit=cfg.grpo.max_sampling_logp_difference, rollouts_every=cfg.grpo.log_rollouts_steps,
        group_size=cfg.grpo.num_generations, reward_weights=reward_weights(cfg.reward.kind),
    )
    if runtime.backend == "unsloth":  # known before the first step: say it once, at the start
        recorder.say_entropy_not_measured()

    # -- train ------------------------------------------------------------------------------------------------------
    with Grader(cfg.reward.workers, cfg.reward.timeout_seconds, cfg.reward.require_simplified_answer) as grader:
        trainer = GRPOTrainer(
            model=model,
            peft_config=peft_config,
            processing_class=tokenizer,
            reward_funcs=reward_functions(
                grader, cfg.reward.kind, recorder, cfg.reward.random_probability, cfg.grpo.seed, launch.rank
            ),
            args=grpo_arguments(cfg, runtime.backend, runtime.on_cuda, runtime.dtype),
            train_dataset=train_dataset,
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log dict; RunRecorder shows a progress bar instead
        if getattr(trainer, "use_vllm", False):
            from lowrank_rlvr.trl_hooks import reload_colocated_weights_layerwise

            reload_colocated_weights_layerwise(trainer)  # vLLM's CPU backend: see trl_hooks
        recorder.install(trainer)
        trainer.add_callback(stop.callback())  # last: it sees the Trainer's own decision to save at this step
        if checkpoint is not None:
            print(f"resuming from {checkpoint.path.name} (step {checkpoint.step})")
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint.path) if checkpoint else None)
        except Exception as exc:  # a save that failed part way: one line naming it and the last complete checkpoint
            failure = stop.failed_save(exc)
            if failure is None:
                raise
            raise failure from None
    if recorder.stopped is not None:  # past grpo.max_sampling_logp_difference: the report shows why; no adapter
        _finish(run, launch)
        raise UserError(recorder.stopped)
    stop.raise_if_stopped()  # stopped by a signal or the time budget, after saving the step reached

    # -- save -------------------------------------------------------------------------------------------------------
    staging = run.staging_adapter_dir()
    if launch.is_main:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    stop.saving = str(staging)
    try:
        trainer.save_model(str(staging))  # on every process: under ZeRO-3 it gathers the sharded weights; rank 0 writes
    except Exception as exc:
        raise stop.failed_save(exc) from None
    trainer.accelerator.wait_for_everyone()
    if launch.is_main:
        print(f"adapter saved to {run.publish_adapter()}")
    # -- report -----------------------------------------------------------------------------------------------------
    return _finish(run, launch)


def grpo_arguments(cfg: RunConfig, backend: str, on_cuda: bool, dtype: Any) -> Any:
    """TRL's GRPOConfig from ours: same names, plus the device and logging choices this tool makes."""
    import torch
    from trl import GRPOConfig

    g = cfg.grpo
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
        # Importance weights for the sampler/trainer mismatch, per token, truncated from above at 3 (TIS). Not TRL
        # 1.14.2's default mode "sequence_mask" (grpo_config.py:930): it weights a whole rollout by exp of the SUM of
        # its per-token log-prob differences (grpo_trainer.py:2729-2736) and zeroes it above the cap (2760-2765), so
        # a 3,072-token rollout whose small per-token mismatches (4-bit kernels vs the trainer's) add up past log 3
        # drops out of the loss without a word. Unsloth 2026.10.9 turns TRL's off (unsloth rl_replacements.py:2448)
        # and computes the same modes the same way in its loss, reading mode and cap from this config (unsloth_zoo
        # 2026.10.9 rl_replacements.py:1030-1043, 2721, 2742; env UNSLOTH_GRPO_VLLM_IS_MODE would override it).
        vllm_importance_sampling_correction=True,
        vllm_importance_sampling_mode="token_truncate",
        vllm_importance_sampling_clip_max=3.0,  # TRL 1.14.2's cap (its default), per token here
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        reward_weights=reward_weights(cfg.reward.kind),
        learning_rate=g.learning_rate,
        lr_scheduler_type=g.lr_scheduler_type,
        warmup_steps=g.warmup_steps,
        weight_decay=g.weight_decay,
        max_grad_norm=g.max_grad_norm,
        adam_epsilon=g.adam_epsilon,
        max_steps=g.max_steps,
        save_steps=g.save_steps,
        logging_steps=g.logging_steps,
        seed=g.seed,
        # unsloth samples from its colocated engine unless model.fast_inference is off; hf uses vLLM only when asked
        use_vllm=cfg.model.fast_inference if backend == "unsloth" else g.use_vllm,
        vllm_mode=g.vllm_mode,
        vllm_server_host=g.vllm_server_host,
        vllm_server_port=g.vllm_server_port,
        vllm_gpu_memory_utilization=cfg.model.gpu_memory_utilization,
        use_cpu=not on_cuda,
        bf16=dtype == torch.bfloat16 and on_cuda,
        fp16=dtype == torch.float16 and on_cuda,
        gradient_checkpointing=cfg.model.gradient_checkpointing and backend == "hf",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient: skip DDP's search for unused ones
        save_strategy="steps",
        report_to=g.report_to,  # TRL's loggers get our log_metric values too: see lowrank_rlvr/tracking.py
        run_name=g.run_name or Path(cfg.output_dir).name,
        disable_tqdm=True,  # RunRecorder draws the progress bar
        log_completions=False,
    )


# Why 'zero' (and the paper's entropy-only ablation) still trains, read in TRL 1.14.2's `GRPOTrainer._compute_loss`
# (trl/trainer/grpo_trainer.py): with every advantage 0 the policy term `per_token_loss = -torch.min(per_token_loss1,
# per_token_loss2)` (line 3191, both `coef * advantages`) is 0, but `per_token_loss = per_token_loss + self.beta *
# per_token_kl` (line 3221) and `loss = loss - apply_coef * entropy_loss` (line 3282, enabled by
# `self._entropy_bonus_enabled = self.entropy_coef != 0.0 ...`, line 849) are added whatever the advantages are, and
# nothing skips a step whose rewards all tie. So the adapter moves through the entropy bonus and the KL term only.
# The KL term's gradient is 0 while the policy equals the reference (LoRA starts as a no-op), so with beta alone
# nothing moves either. tests/test_controls.py checks both on the tiny model.


def reward_functions(
    grader: Any, kind: str, recorder: RunRecorder, random_probability: float = 0.5, seed: int = 0, rank: int = 0
) -> list:
    """TRL reward callables for `kind`, in the order of `REWARD_TERMS[kind]` (their weights: `reward_weights`)."""

    def accuracy(prompts, completions, answer, example_index, completion_ids, log_metric=None, **_):
        results = grader.grade(list(completions), list(answer), kind="accuracy")
        rewards = [r.reward for r in results]
        recorder.record_rollouts(example_index, rewards)
        recorder.note_rewards("accuracy", prompts, completions, answer, completion_ids, rewards)
        if log_metric is not None:
            log_metric("reflection_per_1k_tokens", reflection_per_1k_tokens(completions, [len(c) for c in completion_ids]))
            log_metric("grader_timeouts", float(sum(r.timed_out for r in results)))
        return rewards

    def format(prompts, completions, answer, completion_ids, **_):  # noqa: A001 - the name TRL logs
        rewards = [r.reward for r in grader.grade(list(completions), list(answer), kind="format")]
        recorder.note_rewards("format", prompts, completions, answer, completion_ids, rewards)
        return rewards

    random_draws = RandomReward(random_probability, seed, rank)

    def random(prompts, completions, trainer_state=None, **_):  # noqa: A001 - the name TRL logs
        return random_draws(len(completions), trainer_state.global_step if trainer_state is not None else 0)

    functions = {"accuracy": accuracy, "format": format, "random": random}
    return [functions[name] for name, _ in REWARD_TERMS[kind]]


def reward_weights(kind: str) -> list[float]:
    """What TRL sums into the trained reward, one weight per `reward_functions(kind)` entry."""
    return [weight for _, weight in REWARD_TERMS[kind]]


class RandomReward:
    """reward.kind 'random' (Shao et al. 2025, arXiv 2506.10947): 1 with probability `probability`, else 0, never
    looking at the text. The draws of a call are seeded by (seed, step, process rank, call within the step), so a run
    repeats exactly, and so does a resumed one from its checkpoint on.

    Example:
        >>> draws = RandomReward(0.5, seed=42)
        >>> draws(4, step=0) == RandomReward(0.5, seed=42)(4, step=0)
        True
    """

    def __init__(self, probability: float, seed: int, rank: int = 0):
        self.probability, self.seed, self.rank = probability, seed, rank
        self.calls: dict[int, int] = defaultdict(int)

    def __call__(self, count: int, step: int) -> list[float]:
        import random

        call = self.calls[step]
        self.calls[step] += 1
        draws = random.Random(f"random-reward:{self.seed}:{step}:{self.rank}:{call}")  # str seeds hash stably (sha512)
        return [1.0 if draws.random() < self.probability else 0.0 for _ in range(count)]


class RunRecorder:
    """Writes metrics.jsonl, history.json and rollouts.jsonl as training goes, marks checkpoints complete, draws the
    progress bar, warns (one line, recorded in the step's `warnings`) when training collapses (`lowrank_rlvr.collapse`)
    or the sampler drifts from the trained policy (`lowrank_rlvr.parity`), and stops training past
    `grpo.max_sampling_logp_difference`.

    Only the main process writes. Per-example accuracies are gathered from all processes at each epoch's end.
    """

    def __init__(
        self, run: RunFolder, launch: Launch, resumed_step: int | None, sampling_limit: float | None = None,
        rollouts_every: int = 0, group_size: int = 2, reward_weights: list[float] = (1.0,),
    ):
        self.run = run
        self.launch = launch
        self.started = time.monotonic()
        self.epoch_correct: dict[int, list[float]] = defaultdict(list)
        self.history: dict[str, list[float]] = {}
        self.rows: list[dict] = []  # metrics.jsonl so far: what the collapse and parity detectors read
        self.entropy_note_said = False
        self.sampling_limit = sampling_limit
        self.rollouts_every, self.group_size, self.reward_weights = rollouts_every, group_size, list(reward_weights)
        self.batch: dict[str, Any] = {}  # this generation batch as the reward functions saw it
        self.stopped: str | None = None  # the error that ends training (past the sampling limit)
        if launch.is_main:
            run.keep_metrics_through(resumed_step)  # steps after the checkpoint are trained (and logged) again
            run.keep_rollouts_through(resumed_step)
            self.history = run.read_history() if resumed_step is not None else {}
            self.rows = run.read_metrics()

    def say_entropy_not_measured(self) -> None:
        """One line, once per run, on the main process: the trainer logs no entropy (see ENTROPY_NOT_MEASURED)."""
        if self.launch.is_main and not self.entropy_note_said:
            self.entropy_note_said = True
            self._say(ENTROPY_NOT_MEASURED)

    def record_rollouts(self, example_indices: list[int], rewards: list[float]) -> None:
        for index, reward in zip(example_indices, rewards):
            self.epoch_correct[int(index)].append(reward)

    def note_rewards(self, name: str, prompts, completions, answers, completion_ids, rewards: list[float]) -> None:
        """One reward function's view of the generation batch (the texts, and its rewards) for rollouts.jsonl."""
        if name not in self.batch.setdefault("rewards", {}):  # the texts are the same for every function
            self.batch.update(prompts=list(prompts), completions=list(completions), answers=list(answers),
                              lengths=[len(ids) for ids in completion_ids])
        self.batch["rewards"][name] = list(rewards)

    def install(self, trainer: Any) -> None:
        """Our callback goes first: its additions to a step's logs (collapse warnings) reach the trackers after it."""
        trainer.callback_handler.callbacks.insert(0, self.callback(trainer.args.max_steps))
        if self.launch.is_main and self.rollouts_every:
            from lowrank_rlvr.trl_hooks import capture_generation

            capture_generation(trainer, lambda output: self._keep_rollouts(trainer.state.global_step + 1, output))

    def _keep_rollouts(self, step: int, output: dict) -> None:
        """After a generation batch is scored (for the coming optimizer step): its first group, when due."""
        from lowrank_rlvr.rollouts import due, group_record, per_completion_gap

        batch, self.batch = self.batch, {}
        if not due(step, self.rollouts_every) or not batch.get("rewards"):
            return
        names = [name for name in ("format", "accuracy") if name in batch["rewards"]]  # reward_functions' order
        advantages = output.get("advantages")
        self.run.append_rollouts(group_record(
            step, batch["prompts"], batch["answers"], batch["completions"], batch["lengths"],
            {name: batch["rewards"][name] for name in names}, self.reward_weights[-len(names):],
            None if advantages is None else [float(a) for a in advantages], per_completion_gap(output), self.group_size,
        ))

    def callback(self, max_steps: int) -> Any:
        from transformers import TrainerCallback

        recorder = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    recorder._start_progress(max_steps, state.global_step)

            def on_log(self, args, state, control, logs=None, **kwargs):
                # this callback runs before the trackers' (see `install`): what it adds to `logs` reaches them too
                if state.is_world_process_zero and logs and "reward" in logs:
                    recorder._write_metrics(state.global_step, logs)
                if logs and "reward" in logs:  # every process: the sampling figures are gathered, the same on all
                    recorder._stop_past_sampling_limit(state.global_step, logs, control)

            def on_save(self, args, state, control, **kwargs):
                if recorder.launch.distributed:  # every process writes its own rng_state_<rank>.pth: wait for all
                    import torch.distributed

                    torch.distributed.barrier()
                if state.is_world_process_zero:  # the Trainer has written every file of the checkpoint by now
                    recorder.run.mark_complete(state.global_step)

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

    def _say(self, line: str) -> None:
        """One line above the progress bar (or plain, without one)."""
        if getattr(self, "progress", None):
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, flush=True)

    # -- files ---------------------------------------------------------------------------------------------------
    def _write_metrics(self, step: int, logs: dict) -> None:
        record = {
            "step": step,
            "reward_mean": logs.get("reward"),
            "reward_std": logs.get("reward_std"),
            "train_accuracy": logs.get("rewards/accuracy/mean"),
            "format_reward": logs.get("rewards/format/mean"),  # reward.kind 'format' only
            "entropy": logs.get("entropy"),  # null: not measured (the unsloth backend logs none)
            "completion_length": logs.get("completions/mean_length"),
            "kl": logs.get("kl", 0.0),
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "reflection_per_1k_tokens": logs.get("reflection_per_1k_tokens"),
            "grader_timeouts": logs.get("grader_timeouts"),
            **sampling_values(logs),  # None without a separate sampler (vLLM)
            "warnings": [],
            "seconds": round(time.monotonic() - self.started, 3),
        }
        if record["entropy"] is None:  # whatever the backend: a run never passes a missing entropy off as measured
            self.say_entropy_not_measured()
        warnings_now: list[Any] = [*collapse_warnings(self.rows + [record]), *parity_warnings(self.rows + [record])]
        stop = limit_exceeded(record, self.sampling_limit)
        if stop is not None:  # recorded like a warning, then `_stop_past_sampling_limit` ends training
            warnings_now.append(ParityWarning(step, "sampling_limit", stop))
        record["warnings"] = [{"kind": w.kind, "message": w.message} for w in warnings_now]
        self.rows.append(record)
        self.run.append_metrics(record)
        for warning in warnings_now:
            logs[f"warnings/{warning.kind}"] = 1.0  # into the trackers' stream as well
            if warning.kind != "sampling_limit":  # that one ends the run as its error line
                self._say(f"warning: {warning.message}")
        if getattr(self, "progress", None):
            status = f"acc {record['train_accuracy']:.2f}  reward {record['reward_mean']:.2f}"
            self.progress.update(self.task, completed=step, status=status)

    def _stop_past_sampling_limit(self, step: int, logs: dict, control: Any) -> None:
        """Past the limit the Trainer stops after this step (the trackers still get it), and `run_training` ends
        the run with the error before an adapter is saved."""
        stop = limit_exceeded({"step": step, **sampling_values(logs)}, self.sampling_limit)
        if stop is not None:
            self.stopped = stop
            control.should_training_stop = True

    def _close_epoch(self, is_main: bool) -> None:
        from accelerate.utils import gather_object

        local = [(index, sum(values), len(values)) for index, values in self.epoch_correct.items()]
        self.epoch_correct.clear()
        totals: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
        for index, correct, count in gather_object(local) if self.launch.distributed else local:
            totals[index][0] += correct
            totals[index][1] += count
        if not is_main:
            return
        for index, (correct, count) in sorted(totals.items()):
            self.history.setdefault(str(index), []).append(correct / count)
        self.run.write_history(self.history)


# -- setup helpers -------------------------------------------------------------------------------------------------


def _starting_point(run: RunFolder, cfg: RunConfig, resume: bool) -> Checkpoint | None:
    """The checkpoint to continue from (None: from scratch). Without --resume the folder must hold no run."""
    if not resume:
        if run.holds_training():
            raise UserError(f"{run.path} already holds a run: pass --resume to continue it, or another --output-dir")
        return None
    saved = run.read_config()
    if saved is not None:
        saved, current = saved.model_dump(mode="json"), cfg.model_dump(mode="json")
        for section in ("model", "lora", "data", "reward"):
            if saved[section] != current[section]:
                raise UserError(f"--resume: '{section}' settings differ from the run's config.yaml in {run.path}")
    checkpoints = run.checkpoints()
    if not checkpoints:
        print(f"--resume: no complete checkpoint in {run.path}: training from the start")
        return None
    check_checkpoint(checkpoints[0].path)  # a damaged file says which checkpoint to delete
    return checkpoints[0]


def _adapter_from_checkpoint(run: RunFolder, checkpoint: Checkpoint) -> None:
    """The final adapter is the last checkpoint's (a run killed between its last checkpoint and its final save)."""
    staging = run.staging_adapter_dir()
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ADAPTER_FILES:
        shutil.copy2(checkpoint.path / name, staging / name)
    run.keep_metrics_through(checkpoint.step)
    print(f"adapter saved to {run.publish_adapter()}")


def _finish(run: RunFolder, launch: Launch) -> Path:
    """Draw the report (main process); returns the final adapter folder."""
    if launch.is_main:
        from lowrank_rlvr.report import build_report

        report_path, _ = build_report(run.path)
        print(f"report: {report_path}")
    return run.adapter_dir


def _describe(cfg: RunConfig, runtime: Runtime) -> None:
    launch, g = runtime.launch, cfg.grpo
    batch = cfg.generation_batch_size(launch.world_size)
    print(
        f"process {launch.rank}/{launch.world_size}: backend {runtime.backend}, {batch // g.num_generations} "
        f"prompts x {g.num_generations} rollouts per generation batch ({g.per_device_train_batch_size} per device "
        f"x {g.gradient_accumulation_steps} accumulation x {launch.world_size} processes)\n",
        end="",  # one write with its newline: the ranks share one stdout, and print's separate "\n" interleaved
        flush=True,
    )


def _configure_cpu(runtime: Runtime) -> None:
    if runtime.on_cuda:
        return
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)  # more threads than cores per process makes small-model steps 10-50x slower
    if runtime.launch.distributed:
        # accelerate 1.15 names each CPU rank's device "cpu:0", and transformers 5.17 resumes a multi-process run with
        # torch.load(map_location=args.device), which cannot map to an indexed CPU: a plain "cpu" device resumes.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
