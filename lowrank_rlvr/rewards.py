"""The verifiable math reward: the last `\\boxed{}` of a response checked against the gold answer by math-verify.

Pure: these functions take text and return rewards; `lowrank_rlvr.grading` runs them in worker processes.
Training (GRPO) and evaluation both grade through this module, so a run is scored by the rule it was trained on.

Rules (where they differ from the paper's verl reward or the Qwen2.5-Math evaluation, it is said here):
- The final answer is the content of the *last* `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5` without braces) in
  the response. There is no fallback to "the answer is ..." or to the last number (the Qwen2.5-Math evaluation has
  one): a response without a box scores 0, so the policy is paid only for answers it committed to. A last box that is
  never closed (a truncated response) is no answer either.
- Equivalence is math-verify's: both sides are parsed from LaTeX only (`LatexExtractionConfig`), so numbers, fractions,
  decimals (`12.8` == `\\frac{64}{5}`), intervals, sets, tuples, matrices and expressions compare by value. Gold
  answers may come as numbers or strings: `27.0` == `27`.
- Model output is never run as Python. math-verify's plain-expression extractor (`ExprExtractionConfig`) goes through
  `sympy.parse_expr`, which calls `eval`; we do not enable it. The LaTeX path builds SymPy objects from an ANTLR
  parse tree.
- Hostile input scores 0 and cannot stall training: an answer over `MAX_ANSWER_CHARS` characters or nested deeper
  than `MAX_NESTING` brackets is no answer; every item has a time limit (`timeout_seconds`, an interval timer
  inside the worker, which stops SymPy expanding `10^{10^{10^{10}}}`), and `grading.Grader` adds a hard-kill backstop for
  work stuck in C code, where no Python signal handler runs: the worker is killed and replaced.
- `format_reward` is the paper's "format correction" baseline: 1 for a box whose content math-verify can parse at all.
- math-verify scores arithmetic left undone (`\\boxed{17+25}`) as equal to its value, so a policy can be paid for
  restating the question. `grading.Grader(require_simplified_answer=True)` scores such answers 0 (`is_unevaluated_arithmetic`;
  `restates_question` tells whether one copies the problem's own expression).

Example:
    >>> math_reward("... so the pressure is $\\\\boxed{\\\\frac{64}{5}}$.", "12.8")
    1.0
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

from lowrank_rlvr.defaults import GRADER_TIMEOUT_SECONDS

KINDS = ("accuracy", "format")
REFLECTION_WORDS = ("rethink", "recheck", "recalculate", "wait", "verify")  # the self-reflection words the paper counts
_REFLECTION = re.compile(r"\b(" + "|".join(REFLECTION_WORDS) + r")\b", re.IGNORECASE)
MAX_ANSWER_CHARS = 1_000  # the longest gold answer in our six benchmarks is well under this
MAX_NESTING = 50  # brackets deeper than this inside one answer are hostile, not mathematics

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_NUMERAL = r"\(?-?\d+(?:\.\d+)?\)?"
_OPERATOR = r"(?:\+|-|\*|\\times|\\cdot|\\div|÷|×)"  # not '/': `1/2` is a final answer
_UNEVALUATED = re.compile(rf"{_NUMERAL}(?:{_OPERATOR}{_NUMERAL})+")
_OPENERS = frozenset("{([")
_CLOSERS = frozenset("})]")


@dataclass(frozen=True)
class GradeResult:
    reward: float  # 1.0 or 0.0
    extracted: str | None  # the final answer taken from the response, None when there is none
    timed_out: bool  # grading did not finish (time limit, or the worker died on this item); reward is then 0.0


class GradingTimeout(BaseException):
    """Raised by the interval timer. A BaseException, so math-verify's and SymPy's `except Exception` cannot eat it."""


# --------------------------------------------------------------------------------------------------------------------
# Pure functions: extraction and one-item grading (used in-process and inside the workers)
# --------------------------------------------------------------------------------------------------------------------


def extract_answer(response: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (braces balanced), else None.

    None also for an unclosed last box, an empty box, and an answer that is too long or too deeply nested to be one.

    Example:
        >>> extract_answer("first \\\\boxed{1}, then \\\\boxed{\\\\frac{1}{2}}.")
        '\\\\frac{1}{2}'
    """
    if not isinstance(response, str):
        return None
    start = max(response.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    command = next(c for c in _BOX_COMMANDS if response.startswith(c, start))
    position = start + len(command)
    while position < len(response) and response[position] == " ":
        position += 1
    if position >= len(response):
        return None
    if response[position] != "{":
        if position == start + len(command):  # "\boxedx": another command name, not a box
            return None
        # "\boxed 5$" (no braces): the token up to whitespace or '$', as LaTeX reads one argument loosely
        token = response[position:].split("$", 1)[0].split(None, 1)
        answer = token[0].rstrip(".,") if token else ""
        return answer if _is_answer(answer) else None
    depth = 0
    for index in range(position, len(response)):
        char = response[index]
        if char == "{" and response[index - 1] != "\\":
            depth += 1
        elif char == "}" and response[index - 1] != "\\":
            depth -= 1
            if depth == 0:
                answer = response[position + 1 : index].strip()
                return answer if _is_answer(answer) else None
        if index - position > MAX_ANSWER_CHARS + 1:
            return None  # longer than any answer: stop scanning a hostile box early
    return None  # unclosed box: a truncated response


def _is_answer(text: str) -> bool:
    return 0 < len(text) <= MAX_ANSWER_CHARS and _nesting_depth(text) <= MAX_NESTING


def _nesting_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif char in _CLOSERS:
            depth = max(depth - 1, 0)
    return deepest


def is_unevaluated_arithmetic(answer: str) -> bool:
    """True for an answer that is arithmetic on numerals left undone: math-verify scores it equal to its value.

    Example:
        >>> [is_unevaluated_arithmetic(a) for a in ["17+25", "6 \\\\times 7", "42", "-3", "\\\\frac{1}{2}", "x+1"]]
        [True, True, False, False, False, False]
    """
    return bool(_UNEVALUATED.fullmatch(_squeeze(answer).strip("$")))


def restates_question(answer: str, problem: str) -> bool:
    """True when the answer is unevaluated arithmetic copied from the problem text: `17+25` for "What is 17+25?".

    Example:
        >>> restates_question("18 + 46", "What is 18+46?"), restates_question("64", "What is 18+46?")
        (True, False)
    """
    return is_unevaluated_arithmetic(answer) and _squeeze(answer).strip("$") in _squeeze(problem)


def answer_text(answer: Any) -> str:
    """A gold answer as a string: numbers as written, integral floats without '.0' (AMC's `27.0` -> `27`)."""
    if isinstance(answer, bool):
        return str(answer)
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    return str(answer).strip()


def math_reward(response: str, answer: str, timeout_seconds: float = GRADER_TIMEOUT_SECONDS) -> float:
    """1.0 if the last boxed answer of `response` equals `answer` (math-verify), else 0.0. In-process.

    The time limit is an interval timer, which Python delivers only to the main thread: called from another thread
    this function runs without a limit. Nothing in-process can stop work stuck in C code; use `Grader` (worker
    processes with a hard-kill backstop) for untrusted model output at scale.
    """
    return _grade_in_process(response, answer, "accuracy", timeout_seconds).reward


def format_reward(response: str, timeout_seconds: float = GRADER_TIMEOUT_SECONDS) -> float:
    """1.0 if the response ends its reasoning in a `\\boxed{}` that math-verify can parse, else 0.0 (in-process)."""
    return _grade_in_process(response, "", "format", timeout_seconds).reward


def _grade_in_process(response: str, answer: Any, kind: str, timeout_seconds: float) -> GradeResult:
    check_kind(kind)
    extracted = extract_answer(response)
    if extracted is None:
        return GradeResult(0.0, None, False)
    reward, timed_out = grade_extracted(extracted, answer_text(answer), kind, timeout_seconds)
    return GradeResult(reward, extracted, timed_out)


def grade_extracted(extracted: str, answer: str, kind: str, timeout_seconds: float) -> tuple[float, bool]:
    """(reward, timed_out) for one extracted answer; never raises for bad input."""
    try:
        with _time_limit(timeout_seconds):
            if kind == "format":
                parsed = _parse_boxed(extracted, fallback=False)
                return (1.0 if parsed else 0.0), False
            if _squeeze(extracted) == _squeeze(answer):
                return 1.0, False  # the same text is the same answer; skips SymPy for the commonest correct case
            gold = _parse_gold(answer)
            if not gold:
                return 0.0, False
            prediction = _parse_boxed(extracted, fallback=True)
            if not prediction:
                return 0.0, False
            return (1.0 if _verify(gold, prediction) else 0.0), False
    except GradingTimeout:
        return 0.0, True
    except Exception:  # math-verify/SymPy failures on odd input (RecursionError, MemoryError too) score 0
        logging.getLogger(__name__).debug("grading failed for %r vs %r", extracted, answer, exc_info=True)
        return 0.0, False


class _NoTimeoutWarning(logging.Filter):
    """math-verify warns that its own timeout is off; ours (`_time_limit` + the Grader backstop) is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_NO_TIMEOUT_WARNING = _NoTimeoutWarning()


@lru_cache(maxsize=4096)
def _parse_boxed(latex: str, fallback: bool) -> tuple:
    """math-verify's LaTeX extraction of `\\boxed{latex}`; cached because one-shot RLVR grades one gold 1,024 times."""
    from math_verify import LatexExtractionConfig, parse

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_NO_TIMEOUT_WARNING)  # idempotent

    return tuple(
        parse(
            "\\boxed{" + latex + "}",
            extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
            fallback_mode="first_match" if fallback else "no_fallback",
            parsing_timeout=None,  # our interval timer bounds the whole item; math-verify's alarm would cancel it
            raise_on_error=False,
        )
    )


@lru_cache(maxsize=256)
def _parse_gold(answer: str) -> tuple:
    """The gold answer parsed (with math-verify's string fallback); warns once per process for an unparsable one."""
    parsed = _parse_boxed(answer, fallback=True)
    if not parsed:
        logging.getLogger(__name__).warning("gold answer %r cannot be parsed: only an identical answer scores", answer)
    return parsed


def _verify(gold: tuple, prediction: tuple) -> bool:
    from math_verify import verify

    return verify(list(gold), list(prediction), timeout_seconds=None, raise_on_error=False)


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise GradingTimeout after `seconds` (float precision, ITIMER_REAL). A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread() or seconds is None or seconds <= 0:
        yield
        return

    def _expire(signum, frame):
        raise GradingTimeout()

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _squeeze(latex: str) -> str:
    return "".join(latex.split())


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"reward kind must be one of {KINDS} (got {kind!r})")


def reflection_per_1k_tokens(completions: list[str], completion_token_counts: list[int]) -> float:
    """Self-reflection words the paper tracks (REFLECTION_WORDS) per 1,000 completion tokens.

    >>> reflection_per_1k_tokens(["Wait, let me verify.", "42"], [6, 2])
    250.0
    """
    words = sum(len(_REFLECTION.findall(text)) for text in completions)
    return 1000.0 * words / max(sum(completion_token_counts), 1)
