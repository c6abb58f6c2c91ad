"""Training-collapse detector: from the metric rows logged so far, the warnings to raise at the newest step.

Two failures of GRPO with a small example set, both seen on the tiny CPU config before its recipe was fixed:
- **reward_collapse**: the policy found rewarded answers, then lost them: the training reward sits at exactly 0 for
  longer than chance allows, given how often steps were rewarded before (e.g. 6 rewarded steps in 28, then 0 for 29
  steps; a 0.79 chance per step of an unrewarded step makes 29 in a row a 1-in-1,000 event). A run still exploring
  (one lucky step, then a long quiet stretch) does not count: `min_rewarded_steps` rewarded steps must come first.
- **entropy_collapse**: the policy turned (near-)deterministic while mostly wrong: entropy under `entropy_fraction`
  of its starting value for `window` steps while their mean training accuracy stayed below `max_accuracy`. A run that
  sharpens as it learns (entropy 0.40 -> 0.01 on the tiny config while accuracy climbs to 1) raises nothing: over 77
  healthy tiny runs the accuracy of such stretches never fell below 0.875; on the collapsed ones it was 0.

On the 120 tiny-config runs behind benchmarks/results/tiny-seeds-*.json this warns on the 3 that collapsed (the first
warning 4-10 steps after the collapse began) and on none of the other 117 (one of which ended at accuracy 0.875).

Pure: `collapse_warnings(rows)` takes the rows of `metrics.jsonl` as dicts (`step`, `reward_mean`, `train_accuracy`,
`entropy`, `completion_length`; other keys ignored, None skipped) and returns values. Each kind is raised once per run,
at the step where its condition first holds; `scan_for_collapse(rows)` returns those for a whole run (a report).
Rows without entropy (the unsloth backend logs none) cannot raise entropy_collapse: training and the report say that
the check is off (`lowrank_rlvr.backends.ENTROPY_NOT_MEASURED`, the report's entropy plot), rather than staying quiet.

>>> rows = [{"step": s, "reward_mean": 0.5, "train_accuracy": 0.5, "entropy": 0.4, "completion_length": 11.0}
...         for s in range(1, 21)]
>>> collapse_warnings(rows)
[]
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median

from lowrank_rlvr.tables import number

COLLAPSE_REMEDY = (
    "lower grpo.learning_rate, raise grpo.adam_epsilon (tiny entropy/KL gradients then stop taking full Adam steps), "
    "or warm up (grpo.lr_scheduler_type: constant_with_warmup, grpo.warmup_steps)"
)


@dataclass(frozen=True)
class CollapseWarning:
    step: int
    kind: str  # "reward_collapse" | "entropy_collapse"
    message: str


@dataclass(frozen=True)
class CollapseThresholds:
    min_rewarded_steps: int = 5  # reward_collapse: rewarded steps needed before a zero stretch can mean a collapse
    chance: float = 1e-3  # reward_collapse: how unlikely the zero stretch must be at the earlier rewarded-step rate
    min_zero_steps: int = 10  # reward_collapse: never fewer unrewarded steps in a row than this
    start_steps: int = 5  # entropy_collapse: the starting entropy is the median of this many first steps
    entropy_fraction: float = 0.05  # entropy_collapse: below this fraction of the starting entropy ...
    window: int = 5  # ... for this many steps in a row ...
    max_accuracy: float = 0.5  # ... while their mean training accuracy stays below this


def collapse_warnings(rows: list[dict], thresholds: CollapseThresholds = CollapseThresholds()) -> list[CollapseWarning]:
    """Warnings whose condition first holds at the newest row's step (each kind once per run)."""
    if not rows:
        return []
    newest = rows[-1]["step"]
    return [warning for warning in scan_for_collapse(rows, thresholds) if warning.step == newest]


def scan_for_collapse(rows: list[dict], thresholds: CollapseThresholds = CollapseThresholds()) -> list[CollapseWarning]:
    """Every kind's first warning over the whole run, in step order (one pass)."""
    found = [_first_reward_collapse(rows, thresholds), _first_entropy_collapse(rows, thresholds)]
    return sorted((w for w in found if w is not None), key=lambda w: w.step)


def _first_reward_collapse(rows: list[dict], t: CollapseThresholds) -> CollapseWarning | None:
    seen = rewarded = zero_run = 0  # steps with a reward before the current zero stretch, how many were rewarded
    for row in rows:
        reward = number(row.get("reward_mean"))
        if reward is None:
            continue
        if reward > 0:
            seen += zero_run + 1
            rewarded += 1
            zero_run = 0
            continue
        zero_run += 1
        if rewarded < t.min_rewarded_steps or zero_run < t.min_zero_steps:
            continue
        unrewarded_rate = 1 - rewarded / seen
        if unrewarded_rate ** zero_run <= t.chance:
            start = row["step"] - zero_run + 1
            return CollapseWarning(
                step=row["step"],
                kind="reward_collapse",
                message=f"step {row['step']}: training reward 0 for {zero_run} steps (since step {start}) after "
                f"{rewarded} of {seen} steps were rewarded{_length_change(rows, row)}: the policy lost the answers it "
                f"had found; {COLLAPSE_REMEDY}",
            )
    return None


def _first_entropy_collapse(rows: list[dict], t: CollapseThresholds) -> CollapseWarning | None:
    entropies = [e for e in (number(row.get("entropy")) for row in rows) if e is not None]
    if len(entropies) < t.start_steps:
        return None
    start_entropy = median(entropies[: t.start_steps])
    low_run: list[float] = []  # training accuracy of the current stretch of low-entropy steps
    for row in rows:
        entropy = number(row.get("entropy"))
        if entropy is None:
            continue
        if entropy >= t.entropy_fraction * start_entropy:
            low_run = []
            continue
        accuracy = number(row.get("train_accuracy"))
        if accuracy is None:  # runs that log no accuracy: the reward stands in
            accuracy = number(row.get("reward_mean")) or 0.0
        low_run.append(accuracy)
        if len(low_run) >= t.window and sum(low_run[-t.window :]) / t.window < t.max_accuracy:
            mean_accuracy = sum(low_run[-t.window :]) / t.window
            return CollapseWarning(
                step=row["step"],
                kind="entropy_collapse",
                message=f"step {row['step']}: entropy {entropy:.2g} is under {t.entropy_fraction:g} of its start "
                f"({start_entropy:.2g}) while training accuracy is {mean_accuracy:.2f}{_length_change(rows, row)}: the "
                f"policy turned deterministic on wrong answers; {COLLAPSE_REMEDY}",
            )
    return None


def _length_change(rows: list[dict], row: dict) -> str:
    first, now = number(rows[0].get("completion_length")), number(row.get("completion_length"))
    return "" if first is None or now is None else f", completion length {first:.3g} -> {now:.3g} tokens"
