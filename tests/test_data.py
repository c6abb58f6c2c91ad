"""Examples from every source layout; templates; repetition to fill the batch."""

from __future__ import annotations

import json

import pytest

from lowrank_rlvr.config import DataSettings
from lowrank_rlvr.data import build_train_rows, load_examples
from lowrank_rlvr.templates import QWEN_MATH_SYSTEM, render_prompt
from lowrank_rlvr.errors import UserError


def test_verl_parquet_of_the_paper_is_one_example(paper_data):
    examples = load_examples(DataSettings(path=str(paper_data / "train" / "pi1_r128.parquet")))
    assert len(examples) == 1, "the 128 copies are one example; repetition is data.repeat"
    (pi1,) = examples
    assert (pi1.index, pi1.answer) == (124, "12.8")
    assert pi1.prompt.startswith("The pressure \\( P \\) exerted by wind on a sail")


def test_pool_indices_select_examples(paper_data):
    data = DataSettings(path=str(paper_data / "train" / "dsr_sub.parquet"), indices=[124, 0])
    examples = load_examples(data)
    assert [ex.index for ex in examples] == [124, 0]
    assert examples[0].answer == "12.8" and examples[1].answer == "\\frac{3}{7}"


def test_simple_jsonl_layouts_and_numeric_answers(tmp_path):
    path = tmp_path / "few.jsonl"
    rows = [{"problem": "p0", "answer": 27.0}, {"question": "p1", "answer": "x"}, {"prompt": "p2", "answer": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_examples(DataSettings(path=str(path)))
    assert [(ex.index, ex.prompt, ex.answer) for ex in examples] == [(0, "p0", "27"), (1, "p1", "x"), (2, "p2", "3")]


def test_broken_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "p", "answer": "1"}\n{not json\n')
    with pytest.raises(UserError, match=r"bad.jsonl: line 2: not valid JSON"):
        load_examples(DataSettings(path=str(path)))


def test_unknown_index_is_rejected(paper_data):
    with pytest.raises(UserError, match=r"data.indices not found in the data: \[5\]"):
        load_examples(DataSettings(path=str(paper_data / "train" / "pi1_r128.parquet"), indices=[5]))


def test_templates():
    cot = render_prompt("What is 1+1?", "qwen-math-cot")
    assert cot == (
        f"<|im_start|>system\n{QWEN_MATH_SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_prompt("Q", "plain") == "Question: Q\nAnswer: Let's think step by step."
    with pytest.raises(UserError, match="needs a tokenizer with a chat template"):
        render_prompt("Q", "chat", tokenizer=None)


def test_chat_template_uses_the_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert render_prompt("Q", "chat", tokenizer) == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_examples_are_repeated_to_fill_the_batch():
    examples = load_examples(DataSettings(examples=[{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]))
    rows = build_train_rows(examples, "plain", repeat=3)
    assert len(rows) == 6
    assert [r["example_index"] for r in rows] == [0, 1] * 3
    assert rows[1] == {"prompt": render_prompt("b", "plain"), "answer": "2", "example_index": 1}


def test_pool_rows_without_answer_fail_unless_skipped(paper_data):
    pool = str(paper_data / "train" / "dsr_sub.parquet")
    with pytest.raises(UserError, match=r"dsr_sub.parquet: row 266: no answer"):
        load_examples(DataSettings(path=pool))
    examples = load_examples(DataSettings(path=pool, skip_missing_answers=True))
    assert len(examples) == 1208 and 265 not in {ex.index for ex in examples}


def test_a_shipped_training_file_is_taken_by_name_unless_a_file_of_that_name_is_here(paper_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("pi1_r128", "pi1_r128.parquet"):
        data = DataSettings(path=name)
        assert data.path == str(paper_data / "train" / "pi1_r128.parquet")
        assert [(ex.index, ex.answer) for ex in load_examples(data)] == [(124, "12.8")]
    (tmp_path / "pi1_r128.parquet").write_bytes((paper_data / "train" / "pi13_r128.parquet").read_bytes())
    assert DataSettings(path="pi1_r128.parquet").path == "pi1_r128.parquet"  # a local file of that name wins
    with pytest.raises(ValueError, match="data file not found: pi7_r128"):
        DataSettings(path="pi7_r128")
