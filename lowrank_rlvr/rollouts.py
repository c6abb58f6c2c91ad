"""Rollouts kept: the completions of one group, with their rewards, lengths and sampler/trainer gap, per logged step.

Every `grpo.log_rollouts_steps` steps (and at step 1) `train` writes one line to the run folder's rollouts file
(`runs.RunFolder.rollouts_path`): the step, the prompt of the main process's first group, its gold answer, and for
each of the group's `num_generations` completions its text, its token count, its total reward and each reward
function's, its advantage, and, where a separate sampler (vLLM) drew it, the mean and max |trainer logp - sampler logp|
over its tokens (the per-completion form of TRL's `sampling/sampling_logp_difference`). Without a separate sampler
(transformers generate) the gap is absent (None). Only model text and numbers go in: no paths, no settings, no
environment.

The texts and rewards come from our reward functions (TRL passes them the completions); the advantages and
per-token log-probabilities only exist inside TRL's generation step (`trl_hooks.capture_generation`). Pure.
"""

from __future__ import annotations


def per_completion_gap(output: dict) -> list[tuple[float, float] | None]:
    """(mean, max) |trainer logp - sampler logp| over each completion's tokens; None per row without a sampler."""
    mask = output.get("completion_mask")
    trainer, sampler = output.get("old_per_token_logps"), output.get("sampling_per_token_logps")
    if mask is None:
        return []
    if trainer is None or sampler is None:
        return [None] * len(mask)
    gaps = []
    for row_mask, row_trainer, row_sampler in zip(mask.bool(), trainer.detach(), sampler.detach()):
        delta = (row_trainer - row_sampler).abs()[row_mask]
        delta = delta[~delta.isnan()]
        gaps.append((float(delta.mean()), float(delta.max())) if delta.numel() else None)
    return gaps


def group_record(
    step: int,
    prompts: list[str],
    answers: list[str],
    completions: list[str],
    lengths: list[int],
    rewards: dict[str, list[float]],
    weights: list[float],
    advantages: list[float] | None,
    gaps: list[tuple[float, float] | None],
    group_size: int,
) -> dict:
    """The rollouts.jsonl line for the first group of a generation batch (pure)."""
    names = list(rewards)
    shown = range(min(group_size, len(completions)))
    total = [sum(w * rewards[name][i] for w, name in zip(weights, names)) for i in shown]
    return {
        "step": step,
        "prompt": prompts[0],
        "answer": answers[0],
        "completions": [
            {
                "text": completions[i],
                "tokens": lengths[i],
                "reward": total[i],
                "rewards": {name: rewards[name][i] for name in names},
                "advantage": None if advantages is None else advantages[i],
                "logp_gap_mean": None if i >= len(gaps) or gaps[i] is None else gaps[i][0],
                "logp_gap_max": None if i >= len(gaps) or gaps[i] is None else gaps[i][1],
            }
            for i in shown
        ],
    }


def due(step: int, every: int) -> bool:
    """Steps whose rollouts are kept: step 1 and every `every`-th (0: none)."""
    return every > 0 and (step == 1 or step % every == 0)
