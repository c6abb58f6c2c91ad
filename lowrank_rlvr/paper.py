"""The paper's reference figures, stored once: what a run of ours is compared against.

Wang et al. 2025, *Reinforcement Learning for Reasoning in Large Language Models with One Training Example*
(arXiv 2504.20571), Tables 4 and 8: accuracy in percent on the six benchmarks (the checkpoint with the best
six-benchmark average) and that average, for a base model (`base`, before RLVR) and after RLVR on an example set:

| training key  | what was trained on                                                      |
|---------------|--------------------------------------------------------------------------|
| `base`        | nothing: the base model (our step 0, or `eval MODEL` without an adapter) |
| `pi_1`        | pi_1 alone (DSR-sub index 124, the wind-pressure problem, answer 12.8)   |
| `pi_13`       | pi_13 alone (DSR-sub index 682, the circle problem, answer 4/3)          |
| `pi_1+pi_13`  | the two together                                                          |
| `dsr_sub`     | the whole 1,209-example DSR-sub pool                                     |
| `format`      | a format-only reward (`reward.kind: format`); which example set the paper used for that row is not recorded here, so it is shown for any format-reward run on Qwen2.5-Math-1.5B |

How a run's example set is recognised (`training_of`, from the run's resolved `config.yaml`):
- `reward.kind: format` -> `format`; the controls `random` and `zero` -> no row (only the base row at step 0);
- inline `data.examples`: each must be a known example (its gold answer, and a phrase of its problem text);
- `data.path`: a file named like the paper's `pi<N>_r<copies>.parquet` / `.jsonl` is pi_N; `dsr_sub.*` is the pool,
  narrowed by `data.indices` (DSR-sub indices: 124 -> pi_1, 682 -> pi_13) when they are given;
- anything else (a Hub dataset, an unknown example) matches no row, and nothing is shown.

Base models are matched by the last part of their id, case-insensitively, with Unsloth's pre-quantized suffixes
(`-bnb-4bit`, ...) removed: `Qwen/Qwen2.5-Math-1.5B` and `unsloth/Qwen2.5-Math-1.5B-bnb-4bit` are one model; a local
folder matches when its name is the model's.

Where our evaluation differs from the paper's (so a gap of a point or two is not, by itself, a failed reproduction):
- answers are graded by math-verify (the training reward), not by the Qwen2.5-Math suite's `math_equal`;
- Qwen2.5-Math and Llama: our default protocol is the paper's (greedy on MATH500, Minerva Math and OlympiadBench,
  8 samples at T=0.6 on AIME24, AIME25 and AMC23, 3,072 new tokens);
- DeepSeek-R1-Distill-Qwen-1.5B: the paper evaluated it with 8k (the figures we compare against, `R1_CONTEXT`) and
  32k tokens, sampling at T=0.6 and top_p 0.95 on every benchmark and averaging 16 or 64 samples per problem
  (avg@16 / avg@64). Ours by default: the protocol above, 3,072 tokens, top_p 1.0, greedy where it is greedy, avg@8
  on the small sets. `eval --temperature 0.6 --top-p 0.95 --samples 16 --max-tokens 8192` comes closer (avg@16
  everywhere), and truncation at 3,072 tokens alone costs a reasoning model many answers;
- the paper trained the full model; we train a LoRA adapter on a (4-bit) frozen base with 16 x 8 rollouts per step.

Example:
    >>> reference("Qwen/Qwen2.5-Math-1.5B", "pi_1").average
    35.0
    >>> training_of({"data": {"path": "data/pi13_r128.parquet"}, "reward": {"kind": "accuracy"}})
    'pi_13'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowrank_rlvr.benchmarks import BENCHMARKS, paper_benchmarks
from lowrank_rlvr.pretrained import model_key
from lowrank_rlvr.tables import figure, markdown_table

SOURCE = "Wang et al. 2025, arXiv 2504.20571, Tables 4 and 8"
R1_CONTEXT = "8k"  # which of the paper's two R1-Distill evaluations (8k, 32k tokens) we compare against


@dataclass(frozen=True)
class PaperRow:
    model: str  # the Hub id the paper used
    training: str  # a training key (see the module docstring)
    benchmarks: dict[str, float]  # benchmark -> accuracy in percent, our benchmark names
    average: float  # the paper's six-benchmark average, in percent
    note: str = ""  # evaluation setting when it is not the default one

    @property
    def label(self) -> str:
        what = "base" if self.training == "base" else TRAINING_LABELS.get(self.training, self.training)
        return f"paper, {what}" + (f" ({self.note})" if self.note else "")

    def mean_over(self, names: list[str]) -> float | None:
        """The paper's mean over a subset of benchmarks (to set beside our average over the same subset)."""
        values = [self.benchmarks[name] for name in names if name in self.benchmarks]
        return sum(values) / len(values) if values and len(values) == len(names) else None


TRAINING_LABELS = {
    "pi_1": "pi_1",
    "pi_13": "pi_13",
    "pi_1+pi_13": "{pi_1, pi_13}",
    "dsr_sub": "DSR-sub (1,209 examples)",
    "format": "format reward only",
}


def _row(model: str, training: str, figures: tuple[float, ...], note: str = "") -> PaperRow:
    *scores, average = figures
    return PaperRow(model, training, dict(zip(BENCHMARKS, scores, strict=True)), average, note)


# MATH500, AIME24, AMC23, Minerva Math, OlympiadBench, AIME25, average: exactly as printed in the paper.
ROWS: tuple[PaperRow, ...] = (
    _row("Qwen/Qwen2.5-Math-1.5B", "base", (36.0, 6.7, 28.1, 8.1, 22.2, 4.6, 17.6)),
    _row("Qwen/Qwen2.5-Math-1.5B", "pi_1", (72.8, 15.4, 51.6, 29.8, 33.5, 7.1, 35.0)),
    _row("Qwen/Qwen2.5-Math-1.5B", "pi_13", (73.6, 16.7, 53.8, 23.5, 35.7, 10.8, 35.7)),
    _row("Qwen/Qwen2.5-Math-1.5B", "pi_1+pi_13", (74.8, 17.5, 53.1, 29.4, 36.7, 7.9, 36.6)),
    _row("Qwen/Qwen2.5-Math-1.5B", "dsr_sub", (73.6, 17.1, 50.6, 32.4, 33.6, 8.3, 35.9)),
    _row("Qwen/Qwen2.5-Math-1.5B", "format", (65.0, 8.3, 45.9, 17.6, 29.9, 5.4, 28.7)),
    _row("Qwen/Qwen2.5-Math-7B", "base", (51.0, 12.1, 35.3, 11.0, 18.2, 6.7, 22.4)),
    _row("Qwen/Qwen2.5-Math-7B", "pi_1", (79.2, 23.8, 60.3, 27.9, 39.1, 10.8, 40.2)),
    _row("meta-llama/Llama-3.2-3B-Instruct", "base", (40.8, 8.3, 25.3, 15.8, 13.2, 1.7, 17.5)),
    _row("meta-llama/Llama-3.2-3B-Instruct", "pi_1", (45.8, 7.9, 25.3, 16.5, 17.0, 1.2, 19.0)),
    _row("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "base", (76.7, 20.8, 51.3, 23.3, 35.4, 19.7, 37.9), "8k"),
    _row("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "pi_1", (80.5, 25.1, 58.9, 27.2, 40.2, 21.7, 42.3), "8k"),
    _row("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "base", (82.9, 29.8, 63.2, 26.4, 43.1, 23.9, 44.9), "32k"),
    _row("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "pi_1", (83.9, 31.0, 66.1, 28.3, 44.6, 24.1, 46.3), "32k"),
)

# The known examples: DSR-sub index -> name, and how an inline copy is recognised (gold answer, a phrase of the text).
DSR_SUB_INDEX = {124: "pi_1", 682: "pi_13"}
KNOWN_EXAMPLES = {
    "pi_1": ("12.8", "exerted by wind on a sail"),
    "pi_13": ("\\frac{4}{3}", "circle $C$ passes through points $P(0,-4)$"),
}
_PI_FILE = re.compile(r"^pi(\d+)_r\d+\.(parquet|jsonl|json)$")


def reference(model: str, training: str | None, context: str = R1_CONTEXT) -> PaperRow | None:
    """The paper's row for a base model and training key, or None. R1-Distill has two: `context` picks one."""
    if training is None:
        return None
    found = [row for row in ROWS if model_key(row.model) == model_key(model) and row.training == training]
    return next((row for row in found if row.note in ("", context)), None)


def training_of(config: dict | Any | None) -> str | None:
    """The training key of a run from its config (a raw `config.yaml` dict or a `RunConfig`); None if unknown."""
    if config is None:
        return None
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    if not isinstance(config, dict):
        return None
    kind = (config.get("reward") or {}).get("kind")
    if kind == "format":
        return "format"
    if kind in ("random", "zero"):  # controls: the example set is the treatment's, what trained it is not
        return None
    data = config.get("data") or {}
    indices = data.get("indices")
    if data.get("examples"):
        names = [_known_example(example) for example in data["examples"]]
        return None if None in names else _combine(names)
    if data.get("path"):
        filename = Path(str(data["path"])).name
        match = _PI_FILE.match(filename)
        if match:
            name = {1: "pi_1", 13: "pi_13"}.get(int(match.group(1)))
            if name is None or (indices and {DSR_SUB_INDEX.get(i) for i in indices} != {name}):
                return None
            return name
        if filename.startswith("dsr_sub"):
            if not indices:
                return "dsr_sub"
            names = [DSR_SUB_INDEX.get(int(i)) for i in indices]
            return None if None in names else _combine(names)
    return None


def reference_for_run(config: dict | Any | None, model: str | None = None, step: int | None = None) -> PaperRow | None:
    """The row to set beside a run's model: the base row at step 0, else the row of what the run trained on."""
    if config is None:
        return None
    raw = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    model = model or ((raw.get("model") or {}).get("name_or_path") if isinstance(raw, dict) else None)
    if not model:
        return None
    return reference(model, "base" if step == 0 else training_of(raw))


def comparable_average(row: PaperRow, names: list[str]) -> float | None:
    """The paper's figure to set beside our average over `names`: its printed average when we evaluated all six
    benchmarks, else its mean over the same subset."""
    return row.average if set(names) == set(BENCHMARKS) else row.mean_over(names)


def reference_cells(row: PaperRow, names: list[str], averaged: list[str] | None = None) -> list[str]:
    """The paper's cells beside ours: its figure for each of `names` ('-' where it has none), then the figure to set
    beside our average over `averaged` (default: the names that are not generated benchmarks).

    Example:
        >>> reference_cells(reference("Qwen/Qwen2.5-Math-1.5B", "pi_1"), ["math500", "random_calculation"])
        ['72.8', '-', '72.8']
    """
    averaged = paper_benchmarks(names) if averaged is None else averaged
    return [figure(row.benchmarks.get(name)) for name in names] + [figure(comparable_average(row, averaged))]


def reference_table() -> str:
    """Every row of the paper's figures, as the README shows it."""
    header = ["model", "trained on", "MATH500", "AIME24", "AMC23", "Minerva", "OlympiadBench", "AIME25", "average"]
    rows = []
    for row in ROWS:
        model = row.model.rsplit("/", 1)[-1] + (f" ({row.note} eval)" if row.note else "")
        trained = "base" if row.training == "base" else TRAINING_LABELS[row.training]
        rows.append([model, trained, *reference_cells(row, list(BENCHMARKS))])
    return markdown_table(header, rows, left=2)


def _known_example(example: Any) -> str | None:
    if not isinstance(example, dict):
        return None
    text = " ".join(str(example.get("prompt", "")).split())
    answer = str(example.get("answer", "")).strip()
    for name, (gold, phrase) in KNOWN_EXAMPLES.items():
        if answer == gold and phrase in text:
            return name
    return None


def _combine(names: list[str]) -> str:
    return "+".join(sorted(set(names), key=lambda name: int(name.removeprefix("pi_"))))
