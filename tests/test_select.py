"""`lowrank-rlvr select`: historical variance ranking, tie-break, --rank/--top/--repeat, both pool layouts, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from lowrank_rlvr.cli import app
from lowrank_rlvr.config import DataSettings
from lowrank_rlvr.data import load_examples
from lowrank_rlvr.history import history_scores, rank_by_score

# pool index -> accuracy per epoch. std: 7 -> 0.5, 3 and 11 -> 0.4082 (same values, permuted: a tie), 5 -> 0.
HISTORY = {
    "3": [0.0, 0.5, 1.0],
    "5": [1.0, 1.0, 1.0],
    "7": [0.0, 1.0, 0.0, 1.0],
    "11": [1.0, 0.0, 0.5],
}


@pytest.fixture()
def history_file(tmp_path: Path) -> Path:
    path = tmp_path / "history.json"
    path.write_text(json.dumps(HISTORY))
    return path


@pytest.fixture()
def simple_pool(tmp_path: Path) -> Path:
    """Simple layout: problem/answer/index, indices 0..12, answers 'a<index>'."""
    path = tmp_path / "pool.jsonl"
    rows = [{"problem": f"Problem number {i}?", "answer": f"a{i}", "index": i} for i in range(13)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_output(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_dict(orient="records")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scores_are_population_std_and_ties_break_by_smaller_index():
    scores = history_scores(HISTORY)
    assert scores[7] == pytest.approx(0.5)
    assert scores[3] == pytest.approx(math.sqrt(1 / 6))
    assert scores[3] == scores[11]  # a permutation of the same accuracies is an exact tie
    assert scores[5] == 0.0
    assert rank_by_score(scores) == [7, 3, 11, 5]
    assert rank_by_score({20: 0.3, 4: 0.3, 9: 0.3}) == [4, 9, 20]


def test_top_writes_ranked_examples_with_scores(cli, history_file, simple_pool, tmp_path):
    out = tmp_path / "chosen.jsonl"
    result = cli.invoke(app, ["select", str(history_file), "--pool", str(simple_pool), "--top", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_output(out)
    assert [row["index"] for row in rows] == [7, 3, 11]
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert rows[0]["prompt"] == "Problem number 7?" and rows[0]["answer"] == "a7"
    assert rows[0]["score"] == pytest.approx(0.5)
    assert "pi_1: index 7" in result.output


def test_default_is_pi_1(cli, history_file, simple_pool, tmp_path):
    out = tmp_path / "pi1.jsonl"
    result = cli.invoke(app, ["select", str(history_file), "--pool", str(simple_pool), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert [row["index"] for row in read_output(out)] == [7]


def test_rank_picks_one_example_and_repeat_duplicates_it(cli, history_file, simple_pool, tmp_path):
    out = tmp_path / "pi3_r128.jsonl"
    args = ["select", str(history_file), "--pool", str(simple_pool), "--rank", "3", "--repeat", "128", "-o", str(out)]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = read_output(out)
    assert len(rows) == 128
    assert {row["index"] for row in rows} == {11}  # rank 3: the tie 3/11 at 0.408 is broken by index
    assert all(row["rank"] == 3 for row in rows)


def test_repeat_repeats_the_whole_selection_in_order(cli, history_file, simple_pool, tmp_path):
    out = tmp_path / "top2_r3.jsonl"
    args = ["select", str(history_file), "--pool", str(simple_pool), "--top", "2", "--repeat", "3", "-o", str(out)]
    assert cli.invoke(app, args).exit_code == 0
    assert [row["index"] for row in read_output(out)] == [7, 3, 7, 3, 7, 3]


def test_verl_pool_and_parquet_output_are_trainable(cli, tmp_path):
    """The paper's pool (DSR-sub, verl layout, shipped: `--pool dsr_sub`): index 124 is the paper's pi_1 (label 12.8)."""
    history = tmp_path / "history.json"
    history.write_text(json.dumps({"0": [1.0, 1.0], "124": [0.25, 0.75, 1.0], "267": [0.5, 1.0, 1.0]}))
    out = tmp_path / "dsr_sub_std_pi1_r128.parquet"
    args = ["select", str(history), "--pool", "dsr_sub", "--repeat", "128", "-o", str(out)]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = read_output(out)
    assert len(rows) == 128 and {row["index"] for row in rows} == {124}
    assert rows[0]["answer"] == "12.8" and "wind" in rows[0]["prompt"]
    # what select writes, train reads: one example (repetition is data.repeat), same text and answer
    examples = load_examples(DataSettings(path=str(out)))
    assert [(ex.index, ex.answer) for ex in examples] == [(124, "12.8")]
    assert examples[0].prompt == rows[0]["prompt"]


def test_pool_example_without_gold_answer_is_left_out(cli, paper_data, tmp_path):
    """DSR-sub's index 265 has an empty ground truth: it cannot be trained on, so it is never selected."""
    history = tmp_path / "history.json"
    history.write_text(json.dumps({"265": [0.0, 1.0], "124": [0.5, 1.0]}))
    out = tmp_path / "out.jsonl"
    pool = paper_data / "train" / "dsr_sub.parquet"
    result = cli.invoke(app, ["select", str(history), "--pool", str(pool), "--top", "5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert [row["index"] for row in read_output(out)] == [124]
    assert "without a gold answer" in result.output and "265" in result.output


def test_random_method_is_seeded(cli, history_file, simple_pool, tmp_path):
    picks = []
    for seed in ("1", "1", "2"):
        out = tmp_path / f"random{seed}.jsonl"
        args = ["select", str(history_file), "--pool", str(simple_pool), "--method", "random", "--top", "4",
                "--seed", seed, "-o", str(out)]
        assert cli.invoke(app, args).exit_code == 0
        picks.append([row["index"] for row in read_output(out)])
    assert picks[0] == picks[1]
    assert sorted(picks[0]) == [3, 5, 7, 11]
    assert picks[0] != picks[2]


def test_run_folder_is_a_history(cli, simple_pool, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.json").write_text(json.dumps({"2": [0.0, 1.0], "4": [0.5, 0.5]}))
    out = tmp_path / "out.jsonl"
    result = cli.invoke(app, ["select", str(run), "--pool", str(simple_pool), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert read_output(out)[0]["index"] == 2


@pytest.mark.parametrize(
    ("history_text", "message"),
    [
        ('{"3": [0.0, 1.0], "99": [0.5, 1.0]}', "not in the pool: 99"),
        ('{"3": []}', "example 3: empty accuracy list"),
        ('{"3": [0.0, 1.0],\n "5": [0.5, }', "line 2: history is not valid JSON"),
        ("[0.5, 1.0]", "expected a JSON object"),
        ('{"three": [0.5]}', "'three' is not a pool index"),
        ('{"3": [0.5, 1.5]}', "1.5 is not an accuracy in [0, 1]"),
        ("{}", "the history is empty"),
    ],
)
def test_bad_history_exits_2_with_one_line(cli, simple_pool, tmp_path, history_text, message):
    history = tmp_path / "history.json"
    history.write_text(history_text)
    out = tmp_path / "out.jsonl"
    result = cli.invoke(app, ["select", str(history), "--pool", str(simple_pool), "-o", str(out)])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        (["--rank", "5"], "--rank 5 is out of range"),
        (["--rank", "0"], "--rank must be >= 1"),
        (["--top", "0"], "--top must be >= 1"),
        (["--top", "2", "--rank", "1"], "not both"),
        (["--method", "variance"], "unknown --method 'variance'"),
        (["--repeat", "0"], "--repeat must be >= 1"),
    ],
)
def test_bad_flags_exit_2_with_one_line(cli, history_file, simple_pool, tmp_path, extra_args, message):
    out = tmp_path / "out.jsonl"
    result = cli.invoke(app, ["select", str(history_file), "--pool", str(simple_pool), "-o", str(out), *extra_args])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_paths_exit_2(cli, history_file, simple_pool, tmp_path):
    empty_run = tmp_path / "empty-run"
    empty_run.mkdir()
    cases = [
        (["select", str(tmp_path / "nope.json"), "--pool", str(simple_pool), "-o", str(tmp_path / "o.jsonl")],
         "history not found"),
        (["select", str(history_file), "--pool", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl")],
         "pool not found"),
        (["select", str(history_file), "--pool", str(simple_pool), "-o", str(tmp_path / "o.csv")],
         "--output must end in .jsonl or .parquet"),
        (["select", str(empty_run), "--pool", str(simple_pool), "-o", str(tmp_path / "o.jsonl")],
         "no history.json"),
        (["select", "--pool", str(simple_pool), "-o", str(tmp_path / "o.jsonl")], "exactly one of them"),
    ]
    for args, message in cases:
        result = cli.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, result.output


def test_broken_pool_line_is_named(cli, history_file, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"problem": "1+1?", "answer": "2", "index": 3}\n{"problem": \n')
    result = cli.invoke(app, ["select", str(history_file), "--pool", str(pool), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2
    assert "line 2" in result.output


def greedy_answer(model_dir: Path, problem: str) -> str:
    """What the tiny model answers to `problem` without sampling (its warm start writes a random boxed number)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lowrank_rlvr.templates import render_prompt
    from lowrank_rlvr.rewards import extract_answer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    encoded = tokenizer(render_prompt(problem, "qwen-math-cot"), return_tensors="pt", add_special_tokens=False)
    output = model.generate(**encoded, do_sample=False, max_new_tokens=12)
    return extract_answer(tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True))


@pytest.mark.slow
def test_estimate_samples_the_base_model_and_grades_each_example_against_its_own_answer(cli, tiny_model, tmp_path):
    """Our approximation: K rollouts of the tiny model per pool example, graded. Example 11's gold answer is what the
    model says to it (temperature 0.001: greedy), the others' golds are never said: only 11's rollouts are correct."""
    problems = ["What is 17+25?", "What is 20+22?", "What is 11+31?", "What is 30+12?"]
    golds = ["-7", greedy_answer(tiny_model, problems[1]), "-7", "-7"]
    assert golds[1] is not None
    pool = tmp_path / "pool.jsonl"
    rows = [{"problem": p, "answer": a, "index": 10 + n} for n, (p, a) in enumerate(zip(problems, golds))]
    pool.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "estimated.jsonl"
    args = ["select", "--estimate", str(tiny_model), "--pool", str(pool), "--limit", "3", "--samples", "4",
            "--max-new-tokens", "12", "--temperature", "0.001", "--top", "3", "-o", str(out)]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "estimated.history.json").read_text())
    assert history == {"10": [0.0] * 4, "11": [1.0] * 4, "12": [0.0] * 4}  # --limit 3: index 13 not sampled
    assert [row["index"] for row in read_output(out)] == [10, 11, 12]  # all spreads 0: index order
    # the saved history is a valid HISTORY for a later run without sampling
    again = tmp_path / "again.jsonl"
    result = cli.invoke(app, ["select", str(tmp_path / "estimated.history.json"), "--pool", str(pool), "--top", "3",
                              "-o", str(again)])
    assert result.exit_code == 0, result.output
    assert read_output(again) == read_output(out)


@pytest.mark.slow
def test_run_folder_of_a_real_pool_training_is_a_history(cli, tiny_model, tmp_path):
    """train on a 2-example pool for 2 epochs (the trainer logs per-example accuracy per epoch) -> select RUN."""
    pool = tmp_path / "pool.jsonl"
    rows = [{"problem": "What is 17+25?", "answer": "42", "index": 4}, {"problem": "What is 20+22?", "answer": "42", "index": 9}]
    pool.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = tmp_path / "pool-run"
    # 2 examples x repeat 4 = 8 prompts an epoch, 1 prompt (8 rollouts) a step: 16 steps = 2 epochs
    args = ["train", "tiny-cpu", "--output-dir", str(run), "--set", "data.examples=null", "--set", f"data.path={pool}",
            "--set", "data.repeat=4", "--set", "grpo.max_steps=16", "--set", "grpo.save_steps=16"]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    history = json.loads((run / "history.json").read_text())
    assert sorted(history) == ["4", "9"] and all(len(values) == 2 for values in history.values())

    out = tmp_path / "chosen.jsonl"
    result = cli.invoke(app, ["select", str(run), "--pool", str(pool), "--top", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    expected = rank_by_score(history_scores(history))
    assert [row["index"] for row in read_output(out)] == expected
