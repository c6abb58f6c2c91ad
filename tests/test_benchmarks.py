"""The benchmark files load completely, with the gold answers the Qwen2.5-Math suite uses; without --data-dir the
paper's files are read (shipped, or fetched once and checked), with --hub the Hub's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lowrank_rlvr import benchmarks
from lowrank_rlvr.benchmarks import BENCHMARKS, benchmark_source, last_boxed, load_benchmark, parse_benchmarks
from lowrank_rlvr.errors import UserError

SHIPPED = ("math500", "minerva_math", "olympiadbench")
EXPECTED_COUNTS = {"math500": 500, "minerva_math": 272, "olympiadbench": 675}
STAND_INS = Path(__file__).resolve().parent / "data" / "benchmarks"


@pytest.fixture(scope="module")
def all_problems():
    return {name: load_benchmark(name) for name in SHIPPED}  # no data_dir: the shipped files


def test_each_shipped_benchmark_loads_every_problem_with_unique_ids(all_problems, paper_data):
    assert {name: len(problems) for name, problems in all_problems.items()} == EXPECTED_COUNTS
    for name, problems in all_problems.items():
        assert len({p.id for p in problems}) == len(problems), name
        assert all(p.problem.strip() and p.answer.strip() for p in problems), name
        assert benchmark_source(name) == str(paper_data / "benchmarks" / f"{name}.jsonl")
    assert sorted(p.stem for p in (paper_data / "benchmarks").glob("*.jsonl")) == sorted(SHIPPED)
    assert set(SHIPPED) | set(benchmarks.FETCHED) == {"math500", "aime24", "amc23", "minerva_math", "olympiadbench",
                                                      "aime25"}  # the paper's six: shipped, or fetched by the user


def test_gold_answers_follow_the_qwen_math_layout(all_problems):
    first = {name: problems[0] for name, problems in all_problems.items()}
    assert first["math500"].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first["minerva_math"].answer == "1.6"  # last \boxed{} of the solution, not a field
    assert first["olympiadbench"].answer == "2"  # final_answer[0]
    assert first["olympiadbench"].problem.startswith("Xenia and Sergey")  # the 'question' field
    olympiad = [p.answer for p in all_problems["olympiadbench"]]
    assert "69,84" in olympiad  # '$69$,$84$': every '$' removed, not only the outer ones
    assert not any("$" in answer for answer in olympiad)
    # AIME and AMC, on the tests' stand-ins in the paper's layout: '025' -> '25', AMC's float 27.0 -> '27'
    assert [p.answer for p in load_benchmark("aime24", STAND_INS)] == ["25", "123", "49"]
    assert [p.answer for p in load_benchmark("aime25", STAND_INS)] == ["70", "99", "512"]
    assert [p.answer for p in load_benchmark("amc23", STAND_INS)] == ["27", "36", "2.5"]
    assert [p.id for p in load_benchmark("aime24", STAND_INS)] == ["1", "2", "3"]  # the file's own ids


def test_a_benchmark_that_is_not_shipped_names_the_command_that_fetches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_RLVR_CACHE", str(tmp_path))
    fetched = tmp_path / "benchmarks" / "aime24.jsonl"
    with pytest.raises(UserError) as missing:
        load_benchmark("aime24")
    url = benchmarks.FETCH_URL.format(name="aime24")
    assert f"curl -fL --create-dirs -o {fetched} {url}" in str(missing.value)
    assert url.startswith("https://raw.githubusercontent.com/ypwang61/One-Shot-RLVR/21ed529")
    fetched.parent.mkdir()
    fetched.write_bytes((STAND_INS / "aime24.jsonl").read_bytes())  # not the paper's file: refused
    with pytest.raises(UserError, match="not the paper's aime24 file"):
        load_benchmark("aime24")
    # the file with the recorded SHA-256 is read (here the stand-in's digest stands in for the paper's)
    monkeypatch.setitem(benchmarks.FETCHED, "aime24", hashlib.sha256(fetched.read_bytes()).hexdigest())
    assert [p.answer for p in load_benchmark("aime24")] == ["25", "123", "49"]
    assert benchmark_source("aime24") == str(fetched)


def test_minerva_gold_is_the_last_boxed_answer_of_each_solution(all_problems, paper_data):
    rows = [json.loads(line) for line in (paper_data / "benchmarks" / "minerva_math.jsonl").open()]
    golds = [p.answer for p in all_problems["minerva_math"]]
    assert golds == [last_boxed(row["solution"]).strip() for row in rows]
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("no box") is None


@pytest.mark.slow  # grades all 1,447 shipped gold answers twice: about 100 s on a loaded 2-core machine
def test_oracle_boxed_gold_scores_at_least_99_percent_and_wrong_answers_do_not(all_problems):
    from lowrank_rlvr.grading import Grader

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


def test_with_hub_the_hub_copy_is_requested(tmp_path, monkeypatch):
    """Offline here: the Hub path must fail as a one-line UserError naming the dataset id, not a traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    with pytest.raises(UserError, match="HuggingFaceH4/aime_2024"):
        load_benchmark("aime24", hub=True)
    assert benchmark_source("math500", hub=True) == "hf:HuggingFaceH4/MATH-500"
    with pytest.raises(UserError, match="give --data-dir or --hub, not both"):
        load_benchmark("math500", STAND_INS, hub=True)
