"""`lowrank-rlvr grade INPUT.jsonl --output OUTPUT.jsonl`: the I/O contract, through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lowrank_rlvr.cli import app


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


ROWS = [
    {"id": "a", "response": "so $\\boxed{\\frac{64}{5}}$", "answer": "12.8", "meta": {"step": 3}},
    {"id": "b", "response": "the answer is 27", "answer": 27.0},
    {"id": "c", "response": "\\boxed{26}", "answer": "27"},
    {"id": "d", "response": "\\boxed{3} no wait \\boxed{27.0}", "answer": 27, "reward": "stale"},
]


def test_grade_writes_input_lines_plus_reward_and_extracted_in_order(cli, tmp_path):
    source = _write_jsonl(tmp_path / "in.jsonl", ROWS)
    target = tmp_path / "out" / "graded.jsonl"
    result = cli.invoke(app, ["grade", str(source), "--output", str(target), "--workers", "2", "--timeout", "3"])
    assert result.exit_code == 0, result.output
    lines = _read_jsonl(target)
    assert [line["id"] for line in lines] == ["a", "b", "c", "d"]
    assert [line["reward"] for line in lines] == [1.0, 0.0, 0.0, 1.0]
    assert all(isinstance(line["reward"], float) for line in lines)
    assert [line["extracted"] for line in lines] == ["\\frac{64}{5}", None, "26", "27.0"]
    assert lines[0]["meta"] == {"step": 3} and lines[1]["answer"] == 27.0  # other fields kept as they were
    summary = result.output.strip().splitlines()
    assert len(summary) == 1
    assert "4 responses" in summary[0] and "accuracy 0.5000 (2/4)" in summary[0] and " s " in summary[0]


def test_grade_format_kind(cli, tmp_path):
    source = _write_jsonl(tmp_path / "in.jsonl", ROWS)
    target = tmp_path / "out.jsonl"
    result = cli.invoke(app, ["grade", str(source), "-o", str(target), "--kind", "format", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert [line["reward"] for line in _read_jsonl(target)] == [1.0, 0.0, 1.0, 1.0]


def test_grade_hostile_line_scores_zero_within_the_timeout(cli, tmp_path):
    rows = [
        {"response": "\\boxed{10^{10^{10^{10}}}}", "answer": "10^{10^{10^{9}}}"},
        {"response": "\\boxed{1}", "answer": "1"},
    ]
    source = _write_jsonl(tmp_path / "in.jsonl", rows)
    target = tmp_path / "out.jsonl"
    result = cli.invoke(app, ["grade", str(source), "-o", str(target), "--timeout", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert [line["reward"] for line in _read_jsonl(target)] == [0.0, 1.0]
    assert "1 timed out" in result.output


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([ROWS[0], {"response": "\\boxed{1}"}], "line 2: missing field 'answer'"),
        ([{"answer": "1"}], "line 1: missing field 'response'"),
        ([ROWS[0], ROWS[1], "{not json"], "line 3: not valid JSON"),
        (["[1, 2]"], "line 1: expected a JSON object"),
        ([{"response": 5, "answer": "5"}], "line 1: 'response' must be a string"),
    ],
)
def test_grade_bad_input_exits_2_naming_file_and_line(cli, tmp_path, lines, message):
    source = _write_jsonl(tmp_path / "in.jsonl", lines)
    target = tmp_path / "out.jsonl"
    result = cli.invoke(app, ["grade", str(source), "--output", str(target)])
    assert result.exit_code == 2
    error = result.output.strip()
    assert error.startswith("error: ") and str(source) in error and message in error
    assert len(error.splitlines()) == 1
    assert not target.exists()


def test_grade_missing_input_file_exits_2(cli, tmp_path):
    result = cli.invoke(app, ["grade", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 2
    assert "nope.jsonl" in result.output and "not found" in result.output


def test_grade_console_script_in_a_fresh_process(tmp_path):
    # the installed entry point, as a user runs it: worker processes are spawned from a real console script
    executable = shutil.which("lowrank-rlvr", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.skip("lowrank-rlvr console script not installed next to this Python")
    source = _write_jsonl(tmp_path / "in.jsonl", ROWS)
    target = tmp_path / "out.jsonl"
    completed = subprocess.run(
        [executable, "grade", str(source), "--output", str(target)], capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr
    assert [line["reward"] for line in _read_jsonl(target)] == [1.0, 0.0, 0.0, 1.0]
    assert "accuracy 0.5000" in completed.stdout
