"""`lowrank-rlvr grade`: a JSONL of responses in, the same lines plus `reward` and `extracted` out.

The reward is the training reward (`lowrank_rlvr.rewards`), graded in worker processes with hard time limits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lowrank_rlvr.defaults import GRADER_TIMEOUT_SECONDS, GRADER_WORKERS
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import atomic_output, expect_file, read_jsonl, writable_file
from lowrank_rlvr.grading import Grader
from lowrank_rlvr.rewards import KINDS, GradeResult


def grade_command(
    input_path: Path, output_path: Path, workers: int = GRADER_WORKERS,
    timeout_seconds: float = GRADER_TIMEOUT_SECONDS, kind: str = "accuracy",
) -> str:
    """`lowrank-rlvr grade`: grade `input_path` into `output_path`; returns the one line to print."""
    return grade_file(input_path, output_path, workers, timeout_seconds, kind)["summary"]


def read_grading_rows(path: Path) -> list[dict]:
    """Rows of INPUT.jsonl; UserError naming the file and line for non-JSON lines or a missing/ill-typed field."""
    expect_file(path, "input")  # missing, or a folder
    rows = []
    for line_number, row in read_jsonl(path):
        for field in ("response", "answer"):
            if field not in row or row[field] is None:
                raise UserError(f"{path}: line {line_number}: missing field '{field}'")
        if not isinstance(row["response"], str):
            raise UserError(f"{path}: line {line_number}: 'response' must be a string")
        if not isinstance(row["answer"], (str, int, float)):
            raise UserError(f"{path}: line {line_number}: 'answer' must be a string or a number")
        rows.append(row)
    return rows


def grade_file(
    input_path: Path, output_path: Path, workers: int = GRADER_WORKERS,
    timeout_seconds: float = GRADER_TIMEOUT_SECONDS, kind: str = "accuracy"
) -> dict:
    """Grade every line of `input_path` and write them with `reward` and `extracted` to `output_path`.

    Returns metrics: count, correct, accuracy, timed_out, seconds, items_per_second and a one-line `summary`.
    """
    from rich.progress import Progress

    if kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)} (got {kind!r})")
    input_path, output_path = Path(input_path), Path(output_path)
    rows = read_grading_rows(input_path)
    writable_file(output_path, "--output")  # before grading, not after
    started = time.perf_counter()
    results: list[GradeResult] = []
    chunk = 256  # progress granularity; the pool is kept across chunks
    with Grader(workers=workers, timeout_seconds=timeout_seconds) as grader, Progress(transient=True) as progress:
        task = progress.add_task("grading", total=len(rows))
        for begin in range(0, len(rows), chunk):
            batch = rows[begin : begin + chunk]
            results += grader.grade([row["response"] for row in batch], [row["answer"] for row in batch], kind)
            progress.advance(task, len(batch))
    seconds = time.perf_counter() - started
    with atomic_output(output_path) as staging, staging.open("w", encoding="utf-8") as handle:
        for row, result in zip(rows, results):
            handle.write(json.dumps({**row, "reward": result.reward, "extracted": result.extracted}) + "\n")
    correct = sum(result.reward for result in results)
    metrics = {
        "count": len(rows),
        "correct": int(correct),
        "accuracy": correct / len(rows) if rows else 0.0,
        "timed_out": sum(result.timed_out for result in results),
        "seconds": seconds,
        "items_per_second": len(rows) / seconds if seconds > 0 else 0.0,
    }
    metrics["summary"] = (
        f"graded {metrics['count']} responses ({kind}): accuracy {metrics['accuracy']:.4f} "
        f"({metrics['correct']}/{metrics['count']}), {metrics['timed_out']} timed out, {seconds:.1f} s -> {output_path}"
    )
    return metrics
