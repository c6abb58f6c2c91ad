"""What training writes as it goes: metrics.jsonl, history.json, rollouts.jsonl, checkpoint markers, warnings and
the progress bar; and the stop past `grpo.max_sampling_logp_difference`.

`train` builds one `RunRecorder` per run: the reward functions hand it each generation batch's rewards, and its
TrainerCallback (`install`) writes at each logged step, checkpoint and epoch end. The file names are
`lowrank_rlvr.runs`'s, and so are a metrics.jsonl record's keys (`runs.LOGGED_METRICS`). Only the main process writes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from lowrank_rlvr.backends import ENTROPY_NOT_MEASURED
from lowrank_rlvr.collapse import collapse_warnings
from lowrank_rlvr.parity import ParityWarning, limit_exceeded, parity_warnings, sampling_values
from lowrank_rlvr.runs import LOGGED_METRICS, RunFolder
from lowrank_rlvr.runtime import Launch


class RunRecorder:
    """Writes metrics.jsonl, history.json and rollouts.jsonl as training goes, marks checkpoints complete, draws the
    progress bar, warns (one line, recorded in the step's `warnings`) when training collapses (`lowrank_rlvr.collapse`)
    or the sampler drifts from the trained policy (`lowrank_rlvr.parity`), and stops training past
    `grpo.max_sampling_logp_difference`.

    Only the main process writes. Per-example accuracies are gathered from all processes at each epoch's end.
    """

    def __init__(
        self, run: RunFolder, launch: Launch, resumed_step: int | None, sampling_limit: float | None = None,
        rollouts_every: int = 0, group_size: int = 2, reward_weights: list[float] = (1.0,),
    ):
        self.run = run
        self.launch = launch
        self.started = time.monotonic()
        self.epoch_correct: dict[int, list[float]] = defaultdict(list)
        self.history: dict[str, list[float]] = {}
        self.rows: list[dict] = []  # metrics.jsonl so far: what the collapse and parity detectors read
        self.entropy_note_said = False
        self.sampling_limit = sampling_limit
        self.rollouts_every, self.group_size, self.reward_weights = rollouts_every, group_size, list(reward_weights)
        self.batch: dict[str, Any] = {}  # this generation batch as the reward functions saw it
        self.stopped: str | None = None  # the error that ends training (past the sampling limit)
        if launch.is_main:
            run.keep_metrics_through(resumed_step)  # steps after the checkpoint are trained (and logged) again
            run.keep_rollouts_through(resumed_step)
            self.history = run.read_history() if resumed_step is not None else {}
            self.rows = run.read_metrics()

    def say_entropy_not_measured(self) -> None:
        """One line, once per run, on the main process: the trainer logs no entropy (see ENTROPY_NOT_MEASURED)."""
        if self.launch.is_main and not self.entropy_note_said:
            self.entropy_note_said = True
            self._say(ENTROPY_NOT_MEASURED)

    def record_rollouts(self, example_indices: list[int], rewards: list[float]) -> None:
        for index, reward in zip(example_indices, rewards):
            self.epoch_correct[int(index)].append(reward)

    def note_rewards(self, name: str, prompts, completions, answers, completion_ids, rewards: list[float]) -> None:
        """One reward function's view of the generation batch (the texts, and its rewards) for rollouts.jsonl."""
        if name not in self.batch.setdefault("rewards", {}):  # the texts are the same for every function
            self.batch.update(prompts=list(prompts), completions=list(completions), answers=list(answers),
                              lengths=[len(ids) for ids in completion_ids])
        self.batch["rewards"][name] = list(rewards)

    def install(self, trainer: Any) -> None:
        """Our callback goes first: its additions to a step's logs (collapse warnings) reach the trackers after it."""
        trainer.callback_handler.callbacks.insert(0, self.callback(trainer.args.max_steps))
        if self.launch.is_main and self.rollouts_every:
            from lowrank_rlvr.trl_hooks import capture_generation

            capture_generation(trainer, lambda output: self._keep_rollouts(trainer.state.global_step + 1, output))

    def _keep_rollouts(self, step: int, output: dict) -> None:
        """After a generation batch is scored (for the coming optimizer step): its first group, when due."""
        from lowrank_rlvr.rollouts import due, group_record, per_completion_gap

        batch, self.batch = self.batch, {}
        if not due(step, self.rollouts_every) or not batch.get("rewards"):
            return
        names = [name for name in ("format", "accuracy") if name in batch["rewards"]]  # reward_functions' order
        advantages = output.get("advantages")
        self.run.append_rollouts(group_record(
            step, batch["prompts"], batch["answers"], batch["completions"], batch["lengths"],
            {name: batch["rewards"][name] for name in names}, self.reward_weights[-len(names):],
            None if advantages is None else [float(a) for a in advantages], per_completion_gap(output), self.group_size,
        ))

    def callback(self, max_steps: int) -> Any:
        from transformers import TrainerCallback

        recorder = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    recorder._start_progress(max_steps, state.global_step)

            def on_log(self, args, state, control, logs=None, **kwargs):
                # this callback runs before the trackers' (see `install`): what it adds to `logs` reaches them too
                if state.is_world_process_zero and logs and "reward" in logs:
                    recorder._write_metrics(state.global_step, logs)
                if logs and "reward" in logs:  # every process: the sampling figures are gathered, the same on all
                    recorder._stop_past_sampling_limit(state.global_step, logs, control)

            def on_save(self, args, state, control, **kwargs):
                if recorder.launch.distributed:  # every process writes its own rng_state_<rank>.pth: wait for all
                    import torch.distributed

                    torch.distributed.barrier()
                if state.is_world_process_zero:  # the Trainer has written every file of the checkpoint by now
                    recorder.run.mark_complete(state.global_step)

            def on_epoch_end(self, args, state, control, **kwargs):
                recorder._close_epoch(state.is_world_process_zero)

            def on_train_end(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    recorder._stop_progress()

        return _Callback()

    # -- progress bar --------------------------------------------------------------------------------------------
    def _start_progress(self, max_steps: int, step: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]GRPO"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        )
        self.task = self.progress.add_task("train", total=max_steps, completed=step, status="")
        self.progress.start()

    def _stop_progress(self) -> None:
        if getattr(self, "progress", None):
            self.progress.stop()

    def _say(self, line: str) -> None:
        """One line above the progress bar (or plain, without one)."""
        if getattr(self, "progress", None):
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, flush=True)

    # -- files ---------------------------------------------------------------------------------------------------
    def _write_metrics(self, step: int, logs: dict) -> None:
        record = {
            "step": step,
            **{ours: logs.get(trl) for ours, trl in LOGGED_METRICS.items()},
            "kl": logs.get("kl", 0.0),  # TRL 1.14.2 logs kl only when beta != 0 (grpo_trainer.py:3338)
            **sampling_values(logs),  # None without a separate sampler (vLLM)
            "warnings": [],
            "seconds": round(time.monotonic() - self.started, 3),
        }
        if record["entropy"] is None:  # whatever the backend: a run never passes a missing entropy off as measured
            self.say_entropy_not_measured()
        warnings_now: list[Any] = [*collapse_warnings(self.rows + [record]), *parity_warnings(self.rows + [record])]
        stop = limit_exceeded(record, self.sampling_limit)
        if stop is not None:  # recorded like a warning, then `_stop_past_sampling_limit` ends training
            warnings_now.append(ParityWarning(step, "sampling_limit", stop))
        record["warnings"] = [{"kind": w.kind, "message": w.message} for w in warnings_now]
        self.rows.append(record)
        self.run.append_metrics(record)
        for warning in warnings_now:
            logs[f"warnings/{warning.kind}"] = 1.0  # into the trackers' stream as well
            if warning.kind != "sampling_limit":  # that one ends the run as its error line
                self._say(f"warning: {warning.message}")
        if getattr(self, "progress", None):
            status = f"acc {record['train_accuracy']:.2f}  reward {record['reward_mean']:.2f}"
            self.progress.update(self.task, completed=step, status=status)

    def _stop_past_sampling_limit(self, step: int, logs: dict, control: Any) -> None:
        """Past the limit the Trainer stops after this step (the trackers still get it), and `train` ends
        the run with the error before an adapter is saved."""
        stop = limit_exceeded({"step": step, **sampling_values(logs)}, self.sampling_limit)
        if stop is not None:
            self.stopped = stop
            control.should_training_stop = True

    def _close_epoch(self, is_main: bool) -> None:
        from accelerate.utils import gather_object

        local = [(index, sum(values), len(values)) for index, values in self.epoch_correct.items()]
        self.epoch_correct.clear()
        totals: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
        for index, correct, count in gather_object(local) if self.launch.distributed else local:
            totals[index][0] += correct
            totals[index][1] += count
        if not is_main:
            return
        for index, (correct, count) in sorted(totals.items()):
            self.history.setdefault(str(index), []).append(correct / count)
        self.run.write_history(self.history)
