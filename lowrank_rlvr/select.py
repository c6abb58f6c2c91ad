"""Choose the one-shot example(s) from a pool: the paper's historical variance score, or our base-model estimate.

The paper (Wang et al. 2025, arXiv 2504.20571, Sec. 2.2) trains on the whole pool for a few epochs, records each
example's training accuracy per epoch (`{"<pool index>": [acc epoch 1, epoch 2, ...]}`), and ranks examples by the
spread of that list: `pi_1` is the example whose accuracy varied most. As in the authors' `data_selection.py`, the
score is the population standard deviation (`numpy.std`, ddof=0) of the list; ranking by the variance gives the same
order. Departures and additions:
- Ties are broken by pool index, smallest first (the authors' script keeps the JSON file's key order).
- `rank` is 1-based and names `pi_rank` directly (the authors' `--top_index` is 0-based: pi_i -> i-1).
- `estimate_history` is OUR approximation, not the paper's score: instead of a full-pool training run it samples
  K rollouts per pool example from the *base* model and uses the K correctness values (0/1) as the example's
  "history". Their standard deviation is sqrt(p (1 - p)) for a solve rate p: it prefers examples the base model
  solves about half the time, i.e. the ones where GRPO's group advantages are largest at the start. The paper's
  score instead measures how much an example's accuracy *moved* during training; the two need not agree.

Example:
    >>> history_scores({"3": [0.0, 0.5, 1.0], "7": [1.0, 1.0, 1.0]})
    {3: 0.408248290463863, 7: 0.0}
    >>> rank_by_score({3: 0.41, 7: 0.0, 1: 0.41})
    [1, 3, 7]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lowrank_rlvr.templates import DEFAULT_TEMPLATE
from lowrank_rlvr.defaults import PAPER_MAX_COMPLETION_LENGTH, PAPER_TEMPERATURE
from lowrank_rlvr.data import Example, parse_row, read_rows
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.defaults import GRADER_WORKERS
from lowrank_rlvr.runs import RunFolder
from lowrank_rlvr.shipped import shipped_train_file, shipped_train_files
from lowrank_rlvr.history import METHODS, history_scores, parse_history, rank_by_score
from lowrank_rlvr.files import atomic_output, check_model, read_json, writable_file

OUTPUT_SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class Selected:
    """One chosen example, in the simple data layout (`lowrank-rlvr train` reads it with `data.path`)."""

    rank: int  # 1 = pi_1, the highest score
    index: int  # pool index (verl extra_info.index, else the pool's row number)
    prompt: str
    answer: str
    score: float


# -- inputs ------------------------------------------------------------------------------------------------------


def load_history(source: Path) -> dict[int, list[float]]:
    """A history JSON file, or a run folder holding `history.json` (written by `train` on a pool)."""
    source = Path(source)
    if source.is_dir():
        run = RunFolder(source)
        if not run.history_path.is_file():
            raise UserError(
                f"{source}: run folder has no history.json (train on a pool for at least one epoch to get one)"
            )
        return parse_history(run.read_history(), str(run.history_path))
    if not source.is_file():
        raise UserError(f"history not found: {source}")
    return parse_history(read_json(source, "history"), str(source))


def load_pool(path: Path) -> list[Example]:
    """Pool examples (verl or simple layout, parsed as `train` parses `data.path`), each pool index once (the first
    row wins). Rows without a gold answer are kept with `answer == ""`: DSR-sub has one (index 265), and a history
    of the pool lists it; `select_examples` leaves such examples out of the ranking. A name that is no file here but
    a shipped training file (`dsr_sub`, the paper's pool) is that file."""
    path = Path(path)
    if not path.exists() and shipped_train_file(path) is not None:
        path = shipped_train_file(path)
    if path.is_dir():
        raise UserError(f"{path}: pool is a folder, expected a .jsonl or .parquet file")
    if not path.is_file():
        raise UserError(f"pool not found: {path} (shipped, by name: {', '.join(shipped_train_files())})")
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise UserError(f"{path}: pool must be .jsonl or .parquet")
    pool: dict[int, Example] = {}
    for row_number, row in enumerate(read_rows(path)):
        example = parse_row(row, row_number)
        if not example.prompt:
            raise UserError(f"{path}: row {row_number + 1}: no problem text (expected 'problem', 'question' or 'prompt')")
        pool.setdefault(example.index, example)
    if not pool:
        raise UserError(f"{path}: the pool holds no examples")
    return list(pool.values())


def select_examples(
    history: dict[int, list[float]],
    pool: list[Example],
    method: str = "std",
    top: int | None = None,
    rank: int | None = None,
    seed: int = 0,
) -> tuple[list[Selected], dict]:
    """The `top` best examples (default 1), or only the one at 1-based `rank` (pi_rank). Returns (selected, metrics)."""
    if top is not None and rank is not None:
        raise UserError("give --top or --rank, not both")
    by_index = {example.index: example for example in pool}
    missing = sorted(index for index in history if index not in by_index)
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise UserError(f"history has {len(missing)} pool index(es) not in the pool: {shown} (wrong pool file?)")
    unanswerable = sorted(index for index in history if not by_index[index].answer)
    history = {index: values for index, values in history.items() if by_index[index].answer}
    if not history:
        raise UserError("no example of the history has a gold answer in the pool")
    scores = history_scores(history, method, seed)
    order = rank_by_score(scores)
    if rank is not None:
        if not 1 <= rank <= len(order):
            raise UserError(f"--rank {rank} is out of range: the history ranks {len(order)} example(s) (1..{len(order)})")
        chosen = [(rank, order[rank - 1])]
    else:
        top = 1 if top is None else top
        if top < 1:
            raise UserError(f"--top must be >= 1 (got {top})")
        chosen = list(enumerate(order[:top], start=1))
    selected = [
        Selected(r, index, by_index[index].prompt, by_index[index].answer, scores[index]) for r, index in chosen
    ]
    all_scores = list(scores.values())
    metrics = {
        "method": method,
        "ranked": len(order),
        "pool_size": len(pool),
        "selected": len(selected),
        "score_max": max(all_scores),
        "score_mean": sum(all_scores) / len(all_scores),
        "zero_score": sum(score == 0.0 for score in all_scores),
        "skipped_no_answer": unanswerable,
    }
    return selected, metrics


# -- output ------------------------------------------------------------------------------------------------------


def write_selection(selected: list[Selected], output: Path, repeat: int = 1) -> Path:
    """One row per selected example (`rank, index, prompt, answer, score`), the whole selection `repeat` times
    (the paper's `pi1_r128` files hold one example 128 times). JSONL or parquet by the file's suffix."""
    output = Path(output)
    if output.suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"--output must end in .jsonl or .parquet (got {output.name})")
    if repeat < 1:
        raise UserError(f"--repeat must be >= 1 (got {repeat})")
    rows = [asdict(example) for example in selected] * repeat
    with atomic_output(output) as staging:
        if output.suffix == ".parquet":
            import pandas as pd

            pd.DataFrame(rows, columns=list(Selected.__dataclass_fields__)).to_parquet(staging, index=False)
        else:
            staging.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return output


# -- our approximation: base-model rollouts ----------------------------------------------------------------------


def estimate_history(
    model_name_or_path: str,
    pool: list[Example],
    samples: int = 8,
    template: str = DEFAULT_TEMPLATE,
    temperature: float = PAPER_TEMPERATURE,
    top_p: float = 1.0,
    max_new_tokens: int = PAPER_MAX_COMPLETION_LENGTH,
    batch_prompts: int = 4,
    seed: int = 0,
    grader_workers: int = GRADER_WORKERS,
) -> tuple[dict[int, list[float]], dict]:
    """Sample `samples` rollouts per pool example from the base model (transformers generate, the same generator
    as `eval`) and grade them: `{index: [1.0 or 0.0 per rollout]}`, a stand-in history (see the module docstring:
    not the paper's score)."""
    if samples < 2:
        raise UserError(f"--samples must be >= 2 to measure a spread (got {samples})")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lowrank_rlvr.templates import render_prompt
    from lowrank_rlvr.generation import HFGenerator, Sampling
    from lowrank_rlvr.builtin import resolve_model_path
    from lowrank_rlvr.grading import Grader

    path = resolve_model_path(model_name_or_path)
    check_model(path, "--estimate model", shown=model_name_or_path)  # truncated weights: before loading them
    generator = HFGenerator(path, batch_size=batch_prompts)
    sampling = Sampling(num_samples=samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens)

    history: dict[int, list[float]] = {}
    completion_tokens = 0
    columns = (TextColumn("[bold]estimate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Grader(workers=grader_workers) as grader, Progress(*columns) as progress:
        task = progress.add_task("estimate", total=len(pool))
        for start in range(0, len(pool), batch_prompts):
            batch = pool[start : start + batch_prompts]
            prompts = [render_prompt(example.prompt, template, generator.tokenizer) for example in batch]
            completions = generator.generate(prompts, sampling, adapter_dir=None, seed=seed + start)
            responses = [c.text for row in completions for c in row]  # rollouts of one prompt are adjacent
            completion_tokens += sum(len(c.token_ids) for row in completions for c in row)
            answers = [example.answer for example in batch for _ in range(samples)]
            rewards = [result.reward for result in grader.grade(responses, answers, kind="accuracy")]
            for row, example in enumerate(batch):
                history[example.index] = rewards[row * samples : (row + 1) * samples]
            progress.update(task, advance=len(batch))

    solve_rates = [sum(values) / len(values) for values in history.values()]
    metrics = {
        "estimated_examples": len(history),
        "samples_per_example": samples,
        "mean_solve_rate": sum(solve_rates) / len(solve_rates),
        "never_solved": sum(rate == 0.0 for rate in solve_rates),
        "always_solved": sum(rate == 1.0 for rate in solve_rates),
        "completion_tokens": completion_tokens,
    }
    return history, metrics


# -- the command -------------------------------------------------------------------------------------------------


def run_select(
    history_source: Path | None,
    pool_path: Path,
    output: Path,
    top: int | None = None,
    rank: int | None = None,
    method: str = "std",
    repeat: int = 1,
    seed: int = 0,
    estimate: str | None = None,
    samples: int = 8,
    limit: int | None = None,
    template: str = DEFAULT_TEMPLATE,
    temperature: float = PAPER_TEMPERATURE,
    max_new_tokens: int = PAPER_MAX_COMPLETION_LENGTH,
) -> tuple[list[Selected], dict]:
    """`lowrank-rlvr select`: read (or estimate) the history, rank, write OUT. Returns (selected, metrics).

    With `estimate`, the sampled history is also written to `<OUT without suffix>.history.json`, so it can be
    passed as HISTORY later without sampling again."""
    if (history_source is None) == (estimate is None):
        raise UserError("give a HISTORY (JSON file or run folder) or --estimate MODEL, exactly one of them")
    if method not in METHODS:
        raise UserError(f"unknown --method {method!r} (choose {', '.join(METHODS)})")
    # flags are checked before any sampling
    if Path(output).suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"--output must end in .jsonl or .parquet (got {Path(output).name})")
    if top is not None and rank is not None:
        raise UserError("give --top or --rank, not both")
    for flag, value in (("--top", top), ("--rank", rank), ("--repeat", repeat)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1 (got {value})")
    writable_file(output, "--output")
    if estimate is not None:
        writable_file(Path(output).with_suffix(".history.json"), "estimated history")
        if samples < 2:
            raise UserError(f"--samples must be >= 2 to measure a spread (got {samples})")
        if not temperature > 0:  # also refuses NaN
            raise UserError(f"--temperature must be > 0 to sample rollouts (got {temperature})")
        if max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be >= 1 (got {max_new_tokens})")
    pool = load_pool(pool_path)
    metrics: dict = {}
    if estimate is not None:
        pool = [example for example in pool if example.answer]  # nothing to grade against
        if limit is not None:
            if limit < 1:
                raise UserError(f"--limit must be >= 1 (got {limit})")
            pool = pool[:limit]
        history, metrics = estimate_history(
            estimate, pool, samples, template, temperature, max_new_tokens=max_new_tokens, seed=seed
        )
        history_path = Path(output).with_suffix(".history.json")
        with atomic_output(history_path) as staging:
            staging.write_text(json.dumps({str(index): values for index, values in history.items()}, indent=1))
        metrics["history_path"] = str(history_path)
    else:
        history = load_history(history_source)
    selected, select_metrics = select_examples(history, pool, method, top, rank, seed)
    write_selection(selected, output, repeat)
    return selected, {**metrics, **select_metrics, "rows_written": len(selected) * repeat, "output": str(output)}


def describe(selected: list[Selected], metrics: dict) -> str:
    """Lines for the terminal: one per selected example, then where it went."""
    lines = [f"ranked {metrics['ranked']} example(s) by {metrics['method']} score"]
    for example in selected:
        text = " ".join(example.prompt.split())
        text = text if len(text) <= 70 else text[:67] + "..."
        lines.append(f"pi_{example.rank}: index {example.index}  score {example.score:.4f}  answer {example.answer}  {text}")
    if metrics["skipped_no_answer"]:
        skipped = metrics["skipped_no_answer"]
        lines.append(f"left out {len(skipped)} example(s) without a gold answer in the pool: index {', '.join(map(str, skipped))}")
    if "history_path" in metrics:
        lines.append(f"estimated history written to {metrics['history_path']}")
    lines.append(f"wrote {metrics['rows_written']} row(s) to {metrics['output']}")
    return "\n".join(lines)
