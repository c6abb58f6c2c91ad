"""The TRL reward functions of a `reward.kind`: plain callables over a generation batch, graded in parallel.

Which functions a kind trains on, and their weights, is `config.REWARD_TERMS`; this module turns each term into
the callable TRL calls (named as TRL logs it: `rewards/<name>/mean`). Accuracy is computed and logged in every run
and trains only under `accuracy` and `format+accuracy`; `random` and `zero` are the controls.
"""

from __future__ import annotations

import random as random_module
from collections import defaultdict
from typing import Any

from lowrank_rlvr.config import REWARD_TERMS
from lowrank_rlvr.recorder import RunRecorder
from lowrank_rlvr.rewards import reflection_per_1k_tokens


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
        call = self.calls[step]
        self.calls[step] += 1
        draws = random_module.Random(f"random-reward:{self.seed}:{step}:{self.rank}:{call}")  # str seeds hash stably (sha512)
        return [1.0 if draws.random() < self.probability else 0.0 for _ in range(count)]
