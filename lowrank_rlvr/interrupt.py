"""A run that is told to stop saves first: SIGTERM, SIGINT (Ctrl-C) and the time budget `grpo.max_time`.

Clusters preempt with SIGTERM, people press Ctrl-C, Kaggle and Colab sessions end at their time limit. Without this a
stop loses every step since the last `save_steps` checkpoint. With it, `train`:

- on the first SIGTERM or SIGINT (or when the longest step and save seen so far would not fit in what is left of
  `grpo.max_time`) finishes the optimizer step it is in, saves a complete checkpoint of that step (the Trainer's own
  save, marked complete by `RunRecorder` as every checkpoint is), prints one line and exits with 128 + the signal's
  number (75, EX_TEMPFAIL, for the time budget): `--resume` continues from that step;
- on a second signal exits at once without saving, and says which checkpoint `--resume` will continue from;
- when a checkpoint save fails part way (a full disk, a quota, an I/O error), stops with one line naming the
  checkpoint and the error: the torn checkpoint has no completion marker, so the previous one stays the newest
  complete one and `--resume` continues from it.

Under a launcher every rank decides at the same step: the stop request (a signal number, or the time budget) is
reduced across ranks with a MAX at every step end, so a signal that reached one rank stops them all at that step, and
every rank writes its part of the one checkpoint. A terminal's Ctrl-C reaches each rank twice (from the terminal and
again from torchrun, which passes on what it receives): under a launcher a repeat of the same signal within
`REPEAT_SECONDS` counts as the same one. torchrun SIGKILLs its workers `--shutdown-timeout` seconds (default 30) after
passing a signal on: give it more than a step and a save take.

transformers 5.17 has `TrainingArguments.enable_jit_checkpoint`, which is not used here: SIGTERM only, a save from
inside the optimizer step that our completion marker never sees, no exit code, no time budget
(transformers/trainer_jit_checkpoint.py, `JITCheckpointCallback.on_pre_optimizer_step`).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from lowrank_rlvr.errors import UserError, first_line
from lowrank_rlvr.runs import RunFolder
from lowrank_rlvr.runtime import Launch

SIGNALS = (signal.SIGTERM, signal.SIGINT)
TIME_BUDGET = 1  # the stop request's code for the time budget; signals use their numbers (all > 1)
TIME_BUDGET_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: "try again later", i.e. with --resume
REPEAT_SECONDS = 2.0  # under a launcher: a repeat of the same signal this soon is the launcher passing it on


class Stopped(Exception):
    """Training stopped early and saved: `message` is the one line to print, `exit_code` the process's status."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class GracefulStop:
    """The stop requests of one `train` launch and the callback that acts on them at a step's end.

    `resume_command` is what the stop line tells the user to run next. Signal handlers are ours from the Trainer's
    `on_train_begin` to its `on_train_end` (to the process's end once a stop is under way); before, and after a run
    that ends normally, a signal does what it always did.
    """

    def __init__(self, run: RunFolder, launch: Launch, max_time: float | None, resume_command: str):
        self.run = run
        self.launch = launch
        self.max_time = max_time
        self.resume_command = resume_command
        self.started = time.monotonic()  # the budget counts from here: setup and model loading are in it
        self.signal_number: int | None = None
        self.signalled_at = 0.0
        self.longest_step = 0.0
        self.longest_save = 0.0
        self.saving: str | None = None  # the checkpoint being written right now, for the message if it fails
        self.stopped: tuple[int, int] | None = None  # (step, code) once a stop is decided
        self._last_step_end = self.started
        self._steps_done = 0  # global_step at the last step end: the step in progress is the next one
        self._previous_handlers: dict[int, Any] = {}

    # -- what train.py calls -------------------------------------------------------------------------------------
    def callback(self) -> Any:
        """A TrainerCallback; add it last, so that it sees the `should_save` of transformers' DefaultFlowCallback."""
        from transformers import TrainerCallback

        stop = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                stop._install_handlers()
                stop._last_step_end, stop._steps_done = time.monotonic(), state.global_step

            def on_step_end(self, args, state, control, **kwargs):
                stop._at_step_end(args, state, control)

            def on_save(self, args, state, control, **kwargs):
                stop.longest_save = max(stop.longest_save, time.monotonic() - stop._last_step_end)
                stop.saving = None

            def on_train_end(self, args, state, control, **kwargs):
                if stop.stopped is None:  # stopping: ours stay, so a launcher's SIGTERM (another rank exited
                    stop._restore_handlers()  # first) cannot cut this rank's last lines short

        return _Callback()

    def raise_if_stopped(self) -> None:
        """After `trainer.train()`: a Stopped with the line to print when training stopped early (it has saved)."""
        if self.stopped is None:
            return
        step, code = self.stopped
        saved = f"{self.run.checkpoint_dir(step).name} is saved; continue with: {self.resume_command}"
        if code == TIME_BUDGET:
            used = _hours_minutes(time.monotonic() - self.started)
            reason = f"grpo.max_time ({_hours_minutes(self.max_time)}) would run out within another step and a save"
            raise Stopped(f"stopped at step {step}: {reason} ({used} used); {saved}", TIME_BUDGET_EXIT_CODE)
        raise Stopped(f"stopped at step {step} by {signal.Signals(code).name}; {saved}", 128 + code)

    def failed_save(self, exc: BaseException) -> UserError | None:
        """The one-line error for an exception raised while a checkpoint (or the final adapter) was being written,
        else None (not a save's: the caller re-raises it)."""
        if self.saving is None:
            return None
        return UserError(f"{self.saving}: the save failed part way ({first_line(exc)}); {self._resumes_from()}")

    # -- signals -------------------------------------------------------------------------------------------------
    def _install_handlers(self) -> None:
        for number in SIGNALS:
            self._previous_handlers[number] = signal.signal(number, self._on_signal)

    def _restore_handlers(self) -> None:
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers.clear()

    def _on_signal(self, number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        now = time.monotonic()
        if self.signal_number is None:
            self.signal_number, self.signalled_at = number, now
            self._say(f"{name}: finishing step {self._steps_done + 1}, then saving a checkpoint and stopping (another "
                      "signal stops at once, without saving)")
            return
        if self.launch.distributed and number == self.signal_number and now - self.signalled_at < REPEAT_SECONDS:
            return  # the launcher passing on the signal the terminal already sent us
        self._say(f"second signal ({name}): stopped at once, without saving; {self._resumes_from()}")
        os._exit(128 + number)  # at once: no cleanup that could hang (the kernel drops the run folder's lock)

    def _say(self, line: str) -> None:
        if self.launch.is_main:  # os.write, not print: a signal handler may interrupt a print in progress
            os.write(1, (line + "\n").encode())

    def _resumes_from(self) -> str:
        newest = self.run.checkpoints()
        where = f"continues from {newest[0].path.name}" if newest else "trains from the start (no complete checkpoint)"
        return f"{self.resume_command} {where}"

    # -- the decision, at every step's end -----------------------------------------------------------------------
    def _at_step_end(self, args: Any, state: Any, control: Any) -> None:
        now = time.monotonic()
        self.longest_step = max(self.longest_step, now - self._last_step_end)
        self._last_step_end, self._steps_done = now, state.global_step
        code = self.signal_number or 0
        if not code and self.max_time is not None:
            left = self.max_time - (now - self.started)
            if left < self.longest_step + max(self.longest_save, self.longest_step):  # a save not seen yet: ~ a step
                code = TIME_BUDGET
        if self.launch.distributed:
            code = _max_across_ranks(code, args.device)
        if code and state.global_step < state.max_steps:  # at max_steps the run ends (and saves) as it would anyway
            control.should_save = True
            control.should_training_stop = True
            self.stopped = (state.global_step, code)
        if control.should_save:
            self.saving = str(self.run.checkpoint_dir(state.global_step))


def _max_across_ranks(code: int, device: Any) -> int:
    import torch
    import torch.distributed as dist

    value = torch.tensor([code], dtype=torch.int64, device=device)  # [1]; on the GPU under NCCL
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def _hours_minutes(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    if minutes < 1:
        return f"{seconds:.3g}s"
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
