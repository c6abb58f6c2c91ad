"""Grading accuracy on a corpus built from real worked solutions, and agreement with the Qwen2.5-Math grader.

There are no model outputs on this machine, so the corpus is made from MATH500's `solution` fields (real worked
solutions ending in \\boxed{}) and variants of each whose correct label is known by construction:

    solution      the solution as written                                   label 1
    equivalent    the last box rewritten in an equivalent form              label 1  (only where a rewrite applies)
    wrong         the last box replaced by a wrong answer                   label 0
    truncated     cut off before its final box (a length-limited rollout)   label 0  (no final answer)
    early_box     a wrong box earlier in the text, the right one last       label 1
    late_box      the right box, then a wrong one last                      label 0

The tests grade a deterministic slice with the real `Grader`. Run this file as a script for the whole corpus, and
(optionally) agreement with the Qwen2.5-Math evaluation grader (`math_equal` on `extract_answer`/`strip_string`),
which is not vendored here: point QWEN_MATH_EVAL_DIR at a folder holding its `grader.py` and `parser.py`.

    OMP_NUM_THREADS=1 QWEN_MATH_EVAL_DIR=/path/to/Qwen2.5-Math/evaluation \\
        .venv/bin/python tests/test_rewards_corpus.py --output benchmarks/results/rewards-cpu-agreement.json
"""

from __future__ import annotations

import json
import os
import re
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from lowrank_rlvr.rewards import extract_answer
from lowrank_rlvr.grading import Grader

PAPER_DATA = Path(__file__).resolve().parents[1] / "data"  # the shipped copy of the paper's data (shipped.data_dir)
VARIANT_LABELS = {"solution": 1.0, "equivalent": 1.0, "wrong": 0.0, "truncated": 0.0, "early_box": 1.0, "late_box": 0.0}


# ---- corpus ---------------------------------------------------------------------------------------------------------


def equivalent_form(answer: str) -> str | None:
    """The same answer written another way, or None when no rewrite here applies."""
    text = answer.strip()
    number = re.fullmatch(r"-?\d+", text)
    if number:
        return f"{text}.0"  # as AMC gold answers and many model outputs write integers
    fraction = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", text)
    if fraction:
        sign, top, bottom = fraction.groups()
        value = Fraction(int(top), int(bottom))
        reduced = value.denominator
        while reduced % 2 == 0:
            reduced //= 2
        while reduced % 5 == 0:
            reduced //= 5
        if reduced == 1:  # terminating decimal: 64/5 -> 12.8
            return sign + format(float(value), "g")
        return f"{sign}{top}/{bottom}"
    decimal = re.fullmatch(r"(-?)(\d+\.\d+)", text)
    if decimal:
        value = Fraction(decimal.group(2))
        return f"{decimal.group(1)}\\frac{{{value.numerator}}}{{{value.denominator}}}"
    if "\\left" in text or "\\right" in text:
        return text.replace("\\left", "").replace("\\right", "")
    if "\\dfrac" in text:
        return text.replace("\\dfrac", "\\frac")
    interval = re.fullmatch(r"[a-z] ?\\in ?(.+)", text)
    if interval:
        return interval.group(1)
    if text.startswith("\\text{") and text.endswith("}") and text.count("{") == 1:
        return text[len("\\text{") : -1]
    return None


def wrong_form(answer: str, other_answer: str) -> str:
    """A different answer: an integer off by one, a flipped fraction, else another problem's answer."""
    text = answer.strip()
    if re.fullmatch(r"-?\d+", text):
        return str(int(text) + 1)
    fraction = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", text)
    if fraction and fraction.group(2) != fraction.group(3):
        sign, top, bottom = fraction.groups()
        return f"{sign}\\frac{{{bottom}}}{{{top}}}"
    return other_answer


def replace_last_box(solution: str, content: str) -> str:
    start = solution.rfind("\\boxed")
    depth, index = 0, solution.index("{", start)
    for end in range(index, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[end], 0)
        if depth == 0:
            return solution[:start] + "\\boxed{" + content + "}" + solution[end + 1 :]
    raise ValueError("unclosed box")


def build_corpus(rows: list[dict]) -> list[dict]:
    """Every variant of every MATH500 row: {problem, variant, response, answer, label}."""
    corpus = []
    for number, row in enumerate(rows):
        solution, answer = row["solution"], row["answer"]
        other = rows[(number + 1) % len(rows)]["answer"]
        wrong = wrong_form(answer, other)
        items = {"solution": solution}
        equivalent = equivalent_form(answer)
        if equivalent is not None:
            items["equivalent"] = replace_last_box(solution, equivalent)
        items["wrong"] = replace_last_box(solution, wrong)
        items["truncated"] = solution[: int(0.6 * solution.find("\\boxed"))]
        items["early_box"] = f"My first guess is $\\boxed{{{wrong}}}$, but let me check.\n\n{solution}"
        items["late_box"] = f"{solution}\n\nWait, I think it is actually $\\boxed{{{wrong}}}$."
        for variant, response in items.items():
            corpus.append({"problem": number, "variant": variant, "response": response, "answer": answer,
                           "label": VARIANT_LABELS[variant]})
    return corpus


def load_math500(paper_data: Path) -> list[dict]:
    path = paper_data / "benchmarks" / "math500.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- tests ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_slice(paper_data):
    rows = load_math500(paper_data)
    return build_corpus(rows[::10])  # 50 problems, every variant: a few hundred items


def test_corpus_has_every_variant(corpus_slice):
    assert {item["variant"] for item in corpus_slice} == set(VARIANT_LABELS)
    truncated = [item for item in corpus_slice if item["variant"] == "truncated"]
    assert all(extract_answer(item["response"]) is None for item in truncated)


def test_grader_matches_labels_on_real_solutions_and_variants(corpus_slice):
    with Grader(workers=2, timeout_seconds=5.0) as grader:
        results = grader.grade([item["response"] for item in corpus_slice], [item["answer"] for item in corpus_slice])
    wrong = [(item["variant"], item["answer"], result.extracted)
             for item, result in zip(corpus_slice, results) if result.reward != item["label"]]
    agreement = 1 - len(wrong) / len(corpus_slice)
    assert agreement >= 0.99, f"agreement {agreement:.4f}; mismatches: {wrong[:10]}"
    assert not any(result.timed_out for result in results)


@pytest.mark.skipif(
    not os.environ.get("QWEN_MATH_EVAL_DIR"), reason="set QWEN_MATH_EVAL_DIR to a Qwen2.5-Math evaluation/ folder"
)
def test_agrees_with_qwen_math_grader_on_boxed_responses(corpus_slice):
    reference = QwenReference(Path(os.environ["QWEN_MATH_EVAL_DIR"]))
    boxed = [item for item in corpus_slice if item["variant"] != "truncated"]
    with Grader(workers=2, timeout_seconds=5.0) as grader:
        results = grader.grade([item["response"] for item in boxed], [item["answer"] for item in boxed])
    scores = [reference.score(item["response"], item["answer"]) for item in boxed]
    agree = sum(result.reward == score for result, score in zip(results, scores))
    assert agree / len(boxed) >= 0.99


# ---- the Qwen2.5-Math reference and the full-corpus report (script) -------------------------------------------


class QwenReference:
    """Qwen2.5-Math's evaluation scoring: strip_string(extract_answer(response)) vs strip_string(gold), math_equal.

    Loaded from a folder outside this repository (its code is not vendored). Needs `regex`, `word2number` and a
    `latex2sympy2` module; where the original latex2sympy2 cannot be installed (it pins antlr4 4.7.2, math-verify needs
    4.13.2), a one-line `latex2sympy2.py` re-exporting `latex2sympy2_extended.latex2sympy` stands in for it.
    """

    def __init__(self, folder: Path):
        sys.path.insert(0, str(folder))
        import grader  # noqa: PLC0415 - Qwen2.5-Math evaluation/grader.py
        import parser as qwen_parser  # noqa: PLC0415 - Qwen2.5-Math evaluation/parser.py

        self._math_equal = grader.math_equal
        self._extract = qwen_parser.extract_answer
        self._strip = qwen_parser.strip_string

    def extract(self, response: str) -> str:
        return self._extract(response, "math")

    def score(self, response: str, answer: str, timeout_seconds: float = 5.0) -> float:
        from lowrank_rlvr.rewards import GradingTimeout, _time_limit  # the same timer, for a fair comparison

        try:
            with _time_limit(timeout_seconds):
                return float(self._math_equal(self.extract(response), self._strip(answer)))
        except GradingTimeout:  # Qwen's evaluate.py also scores a timed-out comparison as wrong
            return 0.0
        except Exception:
            return 0.0


def main() -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Grade the full MATH500 corpus; compare with Qwen2.5-Math if given.")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reference-note", default="", help="Where the Qwen2.5-Math files came from (recorded).")
    args = parser.parse_args()
    corpus = build_corpus(load_math500(PAPER_DATA))
    started = time.perf_counter()
    with Grader(workers=args.workers, timeout_seconds=5.0) as grader:
        results = grader.grade([item["response"] for item in corpus], [item["answer"] for item in corpus])
    seconds = time.perf_counter() - started
    report = {"corpus": "MATH500 reference solutions + variants (tests/test_rewards_corpus.py)", "items": len(corpus),
              "grading_seconds": round(seconds, 1), "by_variant": {}, "label_mismatches": [], "qwen": None}
    for variant in VARIANT_LABELS:
        chosen = [(item, result) for item, result in zip(corpus, results) if item["variant"] == variant]
        report["by_variant"][variant] = {
            "items": len(chosen), "label_agreement": sum(r.reward == i["label"] for i, r in chosen) / len(chosen)}
    report["label_agreement"] = sum(r.reward == i["label"] for i, r in zip(corpus, results)) / len(corpus)
    report["label_mismatches"] = [
        {"problem": i["problem"], "variant": i["variant"], "answer": i["answer"], "extracted": r.extracted,
         "reward": r.reward, "timed_out": r.timed_out}
        for i, r in zip(corpus, results) if r.reward != i["label"]]
    folder = os.environ.get("QWEN_MATH_EVAL_DIR")
    if folder:
        reference = QwenReference(Path(folder))
        scores = [reference.score(item["response"], item["answer"]) for item in corpus]
        disagreements = [
            {"problem": i["problem"], "variant": i["variant"], "answer": i["answer"], "ours": r.reward, "qwen": q,
             "ours_extracted": r.extracted, "qwen_extracted": reference.extract(i["response"])}
            for i, r, q in zip(corpus, results, scores) if r.reward != q]
        boxed = [n for n, i in enumerate(corpus) if i["variant"] != "truncated"]
        report["qwen"] = {
            "reference": args.reference_note,
            "agreement_all": sum(r.reward == q for r, q in zip(results, scores)) / len(corpus),
            "agreement_boxed": sum(results[n].reward == scores[n] for n in boxed) / len(boxed),
            "qwen_label_agreement": sum(q == i["label"] for i, q in zip(corpus, scores)) / len(corpus),
            "by_variant": {
                variant: sum(r.reward == q for i, r, q in zip(corpus, results, scores) if i["variant"] == variant)
                / sum(i["variant"] == variant for i in corpus)
                for variant in VARIANT_LABELS},
            "disagreements": disagreements,
        }
    summary = {k: v for k, v in report.items() if k not in ("label_mismatches", "qwen")}
    print(json.dumps(summary, indent=2))
    print(f"label mismatches: {len(report['label_mismatches'])}")
    if report["qwen"]:
        print(json.dumps({k: v for k, v in report["qwen"].items() if k != "disagreements"}, indent=2))
        print(f"disagreements with Qwen: {len(report['qwen']['disagreements'])}")
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
