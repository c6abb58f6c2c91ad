"""The run folder: the one place that knows its file names, how they are read back and how they are written safely.

`train` writes a run folder; `eval`, `report`, `merge` and `select` read it. None of them names a file of the run
folder: they ask a `RunFolder`. Its layout (README's "The run folder" table is checked against `LAYOUT` by a test):

    config.yaml          the resolved config; under `resolved`: the processes and the effective batch
    metrics.jsonl        one line per logged step (keys: METRIC_KEYS)
    rollouts.jsonl       one group's completions every `grpo.log_rollouts_steps` steps (lowrank_rlvr.rollouts)
    history.json         per-example training accuracy per epoch (the paper's format; a `select` HISTORY)
    checkpoint-N/        adapter, optimizer, scheduler, RNG, step; complete only once `checkpoint_complete` is in it
    adapter/             the final LoRA adapter
    report/              plots and report.html
    tensorboard/, wandb/ the trackers' own files (grpo.report_to)
    eval_by_step.jsonl   accuracy vs step (`eval --run`); eval/step-N.json(l) the reports and responses behind it
    eval_report.json     `eval --adapter RUN/adapter` (RUN/checkpoint-N: eval_report-checkpoint-N.json)
    train.lock           while `train` writes the folder: its pid, host and start (`RunFolder.writer_lock`)
    comparison/          `compare RUN OTHER...` with this run first: plots, comparison.html, comparison.md

Writes are atomic (a staging file renamed over the target), so a killed process never leaves a half-written
config.yaml, history.json or adapter; JSONL files are appended line by line, and a torn last line (a job killed
mid-write, or one still running) is ignored by the reader.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import atomic_output, read_json, read_jsonl, read_text
from lowrank_rlvr.parity import SAMPLING_KEYS

COMPLETE_MARKER = "checkpoint_complete"
EVAL_REPORT = "eval_report.json"  # also `eval`'s default output outside a run folder
# metrics.jsonl key -> the TRL log key it records (TRL 1.14.2's names, and ours that the reward function logs);
# each row is "step", these, the sampler/trainer gap (parity.SAMPLING_KEYS: null without a separate sampler, vLLM),
# then "warnings" and "seconds"
LOGGED_METRICS = {
    "reward_mean": "reward",
    "reward_std": "reward_std",
    "train_accuracy": "rewards/accuracy/mean",
    "format_reward": "rewards/format/mean",  # reward.kind 'format' only
    "entropy": "entropy",  # null: not measured (the unsloth backend logs none)
    "completion_length": "completions/mean_length",
    "kl": "kl",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "reflection_per_1k_tokens": "reflection_per_1k_tokens",
    "grader_timeouts": "grader_timeouts",
}
METRIC_KEYS = ("step", *LOGGED_METRICS, *SAMPLING_KEYS, "warnings", "seconds")
LAYOUT = {  # path in the run folder -> what it holds (README's table follows this)
    "config.yaml": "the resolved config, and under `resolved` the processes and the effective batch",
    "metrics.jsonl": "one line per step: " + ", ".join(f"`{key}`" for key in METRIC_KEYS),
    "history.json": "per-example training accuracy per epoch, the paper's format (a valid `select` HISTORY)",
    "rollouts.jsonl": "at step 1 and every `grpo.log_rollouts_steps` steps, one group's completions: text, tokens, "
    "reward (and each reward's), advantage, sampler/trainer log-probability gap (vLLM only)",
    "checkpoint-N/": "every `save_steps`: adapter, optimizer, scheduler, RNG, step; complete only once "
    f"`{COMPLETE_MARKER}` is written",
    "adapter/": "the final LoRA adapter (safetensors; `adapter_config.json` names the base)",
    "report/": "plots (training vs held-out accuracy, entropy, length, reflection words, sampler/trainer gap, "
    "warnings), the latest rollouts and `report.html`, drawn at the end of training; `lowrank-rlvr report RUN` redraws",
    "eval_by_step.jsonl": "accuracy vs step, written by `eval --run` (with `eval/step-N.json` and `.jsonl`)",
    "eval_report.json": "`eval --adapter RUN/adapter` (`eval_report-checkpoint-N.json` for a checkpoint)",
    "tensorboard/": "TensorBoard's event files, with `grpo.report_to: tensorboard` (`wandb/`: wandb's, offline or not)",
    "train.lock": "there while `train` writes the folder (one writer at a time): its pid, host and start",
    "comparison/": "`lowrank-rlvr compare RUN OTHER...` with this run first (the treatment): plots, `comparison.html`, "
    "`comparison.md`",
}
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def layout_table() -> str:
    """LAYOUT as the markdown table README.md shows (a test keeps the two equal)."""
    return "\n".join(["| path | what |", "|---|---|", *(f"| `{path}` | {what} |" for path, what in LAYOUT.items())])


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


class RunFolder:
    """A run folder on disk. Cheap to make: nothing is read until asked."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    @classmethod
    def existing(cls, path: str | Path) -> RunFolder:
        """A run folder that must already be there (`eval --run`, `report`, `compare`): UserError if it is not."""
        run = cls(path)
        if run.path.is_file():
            raise UserError(f"{run.path}: run folder is a file, expected a folder")
        if not run.path.is_dir():
            raise UserError(f"run folder not found: {run.path}")
        return run

    # -- names ---------------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def history_path(self) -> Path:
        return self.path / "history.json"

    @property
    def rollouts_path(self) -> Path:
        return self.path / "rollouts.jsonl"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def eval_by_step_path(self) -> Path:
        return self.path / "eval_by_step.jsonl"

    def eval_step_report(self, step: int) -> Path:
        return self.path / "eval" / f"step-{step}.json"

    @property
    def comparison_dir(self) -> Path:
        return self.path / "comparison"

    @staticmethod
    def comparison_files(folder: Path) -> tuple[Path, Path]:
        """(page, markdown table) that `compare` writes into `folder`."""
        return folder / "comparison.html", folder / "comparison.md"

    def checkpoint_dir(self, step: int) -> Path:
        return self.path / f"checkpoint-{step}"

    @property
    def lock_path(self) -> Path:
        return self.path / "train.lock"

    @staticmethod
    def around(adapter_dir: str | Path) -> RunFolder | None:
        """The run folder holding `adapter_dir` (RUN/adapter or RUN/checkpoint-N), or None outside a run."""
        adapter_dir = Path(adapter_dir).expanduser().resolve()
        run = RunFolder(adapter_dir.parent)
        is_run = run.config_path.is_file() or run.metrics_path.is_file()
        return run if is_run and (adapter_dir.name == "adapter" or _CHECKPOINT.fullmatch(adapter_dir.name)) else None

    @staticmethod
    def step_of(adapter_dir: str | Path) -> int | None:
        """N for a `checkpoint-N` folder, else None."""
        match = _CHECKPOINT.fullmatch(Path(adapter_dir).expanduser().resolve().name)
        return int(match.group(1)) if match else None

    def eval_report_for(self, adapter_dir: str | Path) -> Path:
        """Where `eval --adapter` writes its report for this run's adapter/ or checkpoint-N/ (they don't collide)."""
        name = Path(adapter_dir).expanduser().resolve().name
        return self.path / (f"eval_report-{name}.json" if _CHECKPOINT.fullmatch(name) else EVAL_REPORT)

    # -- state ---------------------------------------------------------------------------------------------------
    def holds_training(self) -> bool:
        """True once training wrote a checkpoint or the final adapter here."""
        return any(self.path.glob("checkpoint-*")) or self.adapter_dir.exists()

    def is_finished(self, max_steps: int) -> bool:
        """The final adapter is saved and every step up to `max_steps` is logged."""
        if not (self.adapter_dir / "adapter_config.json").is_file():
            return False
        steps = [row["step"] for row in self.read_metrics()]
        return bool(steps) and max(steps) >= max_steps

    def checkpoints(self) -> list[Checkpoint]:
        """Completely written checkpoints, newest first (a run killed mid-save never leaves one that looks complete)."""
        found = []
        for folder in self.path.glob("checkpoint-*"):
            match = _CHECKPOINT.fullmatch(folder.name)
            if match and (folder / COMPLETE_MARKER).is_file():
                found.append(Checkpoint(int(match.group(1)), folder))
        return sorted(found, key=lambda c: c.step, reverse=True)

    def mark_complete(self, step: int) -> None:
        (self.checkpoint_dir(step) / COMPLETE_MARKER).write_text(json.dumps({"step": step}))

    # -- train.lock ----------------------------------------------------------------------------------------------
    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the run folder's one writer lock for the block: an exclusive `flock` on train.lock, which records
        who holds it. A second writer gets a UserError naming the holder. The kernel drops the lock when its process
        dies however it dies (the file stays, with the dead holder's record): the next writer takes it over and says
        so. Readers never take it; `train` takes it in its main process only (all ranks of a launch are one writer)."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        no_locks = None
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise UserError(
                    f"{self.path}: another `train` is writing this run folder ({holder}): let it finish or stop it "
                    "(one writer per run folder)"
                ) from None
            except OSError as exc:  # a file system without locks (some network and FUSE mounts)
                os.close(fd)
                no_locks = exc.strerror
                break
            try:  # the holder before us may have removed the file between our open and our lock: lock the new one
                if os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        if no_locks is not None:
            print(f"warning: {self.lock_path}: cannot lock ({no_locks}): one writer per run folder is not enforced "
                  "on this file system", flush=True)
            yield
            return
        previous = _lock_holder(fd)
        if previous:
            print(f"{self.lock_path}: taking over the lock of {previous}, which is gone", flush=True)
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        try:
            yield
        finally:
            self.lock_path.unlink(missing_ok=True)  # removed while still held: no one can lock the old file after us
            os.close(fd)

    # -- config.yaml ---------------------------------------------------------------------------------------------
    def write_config(self, cfg: Any, resolved: dict) -> Path:
        """The fully resolved config (defaults filled in) and, under `resolved`, facts of the launch."""
        import yaml

        self.path.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump({**cfg.model_dump(mode="json"), "resolved": resolved}, sort_keys=False)
        _write(self.config_path, text)  # atomic: the other processes may read it at the same time (--resume)
        return self.config_path

    def read_config(self) -> Any | None:
        """The run's validated `RunConfig` (data files are not required to exist any more), None without config.yaml."""
        from lowrank_rlvr.config import config_from_raw

        if not self.config_path.is_file():
            return None
        import yaml

        try:
            raw = yaml.safe_load(read_text(self.config_path, "run config"))
        except yaml.YAMLError as exc:
            raise UserError(f"{self.config_path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{self.config_path}: not a run config")
        raw.pop("resolved", None)
        return config_from_raw(raw, str(self.config_path), check_files=False)

    # -- metrics.jsonl and rollouts.jsonl: one JSON object per step -----------------------------------------------
    def read_metrics(self) -> list[dict]:
        """One row per step (the last written wins: a resumed run logs its steps again), sorted by step."""
        return _read_steps(self.metrics_path)

    def append_metrics(self, record: dict) -> None:
        _append(self.metrics_path, record)

    def keep_metrics_through(self, step: int | None) -> None:
        """Forget what was logged after `step` (None: everything): those steps are trained again."""
        _keep_steps_through(self.metrics_path, step)

    def read_rollouts(self) -> list[dict]:
        """One line per kept step (the last written wins), sorted by step; [] when none were kept."""
        return _read_steps(self.rollouts_path)

    def append_rollouts(self, record: dict) -> None:
        _append(self.rollouts_path, record)

    def keep_rollouts_through(self, step: int | None) -> None:
        """Forget the rollouts kept after `step` (None: all), as `keep_metrics_through` does."""
        if step is None or self.rollouts_path.is_file():
            _keep_steps_through(self.rollouts_path, step)

    # -- history.json --------------------------------------------------------------------------------------------
    def read_history(self) -> dict[str, list[float]]:
        if not self.history_path.is_file():
            return {}
        history = read_json(self.history_path, "history")
        if not isinstance(history, dict):
            raise UserError(f"{self.history_path}: expected a JSON object mapping example index to accuracies")
        return history

    def write_history(self, history: dict[str, list[float]]) -> None:
        _write(self.history_path, json.dumps(history, indent=1))

    # -- eval_by_step.jsonl --------------------------------------------------------------------------------------
    def read_eval_by_step(self) -> list[dict]:
        return _read_steps(self.eval_by_step_path)

    def write_eval_by_step(self, lines: list[dict]) -> None:
        _write(self.eval_by_step_path, "".join(json.dumps(line) + "\n" for line in lines))

    def read_eval_report(self, step: int | None = None) -> dict | None:
        """The `eval` report behind step `step` of eval_by_step.jsonl (eval/step-N.json), or with None the final
        adapter's `eval --adapter RUN/adapter` report (eval_report.json); None when it was not written."""
        path = self.eval_step_report(step) if step is not None else self.path / EVAL_REPORT
        if not path.is_file():
            return None
        report = read_json(path, "eval report")
        if not isinstance(report, dict) or not isinstance(report.get("benchmarks"), dict):
            raise UserError(f"{path}: not an eval report (expected 'benchmarks': {{name: result}})")
        return report

    # -- adapter/ ------------------------------------------------------------------------------------------------
    def staging_adapter_dir(self) -> Path:
        return self.path / "adapter.partial"

    def config_data(self) -> dict | None:
        """The run's config as plain data, for comparing with the paper's rows; None without a readable one."""
        try:
            cfg = self.read_config()
        except UserError:
            return None
        return cfg.model_dump(mode="json") if cfg is not None else None

    def publish_adapter(self) -> Path:
        """Move the fully saved staging adapter into place: adapter/ is complete or absent."""
        shutil.rmtree(self.adapter_dir, ignore_errors=True)
        self.staging_adapter_dir().rename(self.adapter_dir)
        return self.adapter_dir


def _read_steps(path: Path) -> list[dict]:
    return _by_step(path, read_jsonl(path, torn_tail_ok=True)) if path.is_file() else []


def _append(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _keep_steps_through(path: Path, step: int | None) -> None:
    kept = [] if step is None else [row for row in _read_steps(path) if row["step"] <= step]
    _write(path, "".join(json.dumps(row) + "\n" for row in kept))


def _by_step(path: Path, numbered: list[tuple[int, dict]]) -> list[dict]:
    rows: dict[int, dict] = {}
    for line_number, row in numbered:
        if not isinstance(row.get("step"), int):
            raise UserError(f"{path}: line {line_number}: expected a JSON object with an integer 'step'")
        rows[row["step"]] = row
    return [rows[step] for step in sorted(rows)]


def _lock_holder(fd: int) -> str:
    """'pid P on host H since T' from a lock file's record ('' for none, as written by `writer_lock`)."""
    raw = os.pread(fd, 4096, 0)
    try:
        record = json.loads(raw)
        return f"pid {record['pid']} on host {record['host']} since {record['since']}"
    except (ValueError, KeyError, TypeError):
        return f"a process that left {raw[:80]!r}" if raw.strip() else ""


def _write(path: Path, text: str) -> None:
    with atomic_output(path) as staging:
        staging.write_text(text)
