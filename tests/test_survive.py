"""Runs that survive their environment, through the CLI on the tiny config: one writer per run folder, a signal or
the time budget saves before it stops, a failed save leaves the run resumable.

Kill points are states of the run folder (metrics.jsonl has N lines, a checkpoint is marked complete), never fixed
sleeps. Where a test must act between two steps, it freezes the run with SIGSTOP, acts, and lets it go on with
SIGCONT: signals sent to a stopped process are delivered together when it continues. The failed save is a real one:
the running process gets a file-size limit (`prlimit`), so the Trainer's own write of the next checkpoint fails with
EFBIG (Python ignores SIGXFSZ), as it would on a full disk or over a quota.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_train import CLI, metrics, run_cli  # noqa: E402 - the CLI helpers of the resume tests

from lowrank_rlvr.interrupt import TIME_BUDGET, GracefulStop
from lowrank_rlvr.runs import RunFolder
from lowrank_rlvr.runtime import Launch


def steps_of(max_steps: int, save_steps: int) -> list[str]:
    return ["--set", f"grpo.max_steps={max_steps}", "--set", f"grpo.save_steps={save_steps}"]


def start(run_dir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [*CLI, "train", "tiny-cpu", "--output-dir", str(run_dir), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_logged_steps(process: subprocess.Popen, run_dir: Path, count: int) -> None:
    """Until metrics.jsonl holds `count` whole lines (the run still going: it must not end first)."""
    path = run_dir / "metrics.jsonl"
    while not (path.is_file() and path.read_text().count("\n") >= count):
        assert process.poll() is None, f"the run ended before step {count}: {process.communicate()[1][-3000:]}"
        time.sleep(0.02)


def wait_for_file(process: subprocess.Popen, path: Path) -> None:
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path.name}: {process.communicate()[1][-3000:]}"
        time.sleep(0.01)


def complete_checkpoints(run_dir: Path) -> list[int]:
    return [checkpoint.step for checkpoint in RunFolder(run_dir).checkpoints()]


def command_words(line: str) -> list[str]:
    """The `continue with: lowrank-rlvr train ...` command a stop line prints, as argv for this venv's CLI."""
    words = shlex.split(line.split("continue with: ")[1])
    assert words[0] == "lowrank-rlvr" and words[-1] == "--resume"
    return words[1:]


def one_line_with(text: str, start: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(start)]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


# -- one writer per run folder ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_finishes_every_step_once(tmp_path, tiny_model):
    run_dir = tmp_path / "run"
    first = start(run_dir, *steps_of(6, 3))
    wait_for_logged_steps(first, run_dir, 1)
    first.send_signal(signal.SIGSTOP)  # frozen mid-run, holding the lock: the second writer cannot race it
    try:
        holder = f"pid {first.pid} on host {socket.gethostname()} since "
        for extra in ([], ["--resume"]):  # a fresh start and a --resume are both writers
            second = run_cli("train", "tiny-cpu", "--output-dir", str(run_dir), *steps_of(6, 3), *extra)
            assert second.returncode == 2, second.stderr[-3000:]
            (line,) = second.stderr.strip().splitlines()
            assert line.startswith(f"error: {run_dir}: another `train` is writing this run folder ({holder}"), line
            assert "Loading weights" not in second.stderr, "refused before any model loads"
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate()
    assert first.returncode == 0, err[-3000:]
    assert [row["step"] for row in metrics(run_dir)] == [1, 2, 3, 4, 5, 6], "steps 1..6, each once, by the first"
    assert complete_checkpoints(run_dir) == [6, 3] and (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert not (run_dir / "train.lock").exists(), "the lock goes with its writer"


@pytest.mark.slow
def test_the_lock_of_a_killed_writer_is_taken_over_by_resume(tmp_path, tiny_model):
    run_dir = tmp_path / "run"
    killed = start(run_dir, *steps_of(6, 6))
    wait_for_logged_steps(killed, run_dir, 1)
    killed.send_signal(signal.SIGKILL)  # no handler runs: the kernel drops the flock, the lock file stays
    killed.communicate()
    assert json.loads((run_dir / "train.lock").read_text())["pid"] == killed.pid

    result = run_cli("train", "tiny-cpu", "--output-dir", str(run_dir), *steps_of(6, 6), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"train.lock: taking over the lock of pid {killed.pid} on host {socket.gethostname()}" in result.stdout
    assert [row["step"] for row in metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert not (run_dir / "train.lock").exists()


def test_readers_do_not_take_the_lock(tmp_path, cli):
    """`report` reads a run folder that a writer holds (here: this test process holds the lock)."""
    from lowrank_rlvr.cli import app

    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.append_metrics({"step": 1, "reward_mean": 0.5, "train_accuracy": 0.5, "entropy": 1.0, "completion_length": 9})
    with run.writer_lock():
        result = cli.invoke(app, ["report", str(run.path)])
        assert result.exit_code == 0, result.output
        assert run.lock_path.is_file()
    assert not run.lock_path.exists()


# -- a signal saves, then stops --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_step_reached_and_resume_ends_at_exactly_max_steps(tmp_path, tiny_model, signum):
    run_dir = tmp_path / "run"
    process = start(run_dir, *steps_of(12, 12))  # no checkpoint before the end: without the save, all is lost
    wait_for_logged_steps(process, run_dir, 2)
    process.send_signal(signum)
    out, err = process.communicate()
    assert process.returncode == 128 + signum, err[-3000:]
    line = one_line_with(out, "stopped at step ")
    step = int(line.split()[3])
    assert f"{signum.name}: finishing step {step}, then saving a checkpoint and stopping" in out, out[-2000:]
    assert line.startswith(f"stopped at step {step} by {signum.name}; checkpoint-{step} is saved; continue with: ")
    assert 2 <= step < 12 and complete_checkpoints(run_dir) == [step]
    state = json.loads((run_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())
    assert state["global_step"] == step
    assert [row["step"] for row in metrics(run_dir)] == list(range(1, step + 1))
    assert not (run_dir / "adapter").exists() and not (run_dir / "train.lock").exists()

    result = run_cli(*command_words(line))  # the command the line printed, word for word
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from checkpoint-{step} (step {step})" in result.stdout
    assert [row["step"] for row in metrics(run_dir)] == list(range(1, 13)), "every step logged once across the stop"
    load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_a_second_signal_stops_at_once_without_saving_and_the_run_still_resumes(tmp_path, tiny_model):
    run_dir = tmp_path / "run"
    process = start(run_dir, *steps_of(12, 12))
    wait_for_logged_steps(process, run_dir, 2)
    # Ctrl-C, then SIGTERM before the step ends: frozen, both arrive together (SIGINT's handler runs first)
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate()
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert re.search(r"^SIGINT: finishing step \d+, then saving", out, re.M), out[-2000:]
    line = one_line_with(out, "second signal (SIGTERM): stopped at once, without saving; ")
    assert line.endswith("--resume trains from the start (no complete checkpoint)"), line
    assert "stopped at step" not in out and complete_checkpoints(run_dir) == []

    result = run_cli("train", "tiny-cpu", "--output-dir", str(run_dir), *steps_of(12, 12), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training from the start" in result.stdout and "taking over the lock of pid" in result.stdout
    assert [row["step"] for row in metrics(run_dir)] == list(range(1, 13))


# -- the time budget -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_max_time_saves_and_stops_and_the_next_session_resumes(tmp_path, tiny_model):
    # 0.01 s: used up before the first step ends (the model loaded within the budget's clock), so the run stops there
    run_dir = tmp_path / "run"
    result = run_cli("train", "tiny-cpu", "--output-dir", str(run_dir), *steps_of(6, 6), "--set", "grpo.max_time=0.01")
    assert result.returncode == 75, result.stderr[-3000:]
    line = one_line_with(result.stdout, "stopped at step ")
    assert line.startswith("stopped at step 1: grpo.max_time (0.01s) would run out within another step and a save")
    assert "checkpoint-1 is saved; continue with: " in line and complete_checkpoints(run_dir) == [1]

    # the next session, with a budget that lasts
    result = run_cli("train", "tiny-cpu", "--output-dir", str(run_dir), *steps_of(6, 6), "--set", "grpo.max_time=1h",
                     "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from checkpoint-1 (step 1)" in result.stdout
    assert [row["step"] for row in metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert complete_checkpoints(run_dir) == [6, 1]


def _budget_after(max_time: float, elapsed: float, longest_step: float, longest_save: float, step: int = 5) -> bool:
    """Whether the budget check stops at this step end (real TrainerState/TrainerControl; the clock set by hand)."""
    from transformers import TrainerControl, TrainerState

    stop = GracefulStop(RunFolder("unused"), Launch(rank=0, world_size=1), max_time, "lowrank-rlvr train --resume")
    now = time.monotonic()
    stop.started, stop._last_step_end = now - elapsed, now - 0.001  # this step: ~0 s, the longest one as given
    stop.longest_step, stop.longest_save = longest_step, longest_save
    state, control = TrainerState(global_step=step, max_steps=100), TrainerControl()
    stop._at_step_end(None, state, control)
    assert control.should_save == control.should_training_stop
    assert (stop.stopped == (step, TIME_BUDGET)) == control.should_training_stop
    return control.should_training_stop


def test_max_time_stops_when_the_longest_step_and_save_would_not_fit():
    assert not _budget_after(100, elapsed=50, longest_step=10, longest_save=20)  # 50 left > 10 + 20
    assert _budget_after(100, elapsed=75, longest_step=10, longest_save=20)  # 25 left < 30
    assert _budget_after(100, elapsed=85, longest_step=10, longest_save=0)  # no save seen yet: counted as a step
    assert not _budget_after(100, elapsed=75, longest_step=10, longest_save=0)
    assert not _budget_after(100, elapsed=99, longest_step=10, longest_save=20, step=100), "the last step ends anyway"


def test_max_time_is_a_duration(cli, tmp_path):
    from lowrank_rlvr.cli import app
    from lowrank_rlvr.config import duration_seconds, load_config

    assert [duration_seconds(v) for v in ("11h", "90m", "1h30m", "45s", "2d", "0.5", 3600)] == [
        39600, 5400, 5400, 45, 172800, 0.5, 3600
    ]
    assert load_config("tiny-cpu", ["grpo.max_time=8h"]).grpo.max_time == "8h"
    result = cli.invoke(app, ["train", "tiny-cpu", "-o", str(tmp_path / "run"), "--set", "grpo.max_time=soon"])
    assert result.exit_code == 2 and not (tmp_path / "run").exists()
    assert result.stderr.strip().endswith("grpo.max_time: 'soon' is not a duration (e.g. '11h', '90m', '1h30m', '45s', "
                                          "or seconds)")
    result = cli.invoke(app, ["train", "tiny-cpu", "-o", str(tmp_path / "run"), "--set", "grpo.max_time=0"])
    assert result.exit_code == 2 and "grpo.max_time: 0 is not a positive duration" in result.stderr


# -- a failed save ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_save_that_fails_part_way_leaves_the_previous_checkpoint_newest_and_resume_continues(tmp_path, tiny_model):
    run_dir = tmp_path / "run"
    process = start(run_dir, *steps_of(9, 3))
    wait_for_file(process, run_dir / "checkpoint-3" / "checkpoint_complete")
    limit = 64 * 1024  # above metrics.jsonl and trainer_state.json, below the adapter and the optimizer state
    assert (run_dir / "checkpoint-3" / "adapter_model.safetensors").stat().st_size > limit
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (limit, limit))
    out, err = process.communicate()
    assert process.returncode == 2, err[-3000:]
    line = one_line_with(err, "error: ")
    assert line.startswith(f"error: {run_dir / 'checkpoint-6'}: the save failed part way ("), line
    assert "File too large" in line, line
    assert line.endswith("--resume continues from checkpoint-3"), line
    assert (run_dir / "checkpoint-6").is_dir() and complete_checkpoints(run_dir) == [3], "torn, and not complete"
    assert not (run_dir / "adapter").exists() and not (run_dir / "train.lock").exists()

    result = run_cli("train", "tiny-cpu", "--output-dir", str(run_dir), *steps_of(9, 3), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from checkpoint-3 (step 3)" in result.stdout
    assert [row["step"] for row in metrics(run_dir)] == list(range(1, 10))
    assert complete_checkpoints(run_dir) == [9, 6, 3]
    load_file(run_dir / "checkpoint-6" / "adapter_model.safetensors")  # written whole this time


# -- the notebooks ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoke", [False, True], ids=["gpu", "smoke"])
@pytest.mark.parametrize("notebook", ["colab_one_shot_rlvr.ipynb", "kaggle_one_shot_rlvr.ipynb"])
def test_the_notebooks_train_with_a_time_budget_under_the_platforms_12_hours(notebook, smoke):
    from test_notebooks import NOTEBOOKS, _cli_lines, _expand, _settings

    from lowrank_rlvr.config import duration_seconds, load_config

    (path,) = [n for n in NOTEBOOKS if n.name == notebook]
    namespace = _settings(path, smoke, hub_repo="")
    (train,) = [_expand(line, namespace) for line in _cli_lines(path) if line.startswith("lowrank-rlvr train ")]
    overrides = [train[i + 1] for i, word in enumerate(train) if word == "--set"]
    cfg = load_config(namespace["CONFIG"], overrides)
    assert cfg.grpo.max_time == namespace["MAX_TIME"] and duration_seconds(cfg.grpo.max_time) < 12 * 3600


# -- under a launcher ------------------------------------------------------------------------------------------------


def _worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the processes torchrun started (their RANK, read from /proc)."""
    children = set()
    for task in Path(f"/proc/{launcher.pid}/task").iterdir():
        children |= {int(pid) for pid in (task / "children").read_text().split()}
    ranks = {}
    for pid in children:
        environ = dict(
            entry.split("=", 1) for entry in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in entry
        )
        if "RANK" in environ:
            ranks[int(environ["RANK"])] = pid
    return ranks


@pytest.mark.slow
def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, tiny_model):
    from test_distributed import BIN, launch_env, torchrun

    run_dir = tmp_path / "run"
    args = ["train", "tiny-cpu", "--output-dir", str(run_dir), *steps_of(12, 12)]
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", CLI[0], *args]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=launch_env())
    wait_for_logged_steps(launcher, run_dir, 2)
    os.kill(_worker_pids(launcher)[1], signal.SIGTERM)  # rank 1 only: rank 0 learns of it at the step's end
    out, err = launcher.communicate()
    assert launcher.returncode != 0 and re.search(r"exitcode\s*:\s*143\b", err), err[-3000:]
    line = one_line_with(out, "stopped at step ")  # printed by rank 0, which got no signal itself
    step = int(line.split()[3])
    assert line.startswith(f"stopped at step {step} by SIGTERM; checkpoint-{step} is saved")
    assert complete_checkpoints(run_dir) == [step] and step < 12
    for rank in (0, 1):  # both ranks took part in the one checkpoint, at the same step
        assert (run_dir / f"checkpoint-{step}" / f"rng_state_{rank}.pth").is_file()
    assert [row["step"] for row in metrics(run_dir)] == list(range(1, step + 1))

    result = torchrun(2, *args, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"resuming from checkpoint-{step} (step {step})") == 2
    assert [row["step"] for row in metrics(run_dir)] == list(range(1, 13))
    assert not (run_dir / "train.lock").exists(), "rank 0 held the lock for the launch and let it go"
