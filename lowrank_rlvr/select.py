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

from lowrank_rlvr.data import Example, parse_row, read_rows
from lowrank_rlvr.defaults import GRADER_WORKERS, PAPER_MAX_COMPLETION_LENGTH, PAPER_TEMPERATURE
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import atomic_output, check_model, read_json, writable_file
from lowrank_rlvr.history import METHODS, history_scores, parse_history, rank_by_score
from lowrank_rlvr.runs import RunFolder
from lowrank_rlvr.shipped import shipped_train_file, shipped_train_files
from lowrank_rlvr.templates import DEFAULT_TEMPLATE

OUTPUT_SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class SelectOptions:
    """What `lowrank-rlvr select` was asked for, checked once, before any pool is read or any rollout sampled."""

    history: Path | None  # a history JSON file or a run folder with history.json; None with `estimate`
    pool: Path  # a .jsonl or .parquet pool, or a shipped one by name (dsr_sub)
    output: Path  # .jsonl or .parquet
    top: int | None = None  # the N best (default 1)
    rank: int | None = None  # only the example at this 1-based rank (pi_rank)
    method: str = "std"  # one of history.METHODS
    repeat: int = 1  # the selection written this many times
    seed: int = 0  # for method 'random' and for the estimate's sampling
    estimate: str | None = None  # no history: a base model whose rollouts stand in for it (our approximation)
    samples: int = 8  # estimate: rollouts per pool example
    limit: int | None = None  # estimate: only the first N pool examples with an answer
    template: str = DEFAULT_TEMPLATE  # estimate: the prompt template
    temperature: float = PAPER_TEMPERATURE  # estimate: sampling temperature
    max_new_tokens: int = PAPER_MAX_COMPLETION_LENGTH  # estimate: tokens per rollout

    def __post_init__(self) -> None:
        if (self.history is None) == (self.estimate is None):
            raise UserError("give a HISTORY (JSON file or run folder) or --estimate MODEL, exactly one of them")
        if self.method not in METHODS:
            raise UserError(f"unknown --method {self.method!r} (choose {', '.join(METHODS)})")
        if Path(self.output).suffix not in OUTPUT_SUFFIXES:
            raise UserError(f"--output must end in .jsonl or .parquet (got {Path(self.output).name})")
        if self.top is not None and self.rank is not None:
            raise UserError("give --top or --rank, not both")
        for flag, value in (("--top", self.top), ("--rank", self.rank), ("--repeat", self.repeat)):
            if value is not None and value < 1:
                raise UserError(f"{flag} must be >= 1 (got {value})")
        if self.estimate is not None:
            self._check_estimate()

    def _check_estimate(self) -> None:
        if self.samples < 2:
            raise UserError(f"--samples must be >= 2 to measure a spread (got {self.samples})")
        if not self.temperature > 0:  # also refuses NaN
            raise UserError(f"--temperature must be > 0 to sample rollouts (got {self.temperature})")
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be >= 1 (got {self.max_new_tokens})")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be >= 1 (got {self.limit})")

    @property
    def history_output(self) -> Path:
        """Where an estimated history is written: `<OUT without suffix>.history.json` (a HISTORY for later runs)."""
        return Path(self.output).with_suffix(".history.json")


@dataclass(frozen=True)
class Selected:
    """One chosen example, in the simple data layout (`lowrank-rlvr train` reads it with `data.path`)."""

    rank: int  # 1 = pi_1, the highest score
    index: int  # pool index (verl extra_info.index, else the pool's row number)
    prompt: str
    answer: str
    score: float


# -- the command -------------------------------------------------------------------------------------------------


def select_command(options: SelectOptions) -> dict:
    """`lowrank-rlvr select`: read (or estimate) the history, rank, write OUT. Returns the metrics, with the chosen
    examples under "selected" and the lines for the terminal under "summary".

    With `estimate`, the sampled history is also written to `options.history_output`, so it can be passed as
    HISTORY later without sampling again."""
    writable_file(options.output, "--output")
    if options.estimate is not None:
        writable_file(options.history_output, "estimated history")
    pool = load_pool(options.pool)
    if options.estimate is None:
        history, metrics = load_history(options.history), {}
    else:
        pool, history, metrics = estimate_from_options(options, pool)
    selected, select_metrics = select_examples(history, pool, options.method, options.top, options.rank, options.seed)
    write_selection(selected, options.output, options.repeat)
    metrics = {**metrics, **select_metrics, "rows_written": len(selected) * options.repeat, "output": str(options.output)}
    return {**metrics, "selected": selected, "summary": describe(selected, metrics)}


def estimate_from_options(options: SelectOptions, pool: list[Example]) -> tuple[list[Example], dict, dict]:
    """The estimated history of the pool's answered examples (the first `limit`), written beside OUT.
    Returns (the examples estimated, their history, the estimate's metrics)."""
    pool = [example for example in pool if example.answer]  # nothing to grade against
    if options.limit is not None:
        pool = pool[: options.limit]
    history, metrics = estimate_history(
        options.estimate, pool, options.samples, options.template, options.temperature,
        max_new_tokens=options.max_new_tokens, seed=options.seed,
    )
    with atomic_output(options.history_output) as staging:
        staging.write_text(json.dumps({str(index): values for index, values in history.items()}, indent=1))
    return pool, history, {**metrics, "history_path": str(options.history_output)}


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
    """The `top` best examples (default 1), or only the one at 1-based `rank` (pi_rank); `top` and `rank` are each
    >= 1 and not both given (`SelectOptions` checks). Returns (selected, metrics)."""
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
        chosen = list(enumerate(order[: 1 if top is None else top], start=1))
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lowrank_rlvr.builtin import resolve_model_path
    from lowrank_rlvr.generation import HFGenerator, Sampling
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
            rewards, tokens = _graded_rollouts(generator, grader, batch, sampling, template, seed + start)
            history.update(rewards)
            completion_tokens += tokens
            progress.update(task, advance=len(batch))
    return history, _estimate_metrics(history, samples, completion_tokens)


def _graded_rollouts(generator, grader, batch: list[Example], sampling, template: str, seed: int) -> tuple[dict, int]:
    """One batch of prompts: `sampling.num_samples` rollouts each, graded against the example's own answer.
    Returns ({index: rewards}, completion tokens)."""
    from lowrank_rlvr.templates import render_prompt

    samples = sampling.num_samples
    prompts = [render_prompt(example.prompt, template, generator.tokenizer) for example in batch]
    completions = generator.generate(prompts, sampling, adapter_dir=None, seed=seed)
    responses = [c.text for row in completions for c in row]  # rollouts of one prompt are adjacent
    answers = [example.answer for example in batch for _ in range(samples)]
    rewards = [result.reward for result in grader.grade(responses, answers, kind="accuracy")]
    history = {example.index: rewards[row * samples : (row + 1) * samples] for row, example in enumerate(batch)}
    return history, sum(len(c.token_ids) for row in completions for c in row)


def _estimate_metrics(history: dict[int, list[float]], samples: int, completion_tokens: int) -> dict:
    solve_rates = [sum(values) / len(values) for values in history.values()]
    return {
        "estimated_examples": len(history),
        "samples_per_example": samples,
        "mean_solve_rate": sum(solve_rates) / len(solve_rates),
        "never_solved": sum(rate == 0.0 for rate in solve_rates),
        "always_solved": sum(rate == 1.0 for rate in solve_rates),
        "completion_tokens": completion_tokens,
    }


# -- the terminal ------------------------------------------------------------------------------------------------


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
