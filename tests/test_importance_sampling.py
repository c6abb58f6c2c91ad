"""The vLLM importance-sampling mode TRL receives through `train`: token-level, truncated, never TRL 1.14.2's default.

TRL 1.14.2 defaults to `vllm_importance_sampling_mode="sequence_mask"` (trl/trainer/grpo_config.py:930): one ratio per
rollout, exp of the sum of its per-token trainer/sampler log-prob differences (grpo_trainer.py:2729-2736), zeroed
above the cap (2748-2765), which silently drops long rollouts. See the comment in `lowrank_rlvr.train.grpo_arguments`.
The GRPOConfig is read back from the checkpoint the Trainer wrote (`training_args.bin`, torch.save of its args):
what TRL actually ran with, not what our builder returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "lowrank-rlvr")


def test_trl_runs_with_token_level_truncated_importance_sampling(tmp_path: Path, tiny_model: Path):
    import torch

    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([CLI, "train", "tiny-cpu", "-o", str(run), "--set", "grpo.max_steps=1",
                           "--set", "grpo.save_steps=1"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = torch.load(run / "checkpoint-1" / "training_args.bin", weights_only=False)
    assert type(args).__name__ == "GRPOConfig"
    assert args.vllm_importance_sampling_correction is True
    assert args.vllm_importance_sampling_mode == "token_truncate"
    assert (args.vllm_importance_sampling_clip_min, args.vllm_importance_sampling_clip_max) == (None, 3.0)


def test_the_unsloth_path_samples_with_vllm_under_the_same_mode():
    """Where the correction applies (vLLM sampling: always on the unsloth backend), the mode is the same one."""
    import torch

    from lowrank_rlvr.config import load_config
    from lowrank_rlvr.train import grpo_arguments

    args = grpo_arguments(load_config("qwen2.5-math-1.5b-pi1", output_dir="unused"), "unsloth", False, torch.float32)
    assert args.use_vllm and args.vllm_importance_sampling_correction
    assert (args.vllm_importance_sampling_mode, args.vllm_importance_sampling_clip_max) == ("token_truncate", 3.0)
