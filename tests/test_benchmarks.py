"""The six benchmark files load completely, with the gold answers the Qwen2.5-Math suite uses."""

from __future__ import annotations

import json

import pytest

from lowrank_rlvr.benchmarks import BENCHMARKS, last_boxed, load_benchmark, parse_benchmarks
from lowrank_rlvr.errors import UserError

EXPECTED_COUNTS = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "minerva_math": 272, "olympiadbench": 675}


@pytest.fixture(scope="module")
def all_problems(shared_data):
    return {name: load_benchmark(name, shared_data / "benchmarks") for name in BENCHMARKS}


def test_each_benchmark_loads_every_problem_with_unique_ids(all_problems):
    assert {name: len(problems) for name, problems in all_problems.items()} == EXPECTED_COUNTS
    for name, problems in all_problems.items():
        assert len({p.id for p in problems}) == len(problems), name
        assert all(p.problem.strip() and p.answer.strip() for p in problems), name


def test_gold_answers_follow_the_qwen_math_layout(all_problems, shared_data):
    first = {name: problems[0] for name, problems in all_problems.items()}
    assert first["math500"].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first["aime24"].answer == "204"
    assert first["aime25"].answer == "70"
    assert first["amc23"].answer == "27"  # stored as the float 27.0
    assert first["minerva_math"].answer == "1.6"  # last \boxed{} of the solution, not a field
    assert first["olympiadbench"].answer == "2"  # final_answer[0]
    assert first["olympiadbench"].problem.startswith("Xenia and Sergey")  # the 'question' field
    aime24 = {p.id: p.answer for p in all_problems["aime24"]}
    rows = [json.loads(line) for line in (shared_data / "benchmarks" / "aime24.jsonl").open()]
    assert all(aime24[str(row["id"])] == str(int(row["answer"])) for row in rows)  # '025' -> '25'
    olympiad = [p.answer for p in all_problems["olympiadbench"]]
    assert "69,84" in olympiad  # '$69$,$84$': every '$' removed, not only the outer ones
    assert not any("$" in answer for answer in olympiad)


def test_minerva_gold_is_the_last_boxed_answer_of_each_solution(all_problems, shared_data):
    rows = [json.loads(line) for line in (shared_data / "benchmarks" / "minerva_math.jsonl").open()]
    golds = [p.answer for p in all_problems["minerva_math"]]
    assert golds == [last_boxed(row["solution"]).strip() for row in rows]
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("no box") is None


def test_oracle_boxed_gold_scores_at_least_99_percent_and_wrong_answers_do_not(all_problems):
    from lowrank_rlvr.rewards import Grader

    with Grader(workers=2) as grader:
        for name, problems in all_problems.items():
            answers = [p.answer for p in problems]
            oracle = grader.grade([f"The answer is $\\boxed{{{a}}}$." for a in answers], answers)
            accuracy = sum(r.reward for r in oracle) / len(oracle)
            assert accuracy >= 0.99, f"{name}: oracle accuracy {accuracy:.3f}"
            shifted = answers[1:] + answers[:1]  # every response answers the next problem
            wrong = grader.grade([f"\\boxed{{{a}}}" for a in shifted], answers)
            assert sum(r.reward for r in wrong) / len(wrong) < 0.5, name


def test_a_broken_line_is_reported_with_file_and_line(tmp_path):
    (tmp_path / "aime24.jsonl").write_text('{"problem": "p", "answer": "1"}\n{"problem": oops}\n')
    with pytest.raises(UserError, match=r"aime24.jsonl: line 2: not valid JSON"):
        load_benchmark("aime24", tmp_path)
    (tmp_path / "amc23.jsonl").write_text('{"problem": "p"}\n')
    with pytest.raises(UserError, match=r"amc23.jsonl: line 1: no gold answer"):
        load_benchmark("amc23", tmp_path)
    with pytest.raises(UserError, match="benchmark file not found"):
        load_benchmark("math500", tmp_path)


def test_benchmark_names_are_checked():
    assert parse_benchmarks(None) == list(BENCHMARKS)
    assert parse_benchmarks("aime24, math500,aime24") == ["aime24", "math500"]
    with pytest.raises(UserError, match="unknown benchmark math5000"):
        parse_benchmarks("math5000")


def test_without_data_dir_the_hub_copy_is_requested(tmp_path, monkeypatch):
    """Offline here: the Hub path must fail as a one-line UserError naming the dataset id, not a traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    with pytest.raises(UserError, match="HuggingFaceH4/aime_2024"):
        load_benchmark("aime24")
