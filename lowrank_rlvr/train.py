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

The recipe, top to bottom: `train_command` (the CLI's entry) -> `run_training`: setup (`training_setup`: everything
that can fail on input fails before any model loads, Unsloth imported first when it is the backend) -> train
(`_train`: TRL's GRPOTrainer built with `grpo_arguments`) -> finish (`_save_adapter`, then `_finish`: the report).
What each backend changes is `lowrank_rlvr.backends`; the rewards are `lowrank_rlvr.reward_funcs`; what training
writes as it goes is `lowrank_rlvr.recorder`; what is written where is `lowrank_rlvr.runs` (the run folder). Only the
main process writes it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowrank_rlvr.adapters import ADAPTER_FILES
from lowrank_rlvr.backends import (
    check_dtype,
    choose_backend,
    import_backend,
    load_policy,
    trainer_logs_entropy,
    trl_settings,
)
from lowrank_rlvr.builtin import resolve_model_path
from lowrank_rlvr.config import RunConfig, duration_seconds, load_config
from lowrank_rlvr.data import build_train_rows, load_examples
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import check_checkpoint, check_model, writable_dir
from lowrank_rlvr.grading import Grader
from lowrank_rlvr.interrupt import GracefulStop, Stopped
from lowrank_rlvr.pretrained import load_tokenizer
from lowrank_rlvr.recorder import RunRecorder
from lowrank_rlvr.reward_funcs import reward_functions, reward_weights
from lowrank_rlvr.runs import Checkpoint, RunFolder
from lowrank_rlvr.runtime import (
    Launch,
    check_cpu_training,
    compute_dtype,
    cuda_available,
    cuda_capability,
    launch_from_environment,
    nvidia_driver,
)
from lowrank_rlvr.templates import render_prompt
from lowrank_rlvr.tracking import prepare_tracking


@dataclass(frozen=True)
class TrainingSetup:
    """What `train` knows before any model loads (`training_setup`): this process, the backend, the data."""

    launch: Launch
    on_cuda: bool
    backend: str  # 'unsloth' or 'hf'
    dtype: Any  # torch.dtype of computation
    model_path: str  # local folder or Hub id (builtin names resolved)
    examples: list  # list[data.Example]: the example set, loaded once
    longest_prompt_tokens: int  # the longest rendered prompt of the example set
    tokenizer: Any  # the model's tokenizer (with a pad token), loaded once: prompts were measured with it


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
    setup = training_setup(cfg, launch)  # and so do bad data and an impossible backend
    check_model(setup.model_path, "model", shown=cfg.model.name_or_path)  # truncated weights: before loading
    max_time = duration_seconds(cfg.grpo.max_time) if cfg.grpo.max_time is not None else None
    stop = GracefulStop(run, launch, max_time, resume_command or f"lowrank-rlvr train --output-dir {run.path} --resume")
    with run.writer_lock() if launch.is_main else contextlib.nullcontext():  # a second writer stops here, exit 2
        checkpoint = _starting_point(run, cfg, resume)
        if _nothing_left_to_train(run, cfg, launch, resume, checkpoint):
            return _finish(run, launch)
        _start_run(cfg, setup, run, tracking)
        # -- train ----------------------------------------------------------------------------------------------
        trainer = _train(cfg, setup, run, checkpoint, stop)
        # -- finish: the adapter, then the report ---------------------------------------------------------------
        _save_adapter(trainer, run, launch, stop)
        return _finish(run, launch)


# -- setup ---------------------------------------------------------------------------------------------------------


def training_setup(cfg: RunConfig, launch: Launch) -> TrainingSetup:
    """Everything `train` needs to know before loading the model; bad data or an impossible backend fail here."""
    examples = load_examples(cfg.data)
    on_cuda = cuda_available()
    backend = choose_backend(cfg.model.backend, on_cuda)
    check_dtype(cfg, backend)  # 'auto' became unsloth; an explicit one: config.py
    if not on_cuda:
        import torch

        check_cpu_training(
            cfg.model.name_or_path, on_cuda, nvidia_driver(), os.environ.get("CUDA_VISIBLE_DEVICES"), torch.version.cuda
        )
    import_backend(backend, cfg.model.vllm_standby)  # before transformers (the tokenizer below) and CUDA
    if on_cuda:  # initialises CUDA: every rank its own GPU before anything is placed on one
        import torch

        torch.cuda.set_device(launch.local_rank)
    capability = cuda_capability() if on_cuda else None  # of this rank's GPU
    model_path = resolve_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(model_path, cfg.model.name_or_path)
    prompts = [render_prompt(example.prompt, cfg.data.template, tokenizer) for example in examples]
    longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in prompts)
    dtype = compute_dtype(cfg.model.dtype, capability)
    return TrainingSetup(launch, on_cuda, backend, dtype, model_path, examples, longest, tokenizer)


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


def _nothing_left_to_train(
    run: RunFolder, cfg: RunConfig, launch: Launch, resume: bool, checkpoint: Checkpoint | None
) -> bool:
    """A finished run, or one killed after its last checkpoint (whose adapter becomes the final one): no training."""
    if resume and run.is_finished(cfg.grpo.max_steps):
        print(f"{run.path}: the run already finished ({cfg.grpo.max_steps} steps); nothing to train")
        return True
    if checkpoint is not None and checkpoint.step >= cfg.grpo.max_steps:  # killed after its last checkpoint
        print(f"{checkpoint.path.name} is the last step ({cfg.grpo.max_steps}): saving its adapter, no more training")
        if launch.is_main:
            _adapter_from_checkpoint(run, checkpoint)
        return True
    return False


def _start_run(cfg: RunConfig, setup: TrainingSetup, run: RunFolder, tracking: list[str]) -> None:
    """Once the run will train: config.yaml written, what trains how said, the CPU's threads set."""
    launch = setup.launch
    if launch.is_main:
        run.write_config(cfg, cfg.launch_summary(launch.world_size))
    _describe(cfg, setup)
    if launch.is_main and tracking:
        print("\n".join(tracking), flush=True)
    _configure_cpu(setup)


def _describe(cfg: RunConfig, setup: TrainingSetup) -> None:
    launch, g = setup.launch, cfg.grpo
    batch = cfg.generation_batch_size(launch.world_size)
    print(
        f"process {launch.rank}/{launch.world_size}: backend {setup.backend}, {batch // g.num_generations} "
        f"prompts x {g.num_generations} rollouts per generation batch ({g.per_device_train_batch_size} per device "
        f"x {g.gradient_accumulation_steps} accumulation x {launch.world_size} processes)\n",
        end="",  # one write with its newline: the ranks share one stdout, and print's separate "\n" interleaved
        flush=True,
    )


def _configure_cpu(setup: TrainingSetup) -> None:
    if setup.on_cuda:
        return
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)  # more threads than cores per process makes small-model steps 10-50x slower
    if setup.launch.distributed:
        # accelerate 1.15 names each CPU rank's device "cpu:0", and transformers 5.17 resumes a multi-process run with
        # torch.load(map_location=args.device), which cannot map to an indexed CPU: a plain "cpu" device resumes.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")


# -- train ---------------------------------------------------------------------------------------------------------


def _train(
    cfg: RunConfig, setup: TrainingSetup, run: RunFolder, checkpoint: Checkpoint | None, stop: GracefulStop
) -> Any:
    """TRL's GRPOTrainer on the policy, from `checkpoint` (None: from the start); returns the trainer once training
    ran to its end. A signal or the time budget raises Stopped (saved); the sampling limit a UserError (no adapter)."""
    model, tokenizer, peft_config = load_policy(
        cfg, setup.backend, setup.model_path, setup.tokenizer, setup.dtype, setup.launch, setup.on_cuda,
        setup.longest_prompt_tokens,
    )
    from transformers import set_seed

    set_seed(cfg.grpo.seed)  # TRL initialises the LoRA weights before the Trainer seeds anything
    # peft 0.21 says so at every save when lm_head is adapted (it then stores the frozen lm_head beside the adapter)
    warnings.filterwarnings("ignore", message="Setting `save_embedding_layers` to `True`")
    recorder = _recorder(cfg, setup, run, checkpoint)
    with Grader(cfg.reward.workers, cfg.reward.timeout_seconds, cfg.reward.require_simplified_answer) as grader:
        trainer = _build_trainer(cfg, setup, model, tokenizer, peft_config, grader, recorder, stop)
        _run_trainer(trainer, checkpoint, stop)
    if recorder.stopped is not None:  # past grpo.max_sampling_logp_difference: the report shows why; no adapter
        _finish(run, setup.launch)
        raise UserError(recorder.stopped)
    stop.raise_if_stopped()  # stopped by a signal or the time budget, after saving the step reached
    return trainer


def _recorder(cfg: RunConfig, setup: TrainingSetup, run: RunFolder, checkpoint: Checkpoint | None) -> RunRecorder:
    recorder = RunRecorder(
        run, setup.launch, resumed_step=checkpoint.step if checkpoint else None,
        sampling_limit=cfg.grpo.max_sampling_logp_difference, rollouts_every=cfg.grpo.log_rollouts_steps,
        group_size=cfg.grpo.num_generations, reward_weights=reward_weights(cfg.reward.kind),
    )
    if not trainer_logs_entropy(setup.backend):  # known before the first step: say it once, at the start
        recorder.say_entropy_not_measured()
    return recorder


def _build_trainer(
    cfg: RunConfig, setup: TrainingSetup, model: Any, tokenizer: Any, peft_config: Any, grader: Grader,
    recorder: RunRecorder, stop: GracefulStop,
) -> Any:
    """TRL's GRPOTrainer with our data, rewards and arguments; the recorder's callback first, the stop's last."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    train_dataset = Dataset.from_list(build_train_rows(setup.examples, cfg.data.template, cfg.data.repeat, tokenizer))
    trainer = GRPOTrainer(
        model=model,
        peft_config=peft_config,
        processing_class=tokenizer,
        reward_funcs=reward_functions(
            grader, cfg.reward.kind, recorder, cfg.reward.random_probability, cfg.grpo.seed, setup.launch.rank
        ),
        args=grpo_arguments(cfg, setup.backend, setup.on_cuda, setup.dtype),
        train_dataset=train_dataset,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; RunRecorder shows a progress bar instead
    if getattr(trainer, "use_vllm", False):
        from lowrank_rlvr.trl_hooks import reload_colocated_weights_layerwise

        reload_colocated_weights_layerwise(trainer)  # vLLM's CPU backend: see trl_hooks
    recorder.install(trainer)
    trainer.add_callback(stop.callback())  # last: it sees the Trainer's own decision to save at this step
    return trainer


def _run_trainer(trainer: Any, checkpoint: Checkpoint | None, stop: GracefulStop) -> None:
    if checkpoint is not None:
        print(f"resuming from {checkpoint.path.name} (step {checkpoint.step})")
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint.path) if checkpoint else None)
    except Exception as exc:  # a save that failed part way: one line naming it and the last complete checkpoint
        failure = stop.failed_save(exc)
        if failure is None:
            raise
        raise failure from None


# GRPOSettings that TRL's GRPOConfig takes under the same name, passed through as they are.
SAME_AS_TRL = (
    "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length",
    "temperature", "top_p", "beta", "entropy_coef", "epsilon", "loss_type", "scale_rewards", "learning_rate",
    "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "adam_epsilon", "max_steps", "save_steps",
    "logging_steps", "seed", "vllm_mode", "vllm_server_host", "vllm_server_port",
    "report_to",  # TRL's loggers get our log_metric values too: see lowrank_rlvr/tracking.py
)
# GRPOSettings that reach TRL worked out (use_vllm: by the backend; run_name: default the run folder's name), or not
# at all: they are this tool's (max_time: interrupt.py; max_sampling_logp_difference: parity.py; log_rollouts_steps).
NOT_AS_TRL = ("use_vllm", "run_name", "max_time", "max_sampling_logp_difference", "log_rollouts_steps")


def grpo_arguments(cfg: RunConfig, backend: str, on_cuda: bool, dtype: Any) -> Any:
    """TRL's GRPOConfig from ours: the same names, plus the device, sampler and logging choices this tool makes."""
    import torch
    from trl import GRPOConfig

    g = cfg.grpo
    return GRPOConfig(
        output_dir=cfg.output_dir,
        **{name: getattr(g, name) for name in SAME_AS_TRL},
        # Unsloth 2026.10.9's GRPOConfig swaps in DAPO-paper defaults (clip-higher 0.28, masking truncated
        # completions, 8-bit Adam) unless these are given: pin them so both backends run the same recipe.
        epsilon_high=g.epsilon,
        mask_truncated_completions=False,
        optim="adamw_torch",
        reward_weights=reward_weights(cfg.reward.kind),
        **_importance_sampling_arguments(),
        **trl_settings(cfg, backend),  # use_vllm and gradient checkpointing: see lowrank_rlvr.backends
        vllm_gpu_memory_utilization=cfg.model.gpu_memory_utilization,
        use_cpu=not on_cuda,
        bf16=dtype == torch.bfloat16 and on_cuda,
        fp16=dtype == torch.float16 and on_cuda,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient: skip DDP's search for unused ones
        save_strategy="steps",
        run_name=g.run_name or Path(cfg.output_dir).name,
        disable_tqdm=True,  # RunRecorder draws the progress bar
        log_completions=False,
    )


def _importance_sampling_arguments() -> dict[str, Any]:
    # Importance weights for the sampler/trainer mismatch, per token, truncated from above at 3 (TIS). Not TRL
    # 1.14.2's default mode "sequence_mask" (grpo_config.py:930): it weights a whole rollout by exp of the SUM of
    # its per-token log-prob differences (grpo_trainer.py:2729-2736) and zeroes it above the cap (2760-2765), so
    # a 3,072-token rollout whose small per-token mismatches (4-bit kernels vs the trainer's) add up past log 3
    # drops out of the loss without a word. Unsloth 2026.10.9 turns TRL's off (unsloth rl_replacements.py:2448)
    # and computes the same modes the same way in its loss, reading mode and cap from this config (unsloth_zoo
    # 2026.10.9 rl_replacements.py:1030-1043, 2721, 2742; env UNSLOTH_GRPO_VLLM_IS_MODE would override it).
    return dict(
        vllm_importance_sampling_correction=True,
        vllm_importance_sampling_mode="token_truncate",
        vllm_importance_sampling_clip_max=3.0,  # TRL 1.14.2's cap (its default), per token here
    )


# -- finish --------------------------------------------------------------------------------------------------------


def _save_adapter(trainer: Any, run: RunFolder, launch: Launch, stop: GracefulStop) -> None:
    """The final adapter, written into a staging folder and renamed into place once complete."""
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
