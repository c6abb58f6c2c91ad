"""The run folder (lowrank_rlvr.runs): one home for its file names, its reader and its checkpoints."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import read_jsonl
from lowrank_rlvr.runs import COMPLETE_MARKER, LAYOUT, RunFolder, layout_table

PACKAGE = Path(__file__).resolve().parents[1] / "lowrank_rlvr"
GENERIC = {"adapter", "report", "tensorboard"}  # also plain words (dict keys, command names): not checked
RUN_FILE_NAMES = {name.rstrip("/") for name in LAYOUT} - GENERIC | {COMPLETE_MARKER, "adapter.partial"}


def test_readme_run_folder_table_is_the_layout():
    readme = (PACKAGE.parent / "README.md").read_text()
    assert layout_table() in readme, "README's run-folder table differs from runs.LAYOUT: paste runs.layout_table()"


def test_no_module_but_runs_names_a_file_of_the_run_folder():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "runs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in RUN_FILE_NAMES:
                offenders.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def test_only_complete_checkpoints_count_newest_first(tmp_path):
    run = RunFolder(tmp_path)
    for step in (5, 10, 20):
        run.checkpoint_dir(step).mkdir()
    run.mark_complete(5), run.mark_complete(10)  # checkpoint-20 was cut off mid-write
    (tmp_path / "checkpoint-x").mkdir()
    assert [c.step for c in run.checkpoints()] == [10, 5]


def test_a_torn_last_line_is_skipped_only_where_a_job_may_be_writing(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')
    assert [row["step"] for _, row in read_jsonl(path, torn_tail_ok=True)] == [1, 2]
    with pytest.raises(UserError, match="line 3: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(UserError, match="line 2: not valid JSON"):
        read_jsonl(path, torn_tail_ok=True)  # a broken line in the middle is never a job still writing


def test_metrics_keep_the_last_row_per_step_and_forget_steps_after_a_checkpoint(tmp_path):
    run = RunFolder(tmp_path)
    for step in (1, 2, 3, 2, 3):  # a resumed run logs steps 2 and 3 again
        run.append_metrics({"step": step, "reward_mean": float(step)})
    assert [row["step"] for row in run.read_metrics()] == [1, 2, 3]
    run.keep_metrics_through(1)
    assert [row["step"] for row in run.read_metrics()] == [1]

