"""One-shot example(s) from inline config, JSONL/parquet or the Hub, and their repetition to fill the batch.

Two row layouts are read, from any source:
- simple: `{"problem" | "question" | "prompt": str, "answer": str | number, "index"?: int}`
- verl (the paper's parquet files): `{"prompt": [{"role": "user", "content": ...}], "reward_model": {"ground_truth": ...},
  "extra_info": {"index": ...}}`

The prompt templates are `lowrank_rlvr.templates`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowrank_rlvr.config import DataSettings
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import read_jsonl, read_parquet
from lowrank_rlvr.rewards import answer_text
from lowrank_rlvr.templates import render_prompt


@dataclass(frozen=True)
class Example:
    index: int  # pool index (verl extra_info.index) or row number
    prompt: str  # the problem text, without template
    answer: str  # gold final answer


def load_examples(data: DataSettings) -> list[Example]:
    """The example set named by the config, each with its gold answer (UserError for a row without one)."""
    if data.examples is not None:
        rows, source = [ex.model_dump() for ex in data.examples], "data.examples"
    elif data.path is not None:
        rows, source = read_rows(Path(data.path)), data.path
    else:
        import datasets  # heavy; only for Hub datasets

        try:
            rows, source = datasets.load_dataset(data.dataset, split=data.split), data.dataset
        except Exception as exc:  # network, missing dataset, bad split: all the user's to fix
            raise UserError(f"dataset {data.dataset!r} (split {data.split!r}) could not be loaded: {exc}") from None
    parsed = [(parse_row(row, n), f"{source}: row {n + 1}") for n, row in enumerate(rows)]
    by_index: dict[int, tuple[Example, str]] = {}
    for example, where in parsed:  # the paper's files repeat one example 128 times: keep each index once
        by_index.setdefault(example.index, (example, where))
    if data.indices is not None:
        missing = [i for i in data.indices if i not in by_index]
        if missing:
            raise UserError(f"data.indices not found in the data: {missing[:5]}")
        chosen = [by_index[i] for i in data.indices]
    else:
        chosen = list(by_index.values())
    for example, where in chosen:
        if not example.prompt:
            raise UserError(f"{where}: no problem text (expected 'problem', 'question' or 'prompt')")
    unanswered = [(example, where) for example, where in chosen if not example.answer]
    if unanswered and not data.skip_missing_answers:
        where = unanswered[0][1]
        raise UserError(f"{where}: no answer (expected 'answer' or reward_model.ground_truth)")
    if unanswered:
        print(f"warning: skipped {len(unanswered)} example(s) without an answer: {unanswered[0][1]}, ...", file=sys.stderr)
    examples = [example for example, _ in chosen if example.answer]
    if not examples:
        raise UserError(f"{source}: no examples")
    return examples


def read_rows(path: Path) -> list[dict]:
    """Rows of a .jsonl or .parquet file as dicts (UserError naming the file: a broken line, a truncated parquet)."""
    if path.suffix == ".parquet":
        return read_parquet(path, "data file")
    return [row for _, row in read_jsonl(path)]


def parse_row(row: dict, row_number: int) -> Example:
    """One row in the simple or the verl layout -> Example (empty strings where the row lacks a field)."""
    prompt = row.get("prompt", row.get("problem", row.get("question")))
    if _is_messages(prompt):
        user_turns = [m["content"] for m in prompt if m.get("role") == "user"]
        prompt = user_turns[-1] if user_turns else None
    answer = row.get("answer")
    reward_model = row.get("reward_model")
    if answer is None and isinstance(reward_model, dict):
        answer = reward_model.get("ground_truth")
    extra = row.get("extra_info")
    index = extra.get("index") if isinstance(extra, dict) and extra.get("index") is not None else row.get("index")
    return Example(
        index=int(index) if index is not None else row_number,
        prompt=prompt.strip() if isinstance(prompt, str) else "",
        answer=answer_text(answer) if answer is not None else "",
    )


def build_train_rows(examples: list[Example], template: str, repeat: int, tokenizer: Any = None) -> list[dict]:
    """The training set: the example set repeated `repeat` times, prompts rendered (columns TRL passes to rewards)."""
    rendered = [
        {"prompt": render_prompt(ex.prompt, template, tokenizer), "answer": ex.answer, "example_index": ex.index}
        for ex in examples
    ]
    return rendered * repeat


def _is_messages(value: Any) -> bool:
    # parquet gives numpy arrays of dicts, JSON gives lists
    return hasattr(value, "__len__") and not isinstance(value, (str, dict)) and all(isinstance(m, dict) for m in value)
