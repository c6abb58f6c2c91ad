"""`random_calculation`: arithmetic problems made from a seed when asked for, so no model can have memorised them.

Why: a base model that completes a benchmark's problems from part of their text has seen them (Qwen2.5-Math-7B on
MATH-500, "Reasoning or Memorization?", arXiv 2507.10532); a gain there may be recall that RLVR unlocked. Problems
generated here did not exist before the command ran. `eval --benchmarks random_calculation` reports them beside the
paper's six and never averages them into their mean (`benchmarks.GENERATED_BENCHMARKS`).

What: each problem is one expression over positive integers (1..20) and fractions (p/q, q in 2..9), joined by
`difficulty` operations from + - x / (with parentheses where precedence needs them), e.g. at difficulty 3:
`\\frac{3}{4} \\times (7 - \\frac{5}{2}) + 9`. The answer is computed exactly with Python's `fractions` and written
the way math-verify reads a gold answer: an integer (`-12`) or a fraction in lowest terms (`\\frac{27}{8}`,
`-\\frac{3}{4}`). Expressions whose value has a denominator over `MAX_DENOMINATOR` or a size over `MAX_MAGNITUDE`
are drawn again, as is a division by zero.

Reproducible: the same `seed`, `difficulty` and `count` give the same problems for the same `GENERATOR_VERSION` (the
generator draws from `random.Random` seeded with a string, which Python hashes the same way on every platform). Any
change to what is generated bumps the version, which is part of every problem id, so `eval` never resumes old
responses against new problems.

Example:
    >>> problems = RandomCalculation(count=2, seed=0, difficulty=1).problems()
    >>> [p.id for p in problems]
    ['rc-v1-s0-d1-0', 'rc-v1-s0-d1-1']
    >>> RandomCalculation(count=2, seed=0, difficulty=1).problems() == problems
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

from lowrank_rlvr.benchmarks import RANDOM_CALCULATION, Problem
from lowrank_rlvr.errors import UserError

GENERATOR_VERSION = 1
DEFAULT_COUNT = 200
DEFAULT_SEED = 0
DEFAULT_DIFFICULTY = 3  # operations per problem
MAX_DIFFICULTY = 12
MAX_DENOMINATOR = 1_000
MAX_MAGNITUDE = 100_000
INSTRUCTION = "Give the exact value as an integer or a fraction in lowest terms, and put your final answer within \\boxed{}."
_FRACTION_SHARE = 0.3  # of the leaves; the others are integers
_OPERATORS = ("+", "-", "*", "/")
_LATEX = {"+": "+", "-": "-", "*": "\\times", "/": "\\div"}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True)
class _Expression:
    latex: str
    value: Fraction
    operator: str | None  # the outermost operator; None for a number


@dataclass(frozen=True)
class RandomCalculation:
    """What to generate: `count` problems of `difficulty` operations each, from `seed`."""

    count: int = DEFAULT_COUNT
    seed: int = DEFAULT_SEED
    difficulty: int = DEFAULT_DIFFICULTY

    def __post_init__(self):
        if not 1 <= self.difficulty <= MAX_DIFFICULTY:
            raise UserError(f"random_calculation difficulty must be 1..{MAX_DIFFICULTY} operations (got {self.difficulty})")
        if self.count < 1:
            raise UserError(f"random_calculation needs at least 1 problem (got {self.count})")

    @property
    def source(self) -> str:
        """What `eval` records as these problems' source, where a benchmark read from a file records the file."""
        return f"generated: seed {self.seed}, difficulty {self.difficulty}"

    def problems(self) -> list[Problem]:
        rng = random.Random(f"{RANDOM_CALCULATION}:v{GENERATOR_VERSION}:{self.seed}:{self.difficulty}")
        prefix = f"rc-v{GENERATOR_VERSION}-s{self.seed}-d{self.difficulty}"
        problems = []
        for number in range(self.count):
            expression = _draw(rng, self.difficulty)
            text = f"Compute ${expression.latex}$. {INSTRUCTION}"
            problems.append(Problem(f"{prefix}-{number}", text, answer_latex(expression.value)))
        return problems


def answer_latex(value: Fraction) -> str:
    """An exact value as math-verify reads a gold answer: `-12`, `\\frac{27}{8}`, `-\\frac{3}{4}`.

    Example:
        >>> answer_latex(Fraction(-3, 4)), answer_latex(Fraction(10, 2))
        ('-\\\\frac{3}{4}', '5')
    """
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _draw(rng: random.Random, operations: int) -> _Expression:
    while True:
        try:
            expression = _expression(rng, operations)
        except ZeroDivisionError:
            continue
        value = expression.value
        if value.denominator <= MAX_DENOMINATOR and abs(value) <= MAX_MAGNITUDE:
            return expression


def _expression(rng: random.Random, operations: int) -> _Expression:
    if operations == 0:
        return _number(rng)
    left_operations = rng.randint(0, operations - 1)
    left = _expression(rng, left_operations)
    right = _expression(rng, operations - 1 - left_operations)
    operator = rng.choice(_OPERATORS)
    value = {
        "+": lambda: left.value + right.value,
        "-": lambda: left.value - right.value,
        "*": lambda: left.value * right.value,
        "/": lambda: left.value / right.value,  # ZeroDivisionError: drawn again
    }[operator]()
    latex = f"{_operand(left, operator, right_side=False)} {_LATEX[operator]} {_operand(right, operator, right_side=True)}"
    return _Expression(latex, value, operator)


def _operand(expression: _Expression, operator: str, right_side: bool) -> str:
    """Parenthesised where reading left to right with the usual precedence would change the value."""
    if expression.operator is None:
        return expression.latex
    inner, outer = _PRECEDENCE[expression.operator], _PRECEDENCE[operator]
    needs = inner < outer or (right_side and inner == outer and operator in ("-", "/"))
    return f"({expression.latex})" if needs else expression.latex


def _number(rng: random.Random) -> _Expression:
    if rng.random() < _FRACTION_SHARE:
        denominator = rng.randint(2, 9)
        numerator = rng.randint(1, 3 * denominator)
        while numerator % denominator == 0:
            numerator = rng.randint(1, 3 * denominator)
        value = Fraction(numerator, denominator)
        return _Expression(f"\\frac{{{value.numerator}}}{{{value.denominator}}}", value, None)
    value = rng.randint(1, 20)
    return _Expression(str(value), Fraction(value), None)
