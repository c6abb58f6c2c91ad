"""The math reward: extraction, equivalence, hostile input, and the worker pool's time limits and worker replacement.

All grading is real math-verify; hangs are real (a power tower that SymPy would expand for ever, a worker frozen with
SIGSTOP as a stand-in for one stuck in C code, where no signal handler can run).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from lowrank_rlvr.grading import Grader
from lowrank_rlvr.rewards import (
    MAX_ANSWER_CHARS,
    GradeResult,
    _grade_in_process,  # the in-process path, to read its timed_out flag (math_reward returns the reward alone)
    extract_answer,
    format_reward,
    math_reward,
)

def _wait_until_dead(pid: int) -> None:
    """Until process `pid` is a zombie or gone (Linux /proc): a deterministic point after a SIGKILL."""
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        os.sched_yield()


POWER_TOWER = ("\\boxed{10^{10^{10^{10}}}}", "10^{10^{10^{9}}}")  # no time limit: runs for ever (measured)


# ---- extraction -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The answer is $\\boxed{27}$.", "27"),
        ("First \\boxed{3}, on second thought \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\fbox{42}", "42"),
        ("so the answer is $\\boxed 5$.", "5"),
        ("\\boxed{ 12.8 }", "12.8"),
        ("\\boxed{\\boxed{7}}", "7"),
    ],
)
def test_extract_answer_takes_the_last_box(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    "response",
    [
        "The answer is 27.",  # no box: no fallback to the last number
        "we get \\boxed{",  # truncated inside the box
        "\\boxed{3} and then \\boxed{\\frac{1}{2",  # the last box never closes: a truncated response, not the first box
        "\\boxed{}",
        "\\boxedfoo{3}",
        "",
    ],
)
def test_extract_answer_is_none_without_a_complete_final_box(response):
    assert extract_answer(response) is None


# ---- equivalence ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boxed", "answer"),
    [
        ("\\frac{64}{5}", "12.8"),  # the paper's pi_1 label, written as a fraction
        ("12.8", "\\frac{64}{5}"),
        ("27", "27.0"),  # AMC gold answers are floats
        ("27.0", "27"),
        ("\\dfrac{4}{3}", "\\frac{4}{3}"),
        ("-\\frac{2023}{2024}", "-\\frac{2023}{2024}"),
        ("0.5", "\\frac{1}{2}"),
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("[-2,7]", "x \\in [-2,7]"),
        ("\\{2, 1\\}", "\\{1,2\\}"),
        ("(x+1)^2", "x^2+2x+1"),
        ("x = 5", "5"),
        ("\\frac{2}{\\sqrt{2}}", "\\sqrt{2}"),
        ("50^\\circ", "50"),
        ("\\text{(C)}", "C"),
        ("6 \\text{ cm}", "6"),
    ],
)
def test_equivalent_forms_score_one(boxed, answer):
    assert math_reward(f"Reasoning... so the answer is $\\boxed{{{boxed}}}$.", answer) == 1.0


@pytest.mark.parametrize("answer", [27.0, 27, "27.0", " 27 "])
def test_numeric_answers_are_normalised(answer):
    assert math_reward("\\boxed{27}", answer) == 1.0


@pytest.mark.parametrize(
    ("boxed", "answer"),
    [
        ("26", "27"),
        ("\\frac{4}{3}", "1.333"),  # rounded too early
        ("(1,2)", "[1,2)"),  # open vs half-open interval
        ("\\{1,2,3\\}", "\\{1,2\\}"),
        ("x^2+1", "(x+1)^2"),
        ("3.0000001", "3"),
        ("-12.8", "12.8"),
    ],
)
def test_wrong_answers_score_zero(boxed, answer):
    assert math_reward(f"\\boxed{{{boxed}}}", answer) == 0.0


def test_no_box_scores_zero_even_with_the_right_number_in_the_text():
    assert math_reward("After simplifying, the pressure is 12.8 pounds per square foot.", "12.8") == 0.0


def test_several_boxes_only_the_last_counts():
    assert math_reward("Maybe \\boxed{3}? No: \\boxed{5}.", "5") == 1.0
    assert math_reward("Maybe \\boxed{5}? No: \\boxed{3}.", "5") == 0.0


def test_format_reward_needs_a_parsable_box_not_the_right_answer():
    assert format_reward("so \\boxed{41}") == 1.0
    assert format_reward("so \\boxed{\\text{Evelyn}}") == 1.0
    assert format_reward("the answer is 41") == 0.0
    assert format_reward("\\boxed{???}") == 0.0
    assert format_reward("\\boxed{\\frac{1}{") == 0.0


# ---- hostile input, in-process ---------------------------------------------------------------------------------


def test_huge_response_is_cut_off_and_scores_zero():
    """Cut off before any parsing: no answer is extracted, so math-verify never sees it (no time limit is needed)."""
    assert extract_answer("x" * 200_000 + "\\boxed{" + "9" * 200_000 + "}") is None
    assert extract_answer("\\boxed{" + "9" * (MAX_ANSWER_CHARS + 1) + "}") is None
    assert math_reward("\\boxed{" + "9" * (MAX_ANSWER_CHARS + 1) + "}", "9" * (MAX_ANSWER_CHARS + 1)) == 0.0
    assert math_reward("y" * 200_000 + " so \\boxed{27}", "27") == 1.0  # long reasoning is fine; the answer is short


def test_deep_nesting_is_no_answer_and_scores_zero():
    """Refused by depth before any parsing (MAX_NESTING): no answer is extracted, math-verify never sees it."""
    hostile = ["\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
               "\\boxed{" + "\\sqrt{" * 60 + "1" + "}" * 60 + "}"]
    assert [extract_answer(response) for response in hostile] == [None, None, None]
    assert [math_reward(response, "1") for response in hostile] == [0.0, 0.0, 0.0]
    assert extract_answer("\\boxed{" + "\\sqrt{" * 10 + "1" + "}" * 10 + "}") is not None  # shallow nesting is fine


def test_power_tower_times_out_in_process():
    # the in-process grading says why it scored 0: the interval timer stopped it (timed_out), not a parse failure
    assert _grade_in_process(*POWER_TOWER, kind="accuracy", timeout_seconds=1.0) == GradeResult(0.0, "10^{10^{10^{10}}}", True)
    assert math_reward(*POWER_TOWER, timeout_seconds=1.0) == 0.0


def test_model_output_is_never_run_as_python(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"eval(\"open('{marker}', 'w')\")",
        f"exec(compile('open(\"{marker}\",\"w\")','x','exec'))",
    ]
    for payload in payloads:
        assert math_reward(f"\\boxed{{{payload}}}", "0") == 0.0
        assert math_reward("\\boxed{0}", payload) == 0.0  # a hostile gold answer, too
    with Grader(workers=1, timeout_seconds=2) as grader:
        results = grader.grade([f"\\boxed{{{p}}}" for p in payloads], ["0"] * len(payloads))
    assert [r.reward for r in results] == [0.0] * len(payloads)
    assert not marker.exists()


def test_in_process_timer_is_restored_after_grading():
    def handler(signum, frame):  # pragma: no cover - never fires
        pass

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        math_reward("\\boxed{1}", "1")
        assert signal.getsignal(signal.SIGALRM) is handler
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_math_reward_works_outside_the_main_thread():
    # math-verify's own signal.alarm raises ValueError in threads; ours runs there without a limit
    scores = []
    thread = threading.Thread(target=lambda: scores.append(math_reward("\\boxed{\\frac{64}{5}}", "12.8")))
    thread.start()
    thread.join()
    assert scores == [1.0]


# ---- the worker pool ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout_seconds=2.0) as pool:
        yield pool


def test_grader_returns_results_in_input_order(grader):
    responses = ["\\boxed{%d}" % n for n in range(40)] + ["no box", "\\boxed{\\frac{64}{5}}"]
    answers = [str(n if n % 3 else n + 1) for n in range(40)] + ["1", "12.8"]
    results = grader.grade(responses, answers)
    assert [r.reward for r in results] == [float(n % 3 != 0) for n in range(40)] + [0.0, 1.0]
    assert [r.extracted for r in results] == [str(n) for n in range(40)] + [None, "\\frac{64}{5}"]
    assert all(isinstance(r, GradeResult) and not r.timed_out for r in results)


def test_grader_pool_survives_across_calls(grader):
    pids = grader.worker_pids
    for _ in range(3):
        assert [r.reward for r in grader.grade(["\\boxed{1}", "\\boxed{2}"], ["1", "1"])] == [1.0, 0.0]
    assert grader.worker_pids == pids
    assert all(pid != os.getpid() for pid in pids)


def test_grader_workers_have_a_memory_cap(grader):
    grader.wait_ready()  # the cap is set once math-verify is imported
    for pid in grader.worker_pids:
        limits = open(f"/proc/{pid}/limits").read()
        line = next(line for line in limits.splitlines() if line.startswith("Max address space"))
        assert line.split()[3] != "unlimited"


def test_grader_format_kind(grader):
    results = grader.grade(["\\boxed{41}", "41", "\\boxed{???}"], ["0", "0", "0"], kind="format")
    assert [r.reward for r in results] == [1.0, 0.0, 0.0]


def test_grader_rejects_bad_calls(grader):
    with pytest.raises(ValueError, match="kind"):
        grader.grade(["\\boxed{1}"], ["1"], kind="length")
    with pytest.raises(ValueError, match="answers"):
        grader.grade(["\\boxed{1}", "\\boxed{2}"], ["1"])


def test_a_one_shot_step_of_1024_rollouts_is_graded_right(grader):
    """How long it takes is measured in scripts/bench_rewards.py (benchmarks/results/), not bounded here."""
    finals = ["12.8", "\\frac{64}{5}", "16", "3.2", "12.5", "no box"]
    responses = [f"Reasoning step {n}. " * 40 + f"So $\\boxed{{{finals[n % 6]}}}$." for n in range(1024)]
    responses = [r.replace("\\boxed{no box}", "12.8") for r in responses]
    replaced = grader.replaced_workers
    results = grader.grade(responses, ["12.8"] * 1024)
    assert [r.reward for r in results] == [1.0 if n % 6 < 2 else 0.0 for n in range(1024)]
    assert not any(r.timed_out for r in results) and grader.replaced_workers == replaced


def test_hostile_items_time_out_without_blocking_the_batch(grader):
    responses = ["\\boxed{%d}" % n for n in range(30)]
    answers = [str(n) for n in range(30)]
    responses[5], answers[5] = POWER_TOWER
    responses[20], answers[20] = POWER_TOWER
    responses[12] = "x" * 200_000 + "\\boxed{" + "(" * 5000 + ")" * 5000 + "}"
    replaced = grader.replaced_workers
    results = grader.grade(responses, answers)
    hostile = {5, 12, 20}
    assert [r.reward for r in results] == [0.0 if n in hostile else 1.0 for n in range(30)]
    # the power towers were stopped by the workers' own time limit (no worker had to be killed for them); the
    # 200k-character item never reached a worker (no answer extracted); the other 27 were graded as usual
    assert [n for n, r in enumerate(results) if r.timed_out] == [5, 20] and results[12].extracted is None
    assert grader.replaced_workers == replaced
    assert grader.grade(["\\boxed{7}"], ["7"])[0].reward == 1.0  # the pool is fine afterwards


def test_hung_worker_is_killed_and_replaced():
    # SIGSTOP freezes a worker the way work stuck in C code does: no Python signal handler can run.
    with Grader(workers=2, timeout_seconds=1.0) as grader:
        grader.wait_ready()  # a worker frozen while still starting would just never be used
        frozen = grader.worker_pids[0]
        os.kill(frozen, signal.SIGSTOP)
        results = grader.grade(["\\boxed{%d}" % n for n in range(12)], [str(n) for n in range(12)])
        assert grader.replaced_workers == 1
        assert frozen not in grader.worker_pids
        timed_out = [n for n, r in enumerate(results) if r.timed_out]
        assert len(timed_out) == 1  # only the item the frozen worker held; its queued items went elsewhere
        assert [r.reward for n, r in enumerate(results) if n not in timed_out] == [1.0] * 11
        # the replacement works
        assert [r.reward for r in grader.grade(["\\boxed{2}"] * 6, ["2"] * 6)] == [1.0] * 6
    with pytest.raises(ProcessLookupError):
        os.kill(frozen, 0)


def test_dead_worker_is_replaced_between_calls():
    with Grader(workers=1, timeout_seconds=1.0) as grader:
        assert grader.grade(["\\boxed{1}"], ["1"])[0].reward == 1.0
        dead = grader.worker_pids[0]
        os.kill(dead, signal.SIGKILL)
        _wait_until_dead(dead)  # the kill has landed before the next call: no race with a fixed sleep
        results = grader.grade(["\\boxed{1}", "\\boxed{2}"], ["1", "2"])
        assert grader.replaced_workers == 1
        assert [r.reward for r in results] == [1.0, 1.0]  # items sent to the dead worker were not lost


def test_close_stops_the_workers():
    grader = Grader(workers=2, timeout_seconds=1.0)
    pids = grader.worker_pids
    grader.close()
    grader.close()  # twice is fine
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="closed"):
        grader.grade(["\\boxed{1}"], ["1"])
