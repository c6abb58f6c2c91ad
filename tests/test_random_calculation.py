"""`random_calculation`: generated from a seed, stable for a seed and version, answers right by our grader."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest

from lowrank_rlvr.benchmarks import BENCHMARKS, parse_benchmarks
from lowrank_rlvr.cli import app
from lowrank_rlvr.random_calculation import DEFAULT_COUNT, GENERATOR_VERSION, RandomCalculation

# The first problems of seed 0 at the default difficulty, as generator version 1 makes them. If this test fails the
# generated problems changed: bump GENERATOR_VERSION (it is in every id, so old responses are not resumed) and
# paste the new ones here.
SEED0_DIFFICULTY3 = [
    ("rc-v1-s0-d3-0", "10 \\times 15 \\div 10 \\times \\frac{1}{3}", "5"),
    ("rc-v1-s0-d3-1", "\\frac{5}{4} \\div 18 + 7 - \\frac{13}{7}", "\\frac{2627}{504}"),
    ("rc-v1-s0-d3-2", "13 \\div (\\frac{3}{8} \\times 12 \\div 13)", "\\frac{338}{9}"),
]


def expression_of(problem_text: str) -> str:
    return re.fullmatch(r"Compute \$(.+)\$\. .+", problem_text).group(1)


def value_of(latex: str) -> Fraction:
    """The value of a generated expression, computed here independently of the generator (Fractions, Python syntax)."""
    python = re.sub(r"\d+", lambda number: f"F({number.group()})", latex)
    python = re.sub(r"\\frac\{(F\(\d+\))\}\{(F\(\d+\))\}", r"(\1 / \2)", python)
    python = python.replace("\\times", "*").replace("\\div", "/")
    assert re.fullmatch(r"[\dF()\s*/+-]+", python), python  # nothing but numbers and operators is evaluated
    return eval(python, {"F": Fraction})  # noqa: S307 - a test-built arithmetic string


def answer_value(answer: str) -> Fraction:
    match = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", answer)
    if match:
        value = Fraction(int(match.group(2)), int(match.group(3)))
        assert value.denominator == int(match.group(3)), f"{answer} is not in lowest terms"
        return -value if match.group(1) else value
    return Fraction(int(answer))


def test_the_same_seed_and_version_give_the_same_problems():
    problems = RandomCalculation().problems()
    assert len(problems) == DEFAULT_COUNT and GENERATOR_VERSION == 1
    assert [(p.id, expression_of(p.problem), p.answer) for p in problems[:3]] == SEED0_DIFFICULTY3
    assert RandomCalculation().problems() == problems
    assert len({p.id for p in problems}) == len(problems)


def test_seed_and_difficulty_change_the_problems():
    base = [p.problem for p in RandomCalculation(count=20).problems()]
    assert [p.problem for p in RandomCalculation(count=20, seed=1).problems()] != base
    hard = RandomCalculation(count=20, difficulty=6).problems()
    operators = [len(re.findall(r"\\times|\\div| \+ | - ", expression_of(p.problem))) for p in hard]
    assert operators == [6] * 20, "difficulty is the number of operations"
    assert [len(re.findall(r"\\times|\\div| \+ | - ", expression_of(p.problem)))
            for p in RandomCalculation(count=20, difficulty=1).problems()] == [1] * 20


@pytest.mark.parametrize("difficulty", [1, 3, 8])
def test_every_answer_is_the_exact_value_of_its_expression(difficulty):
    for problem in RandomCalculation(count=100, seed=7, difficulty=difficulty).problems():
        assert answer_value(problem.answer) == value_of(expression_of(problem.problem)), problem


def test_the_oracle_scores_100_percent_through_our_grader_and_a_wrong_one_0(cli, tmp_path):
    problems = RandomCalculation(count=DEFAULT_COUNT, seed=3).problems()
    rows = [{"response": f"So the value is $\\boxed{{{p.answer}}}$.", "answer": p.answer} for p in problems]
    # off by one, in the same format: the grader must tell it apart
    rows += [{"response": f"$\\boxed{{{p.answer} + 1}}$", "answer": p.answer, "wrong": True} for p in problems[:20]]
    source = tmp_path / "oracle.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = cli.invoke(app, ["grade", str(source), "--output", str(tmp_path / "graded.jsonl"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    graded = [json.loads(line) for line in (tmp_path / "graded.jsonl").read_text().splitlines()]
    assert [g["reward"] for g in graded if not g.get("wrong")] == [1.0] * DEFAULT_COUNT
    assert [g["reward"] for g in graded if g.get("wrong")] == [0.0] * 20


def test_it_is_named_not_default_and_the_six_stay_the_default():
    assert parse_benchmarks(None) == list(BENCHMARKS)
    assert parse_benchmarks("math500,random_calculation") == ["math500", "random_calculation"]


def test_eval_reports_it_beside_the_six_never_in_their_average(cli, tiny_model, benchmark_dir, tmp_path):
    out = tmp_path / "report.json"
    result = cli.invoke(app, ["eval", "builtin:tiny-qwen2", "--benchmarks", "math500,random_calculation",
                              "--data-dir", str(benchmark_dir), "--limit", "3", "--max-tokens", "8",
                              "--backend", "hf", "--difficulty", "2", "--calculation-seed", "5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["average"] == report["benchmarks"]["math500"]["accuracy"]
    assert report["benchmarks"]["random_calculation"]["num_problems"] == 3
    records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    ids = [r["id"] for r in records if r["benchmark"] == "random_calculation"]
    assert ids == [p.id for p in RandomCalculation(seed=5, difficulty=2).problems()[:3]]
    assert "random_calculation: generated problems, not in the average" in result.output


def test_eval_on_random_calculation_alone_has_no_average(cli, tiny_model, tmp_path):
    out = tmp_path / "report.json"
    result = cli.invoke(app, ["eval", "builtin:tiny-qwen2", "--benchmarks", "random_calculation", "--limit", "2",
                              "--max-tokens", "8", "--backend", "hf", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["average"] is None
    assert "| **average** | **-** |" in result.output


@pytest.mark.parametrize("difficulty", ["0", "13"])
def test_a_difficulty_out_of_range_is_one_line_before_any_model(cli, difficulty, tmp_path):
    result = cli.invoke(app, ["eval", "builtin:no-such-model", "--benchmarks", "random_calculation",
                              "--difficulty", difficulty, "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: random_calculation difficulty must be 1..12 operations (got {difficulty})"]
