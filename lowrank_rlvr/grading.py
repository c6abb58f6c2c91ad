"""The grading worker pool: math-verify in worker processes, each item under a hard time limit.

The reward rules are `lowrank_rlvr.rewards` (pure, in-process). Why processes: math-verify's time limit is
`signal.alarm`-style, which Python delivers only to a main thread, and nothing in-process stops work stuck in C code.
A worker bounds each item with an interval timer; the parent kills a worker that stays silent past the limit and
starts a replacement, so hostile model output costs at most its own time limit.

Example:
    >>> with Grader(workers=2) as grader:
    ...     [r.reward for r in grader.grade(["\\\\boxed{27}", "no box"], ["27.0", "27"])]
    [1.0, 0.0]
"""

from __future__ import annotations

import math
import multiprocessing
import signal
import time
from collections import deque
from typing import Any

from lowrank_rlvr.defaults import GRADER_TIMEOUT_SECONDS, GRADER_WORKERS
from lowrank_rlvr.rewards import GradeResult, answer_text, check_kind, extract_answer, grade_extracted, is_unevaluated_arithmetic

BACKSTOP_GRACE_SECONDS = 1.0  # a worker silent this long past its item's time limit is killed and replaced
WORKER_MEMORY_BYTES = 4 * 1024**3  # address space a worker may add: a runaway computation fails, not the host
WORKER_START_SECONDS = 120.0  # a worker that has not imported math-verify by then is broken


def _worker_main(connection, timeout_seconds: float) -> None:
    """A grading worker: import math-verify, say ready, then grade (index, extracted, answer, kind) until None."""
    import resource

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    try:  # headroom on top of what is mapped now: spawn re-imports the parent's __main__ (maybe torch) first
        limit = _mapped_bytes() + WORKER_MEMORY_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (ValueError, OSError):  # pragma: no cover - a hard limit already lower than ours, or no /proc
        pass
    # the slow part of starting, done before saying ready: imports and ANTLR's first parse
    grade_extracted("\\frac{1}{2}", "0.5", "accuracy", WORKER_START_SECONDS)
    connection.send(("ready",))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, extracted, answer, kind = message
        reward, timed_out = grade_extracted(extracted, answer, kind, timeout_seconds)
        connection.send((index, reward, timed_out))


def _mapped_bytes() -> int:
    """Virtual memory this process has mapped (Linux /proc)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmSize not found")


class _Worker:
    """One grading process and the parent's view of it: the items sent and not yet answered, oldest first."""

    def __init__(self, context, timeout_seconds: float):
        parent_end, child_end = context.Pipe(duplex=True)
        self.connection = parent_end
        self.process = context.Process(target=_worker_main, args=(child_end, timeout_seconds), daemon=True)
        self.process.start()
        child_end.close()
        self.started_at = time.monotonic()
        self.ready = False
        self.in_flight: deque[int] = deque()  # item indices sent, in the order the worker grades them
        self.progress_at = math.inf  # when the worker last started an item (sent to an idle worker, or answered one)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()


class Grader:
    """Persistent pool of grading processes with a hard time limit per item. Use as a context manager.

    Workers start with "spawn" (safe in a process that has torch, CUDA or vLLM threads) and live across `grade`
    calls. Each distinct (answer, gold) pair of a call is graded once. A worker bounds each item with an interval timer
    (`timeout_seconds`); the parent kills a worker that answers nothing for `BACKSTOP_GRACE_SECONDS` longer than that
    (stuck in C code, or crashed), scores the item it was on 0 with `timed_out=True`, hands the worker's other items
    to the rest of the pool and starts a replacement.
    """

    # Items a worker holds at once. 1: an item never queues behind a slow one on a busy worker while another worker
    # is free (measured: queueing 4 deep let two 5 s hostile items on one worker stall a step for 10 s); the
    # round trips cost little: 4,000 trivial items took 1.06 s at 1 vs 0.86 s at 4 (2 workers, loaded 2-core box),
    # against 2-20 ms to grade a typical item.
    IN_FLIGHT = 1

    def __init__(
        self, workers: int = GRADER_WORKERS, timeout_seconds: float = GRADER_TIMEOUT_SECONDS,
        require_simplified_answer: bool = False,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1 (got {workers})")
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be > 0 (got {timeout_seconds})")
        self.num_workers = workers
        self.timeout_seconds = float(timeout_seconds)
        self.require_simplified_answer = require_simplified_answer  # unevaluated arithmetic scores 0, any kind
        self.replaced_workers = 0  # workers killed after a hang or found dead, over the Grader's life
        self._context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(self._context, self.timeout_seconds) for _ in range(workers)]
        self._closed = False

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (they change when a hung worker is replaced)."""
        return [worker.process.pid for worker in self._workers]

    def wait_ready(self) -> None:
        """Block until every worker has imported math-verify (grade() does not need this; benchmarks do)."""
        while not all(worker.ready for worker in self._workers):
            self._collect(deque(), [], [])

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - last resort; close() is the contract
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Stop the workers (politely, then by force). Safe to call twice."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for worker in self._workers:
            try:
                worker.connection.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.process.join(timeout=2)
            worker.kill()
        self._workers = []

    def grade(self, responses: list[str], answers: list[Any], kind: str = "accuracy") -> list[GradeResult]:
        """Grade responses[i] against answers[i]; results in input order. A slow item costs only its own time limit."""
        if self._closed:
            raise RuntimeError("Grader is closed")
        check_kind(kind)
        if len(responses) != len(answers):
            raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
        extracted = [extract_answer(response) for response in responses]
        golds = [answer_text(answer) for answer in answers]
        rejected = [self.require_simplified_answer and a is not None and is_unevaluated_arithmetic(a) for a in extracted]
        # One-shot RLVR grades many rollouts of one problem: each distinct (answer, gold) pair is graded once per call.
        keys = [
            None if answer is None or reject else (answer, gold if kind == "accuracy" else "")
            for answer, gold, reject in zip(extracted, golds, rejected)
        ]
        first_of: dict[tuple[str, str], int] = {}
        for i, key in enumerate(keys):
            if key is not None:
                first_of.setdefault(key, i)
        rewards = [0.0] * len(responses)  # responses without a (simplified) final answer score 0 without a worker
        timed_out = [False] * len(responses)
        todo = deque(first_of.values())
        while todo or any(worker.in_flight for worker in self._workers):
            self._dispatch(todo, extracted, golds, kind)
            self._collect(todo, rewards, timed_out)
        sources = [i if key is None else first_of[key] for i, key in enumerate(keys)]
        return [GradeResult(rewards[source], extracted[i], timed_out[source]) for i, source in enumerate(sources)]

    def _dispatch(self, todo: deque, extracted: list, golds: list, kind: str) -> None:
        """Top every ready worker up to IN_FLIGHT items, round-robin so a short batch is spread over all of them."""
        # a worker that died while idle (killed between calls) gets nothing; _collect replaces it
        ready = [worker for worker in self._workers if worker.ready and worker.process.is_alive()]
        while todo and any(len(worker.in_flight) < self.IN_FLIGHT for worker in ready):
            for worker in sorted(ready, key=lambda w: len(w.in_flight)):
                if not todo or len(worker.in_flight) >= self.IN_FLIGHT:
                    continue
                index = todo.popleft()
                try:
                    worker.connection.send((index, extracted[index], golds[index], kind))
                except (OSError, ValueError):  # died just now: the item goes back, _collect replaces the worker
                    todo.appendleft(index)
                    ready.remove(worker)
                    break
                if not worker.in_flight:
                    worker.progress_at = time.monotonic()
                worker.in_flight.append(index)

    def _collect(self, todo: deque, rewards: list, timed_out: list) -> None:
        """Wait for results (or the nearest deadline); replace workers that died or hung."""
        from multiprocessing.connection import wait

        limit = self.timeout_seconds + BACKSTOP_GRACE_SECONDS
        now = time.monotonic()
        deadlines = [w.progress_at + limit for w in self._workers if w.in_flight]
        deadlines += [w.started_at + WORKER_START_SECONDS for w in self._workers if not w.ready]
        wait_seconds = min(max(0.0, min(deadlines, default=now + 1.0) - now), 1.0)
        wait([w.connection for w in self._workers] + [w.process.sentinel for w in self._workers], timeout=wait_seconds)
        now = time.monotonic()
        for slot, worker in enumerate(self._workers):
            try:
                while worker.connection.poll():
                    message = worker.connection.recv()
                    if message[0] == "ready":
                        worker.ready = True
                        continue
                    index, reward, item_timed_out = message
                    rewards[index], timed_out[index] = reward, item_timed_out
                    worker.in_flight.popleft()  # the worker answers in the order it was sent
                    worker.progress_at = now
            except (EOFError, OSError):
                pass  # dead: handled below
            dead = not worker.process.is_alive()
            hung = bool(worker.in_flight) and now > worker.progress_at + limit
            if not worker.ready and (dead or now > worker.started_at + WORKER_START_SECONDS):
                worker.kill()
                raise RuntimeError(f"grading worker failed to start (exit code {worker.process.exitcode})")
            if dead or hung:
                if worker.in_flight:
                    # the item it was on: a hang or a crash (segfault, out of memory) scores 0, never retried
                    stuck = worker.in_flight.popleft()
                    rewards[stuck], timed_out[stuck] = 0.0, True
                    todo.extendleft(reversed(worker.in_flight))  # the rest were never started: grade elsewhere
                worker.kill()
                self.replaced_workers += 1
                self._workers[slot] = _Worker(self._context, self.timeout_seconds)
