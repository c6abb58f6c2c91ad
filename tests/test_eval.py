"""`lowrank-rlvr eval` on the tiny model with the transformers backend: report, responses, resume, sweep, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lowrank_rlvr.cli import app
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.evaluate import default_output, protocol_sampling
from lowrank_rlvr.generation import cut_at_eos, token_budget

TINY = "builtin:tiny-qwen2"
RESPONSES_PER_PROBLEM = {"math500": 1, "aime24": 8, "amc23": 8, "minerva_math": 1, "olympiadbench": 1, "aime25": 8}


@pytest.fixture(scope="module")
def strong_adapter(tiny_model, tmp_path_factory) -> Path:
    """A LoRA adapter on the seven projections that surely changes greedy answers (B ~ N(0, 0.3), not 0.05)."""
    return make_adapter(tiny_model, tmp_path_factory.mktemp("strong-adapter"), std=0.3)


def make_adapter(model_dir: Path, out: Path, std: float, extra_targets: tuple[str, ...] = ()) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", *extra_targets]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=8, target_modules=targets))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, std)
    model.save_pretrained(out)
    return out


def _eval(cli, *args: str):
    result = cli.invoke(app, ["eval", *args])
    return result


def _records(report: Path) -> list[dict]:
    return [json.loads(line) for line in report.with_suffix(".jsonl").read_text().splitlines()]


def test_eval_tiny_model_with_adapter_on_all_six_benchmarks_writes_report_and_responses(
    cli, tiny_adapter, benchmark_dir, tmp_path
):
    report_path = tmp_path / "report.json"
    result = _eval(
        cli, TINY, "--adapter", str(tiny_adapter), "--data-dir", str(benchmark_dir), "--limit", "3",
        "--max-tokens", "16", "--backend", "hf", "--output", str(report_path),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["model"] == TINY and report["adapter"] == str(tiny_adapter.resolve())
    assert list(report["benchmarks"]) == ["math500", "aime24", "amc23", "minerva_math", "olympiadbench", "aime25"]
    for name, result_ in report["benchmarks"].items():
        assert result_["num_problems"] == 3
        assert result_["num_samples"] == RESPONSES_PER_PROBLEM[name]
        assert result_["temperature"] == (0.0 if RESPONSES_PER_PROBLEM[name] == 1 else 0.6)
        assert 0.0 <= result_["accuracy"] <= 1.0
        assert 0 < result_["mean_response_tokens"] <= 16
    accuracies = [r["accuracy"] for r in report["benchmarks"].values()]
    assert report["average"] == pytest.approx(sum(accuracies) / 6)
    assert report["settings"]["backend"] == "hf" and report["settings"]["max_tokens"] == 16
    records = _records(report_path)
    assert len(records) == 3 * sum(RESPONSES_PER_PROBLEM.values())
    # every key is written for every record: check the values (a reward, a token count within --max-tokens, the gold)
    assert all(r["reward"] in (0.0, 1.0) and 0 < r["num_tokens"] <= 16 and r["answer"].strip() for r in records)
    assert all((r["reward"] == 1.0) <= (r["extracted"] is not None) for r in records)  # no box, no reward
    assert {r["source"] for r in records} == {str(benchmark_dir / f"{name}.jsonl") for name in RESPONSES_PER_PROBLEM}
    assert any(r["extracted"] is not None for r in records)  # the warm-started tiny model writes \boxed{...}
    assert "| **average** |" in result.output and "| math500 |" in result.output


def test_grading_counts_a_correct_answer(cli, tiny_model, tmp_path):
    """Two passes: learn what the greedy tiny model answers, then make that the gold answer: accuracy must be 1."""
    data = tmp_path / "data"
    data.mkdir()
    problem = {"problem": "What is 12+34?", "answer": "999999"}
    (data / "math500.jsonl").write_text(json.dumps(problem) + "\n")
    args = [TINY, "--benchmarks", "math500", "--data-dir", str(data), "--max-tokens", "16", "--backend", "hf"]
    assert _eval(cli, *args, "--output", str(tmp_path / "first.json")).exit_code == 0
    first = _records(tmp_path / "first.json")[0]
    assert first["extracted"] and first["reward"] == 0.0
    (data / "math500.jsonl").write_text(json.dumps({**problem, "answer": first["extracted"]}) + "\n")
    assert _eval(cli, *args, "--output", str(tmp_path / "second.json")).exit_code == 0
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["benchmarks"]["math500"]["accuracy"] == 1.0


def test_without_data_dir_the_shipped_file_is_read_and_named_in_the_answers(cli, tiny_model, paper_data, tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output, ./eval_report.json
    result = _eval(cli, TINY, "--benchmarks", "math500", "--limit", "2", "--max-tokens", "16", "--backend", "hf")
    assert result.exit_code == 0, result.output
    shipped = str(paper_data / "benchmarks" / "math500.jsonl")
    records = _records(tmp_path / "eval_report.json")
    assert len(records) == 2 and {r["source"] for r in records} == {shipped}
    assert [r["id"] for r in records] == ["test/precalculus/807.json", "test/intermediate_algebra/1994.json"]
    report = json.loads((tmp_path / "eval_report.json").read_text())
    assert report["benchmarks"]["math500"]["source"] == shipped and report["settings"]["data_dir"] is None


def test_a_benchmark_that_is_not_shipped_stops_eval_before_any_model_loads(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_RLVR_CACHE", str(tmp_path / "cache"))
    result = _eval(cli, str(tmp_path / "no-model"), "--benchmarks", "math500,aime24", "-o", str(tmp_path / "r.json"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: benchmark aime24 is not shipped") and "curl -fL" in result.stderr
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.jsonl").exists()
    result = _eval(cli, TINY, "--hub", "--data-dir", str(tmp_path))
    assert result.exit_code == 2 and "give --data-dir or --hub, not both" in result.stderr


def test_reusing_the_output_resumes_without_generating_scored_problems_again(cli, tiny_model, benchmark_dir, tmp_path):
    report_path = tmp_path / "report.json"
    args = [TINY, "--benchmarks", "math500,amc23", "--data-dir", str(benchmark_dir), "--max-tokens", "8",
            "--backend", "hf", "--output", str(report_path)]
    assert _eval(cli, *args, "--limit", "2").exit_code == 0
    before = report_path.with_suffix(".jsonl").read_text()
    assert len(before.splitlines()) == 2 * 1 + 2 * 8
    assert _eval(cli, *args, "--limit", "3").exit_code == 0
    after = report_path.with_suffix(".jsonl").read_text()
    assert after.startswith(before)  # old responses kept as they were
    added = [json.loads(line) for line in after[len(before):].splitlines()]
    assert len(added) == 1 + 8  # only the third problem of each benchmark was generated
    assert {r["id"] for r in added if r["benchmark"] == "math500"} == {"test/algebra/2584.json"}
    report = json.loads(report_path.read_text())
    assert report["benchmarks"]["amc23"]["num_problems"] == 3 and report["benchmarks"]["amc23"]["num_responses"] == 24
    assert _eval(cli, *args, "--limit", "3").exit_code == 0
    assert report_path.with_suffix(".jsonl").read_text() == after  # nothing left to do


def test_reusing_the_output_with_other_settings_is_refused(cli, tiny_model, tmp_path):
    args = [TINY, "--benchmarks", "math500", "--limit", "1",
            "--backend", "hf", "--output", str(tmp_path / "r.json")]
    assert _eval(cli, *args, "--max-tokens", "4").exit_code == 0
    result = _eval(cli, *args, "--max-tokens", "5")
    assert result.exit_code == 2
    assert "holds math500 responses made with other settings" in result.output


def test_default_report_lands_in_the_run_folder_of_the_adapter(cli, tiny_adapter, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_adapter, run / "adapter")
    shutil.copytree(tiny_adapter, run / "checkpoint-5")
    (run / "config.yaml").write_text("model:\n  name_or_path: builtin:tiny-qwen2\n")
    assert default_output(run / "adapter") == (run / "eval_report.json").resolve()
    assert default_output(run / "checkpoint-5") == (run / "eval_report-checkpoint-5.json").resolve()
    assert default_output(tiny_adapter) == Path("eval_report.json")
    assert default_output(None) == Path("eval_report.json")
    data = tmp_path / "data"
    data.mkdir()
    (data / "math500.jsonl").write_text(json.dumps({"problem": "What is 1+1?", "answer": "2"}) + "\n")
    monkeypatch.chdir(tmp_path)
    result = _eval(cli, TINY, "--adapter", str(run / "adapter"), "--benchmarks", "math500", "--data-dir", str(data),
                   "--max-tokens", "4", "--backend", "hf")
    assert result.exit_code == 0, result.output
    assert (run / "eval_report.json").is_file() and (run / "eval_report.jsonl").is_file()
    assert not (tmp_path / "eval_report.json").exists()


def test_sweep_over_checkpoints_writes_accuracy_by_step(cli, tiny_model, strong_adapter, benchmark_dir, tmp_path):
    from lowrank_rlvr.config import load_config
    from lowrank_rlvr.runs import RunFolder

    run = tmp_path / "run"
    for step in (2, 10):
        shutil.copytree(strong_adapter, run / f"checkpoint-{step}")
        RunFolder(run).mark_complete(step)
    shutil.copytree(strong_adapter, run / "checkpoint-5")  # cut off mid-write (no completion marker): not evaluated
    (run / "checkpoint-x").mkdir()  # not a checkpoint: ignored
    shutil.copytree(strong_adapter, run / "adapter")  # the final adapter after the last checkpoint
    cfg = load_config("tiny-cpu", ["grpo.max_steps=12", "grpo.save_steps=2"], output_dir=str(run))
    RunFolder(run).write_config(cfg, cfg.launch_summary(1))
    result = _eval(cli, "--run", str(run), "--benchmarks", "math500,aime24", "--data-dir",
                   str(benchmark_dir), "--limit", "2", "--max-tokens", "16", "--backend", "hf")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (run / "eval_by_step.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 10, 12]
    for line in lines:
        assert set(line["benchmarks"]) == {"math500", "aime24"}
        assert line["average"] == pytest.approx(sum(line["benchmarks"].values()) / 2)
    base, step2 = (json.loads((run / "eval" / f"step-{s}.json").read_text()) for s in (0, 2))
    assert base["adapter"] is None and step2["adapter"] == str((run / "checkpoint-2").resolve())
    base_responses = [r["response"] for r in _records(run / "eval" / "step-0.json")]
    assert base_responses != [r["response"] for r in _records(run / "eval" / "step-2.json")]  # step 0: no adapter
    assert "| step |" in result.output


def test_a_sweep_chooses_its_sampler_once_for_every_adapter(cli, monkeypatch, strong_adapter, benchmark_dir, tmp_path):
    from lowrank_rlvr import evaluate, generation
    from lowrank_rlvr.runs import RunFolder

    run = tmp_path / "run"
    for step in (1, 2):
        shutil.copytree(strong_adapter, run / f"checkpoint-{step}")
        RunFolder(run).mark_complete(step)
    calls = []
    choose = generation.choose_sampler
    for module in (evaluate, generation):
        monkeypatch.setattr(module, "choose_sampler", lambda *args: calls.append(args) or choose(*args))
    result = _eval(cli, TINY, "--run", str(run), "--benchmarks", "aime24", "--data-dir", str(benchmark_dir),
                   "--limit", "1", "--samples", "1", "--max-tokens", "2", "--backend", "hf")
    assert result.exit_code == 0, result.output
    assert [(requested, len(adapters)) for requested, adapters in calls] == [("hf", 2)]


def test_eval_options_are_checked_when_they_are_made():
    from lowrank_rlvr.evaluate import EvalOptions

    assert EvalOptions(model=TINY).benchmark_names() == ["math500", "aime24", "amc23", "minerva_math", "olympiadbench",
                                                         "aime25"]
    for bad, message in [
        (dict(run=Path("run"), adapter=Path("adapter")), "drop --adapter and --output"),
        (dict(run=Path("run"), output=Path("r.json")), "drop --adapter and --output"),
        (dict(), "give MODEL"),
        (dict(model=TINY, backend="tpu"), "unknown backend 'tpu'"),
        (dict(model=TINY, limit=0), "--limit must be >= 1"),
        (dict(model=TINY, benchmarks="math500", samples=2), "would repeat one greedy answer"),
        (dict(model=TINY, difficulty=0), "difficulty must be 1..12"),
    ]:
        with pytest.raises(UserError, match=message):
            EvalOptions(**bad)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--benchmarks", "math500", "--samples", "4", "--temperature", "0"], "would repeat one greedy answer"),
        (["--benchmarks", "math5000"], "unknown benchmark math5000"),
        (["--adapter", "/nonexistent/adapter"], "adapter folder not found"),
        (["--backend", "tpu"], "unknown backend 'tpu'"),
        (["--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_bad_flags_are_one_line_errors(cli, benchmark_dir, args, message):
    result = _eval(cli, TINY, "--data-dir", str(benchmark_dir), *args)
    assert result.exit_code == 2
    assert message in result.output


def test_model_or_run_is_required(cli):
    result = _eval(cli, "--benchmarks", "math500")
    assert result.exit_code == 2 and "give MODEL" in result.output


def test_protocol_follows_the_paper_unless_flags_override():
    assert protocol_sampling("math500") == protocol_sampling("minerva_math") == protocol_sampling("olympiadbench")
    assert (protocol_sampling("math500").num_samples, protocol_sampling("math500").temperature) == (1, 0.0)
    for name in ("aime24", "aime25", "amc23"):
        sampling = protocol_sampling(name)
        assert (sampling.num_samples, sampling.temperature, sampling.top_p, sampling.max_tokens) == (8, 0.6, 1.0, 3072)
    assert protocol_sampling("aime24", temperature=0.0).num_samples == 1  # greedy everywhere: one answer each
    assert protocol_sampling("math500", samples=4, temperature=1.0).num_samples == 4
    with pytest.raises(UserError):
        protocol_sampling("math500", top_p=0.0)


def test_token_budget_and_eos_cut():
    assert token_budget(prompt_tokens=100, max_tokens=3072, context=4096) == 3072
    assert token_budget(prompt_tokens=1500, max_tokens=3072, context=4096) == 2596
    assert token_budget(prompt_tokens=5000, max_tokens=3072, context=4096) == 0
    assert cut_at_eos([5, 6, 2, 0, 0], {2}, budget=16) == ([5, 6, 2], False)
    assert cut_at_eos([5, 6, 7, 8], {2}, budget=3) == ([5, 6, 7], True)


def test_a_torn_last_line_is_cut_off_and_duplicates_count_once(tmp_path):
    from lowrank_rlvr.evaluate import _matching_records, read_records

    jsonl = tmp_path / "r.jsonl"
    record = {"benchmark": "math500", "id": "a", "sample": 0, "key": "k", "reward": 0.0}
    jsonl.write_text(json.dumps(record) + "\n" + json.dumps({**record, "reward": 1.0}) + "\n" + '{"benchmark": "ma')
    records = read_records(jsonl)
    assert len(records) == 2
    assert jsonl.read_text().endswith("}\n")  # appending continues on a clean line
    assert _matching_records(records, "math500", "k", jsonl) == [{**record, "reward": 1.0}]


def test_a_prompt_longer_than_the_context_is_skipped_and_scored_zero(cli, tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"problem": "What is 1+1?", "answer": "2"}, {"problem": "1+" * 2000 + "1", "answer": "2001"}]
    (data / "math500.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = _eval(cli, TINY, "--benchmarks", "math500", "--data-dir", str(data), "--max-tokens", "8",
                   "--backend", "hf", "--output", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    short, long = _records(tmp_path / "r.json")
    assert not short["skipped"] and short["num_tokens"] > 0
    assert long["skipped"] and long["response"] == "" and long["reward"] == 0.0
    assert json.loads((tmp_path / "r.json").read_text())["benchmarks"]["math500"]["skipped"] == 1


def test_hf_backend_switches_the_adapter_off_again_after_using_it(tiny_model, strong_adapter):
    from lowrank_rlvr.templates import render_prompt
    from lowrank_rlvr.generation import HFGenerator

    generator = HFGenerator(str(tiny_model))
    greedy = protocol_sampling("math500", max_tokens=16)
    prompts = [render_prompt(q, "qwen-math-cot") for q in ("What is 12+30?", "Find x if 2x=4.", "What is 45+11?")]
    base = [row[0].text for row in generator.generate(prompts, greedy, None, seed=0)]
    with_adapter = [row[0].text for row in generator.generate(prompts, greedy, strong_adapter.resolve(), seed=0)]
    assert with_adapter != base
    assert [row[0].text for row in generator.generate(prompts, greedy, None, seed=0)] == base


def test_an_adapter_on_lm_head_is_not_sent_to_vllm(cli, tiny_model, tmp_path):
    """vLLM 0.32 serves LoRA on the projections only: 'auto' falls back to transformers, 'vllm' is a clear error."""
    from lowrank_rlvr.adapters import read_adapter
    from lowrank_rlvr.generation import choose_sampler

    adapter = make_adapter(tiny_model, tmp_path / "lm-head-adapter", std=0.05, extra_targets=("lm_head",))
    assert read_adapter(adapter).vllm_unsupported == ["lm_head"]
    assert choose_sampler("auto", [read_adapter(adapter)]) == "hf"
    result = _eval(cli, TINY, "--adapter", str(adapter), "--backend", "vllm")
    assert result.exit_code == 2
    assert "vLLM cannot serve a LoRA adapter on lm_head" in result.output


def test_answers_that_restate_their_question_are_counted_and_noted():
    from lowrank_rlvr.benchmarks import Problem
    from lowrank_rlvr.evaluate import benchmark_result, report_table

    problems = [Problem(id="a", problem="What is 18+46?", answer="64"), Problem(id="b", problem="What is 2+2?", answer="4")]
    records = [
        {"id": "a", "reward": 1.0, "num_tokens": 5, "truncated": False, "timed_out": False, "restates_question": True},
        {"id": "b", "reward": 1.0, "num_tokens": 5, "truncated": False, "timed_out": False, "restates_question": False},
    ]
    result = benchmark_result(problems, records, protocol_sampling("math500"))
    assert result["restated_question"] == 1 and result["accuracy"] == 1.0  # math-verify's verdict is kept
    table = report_table({"benchmarks": {"math500": result}, "average": 1.0})
    assert "note: 1 answer(s) restate their question" in table
    result["restated_question"] = 0
    assert "note:" not in report_table({"benchmarks": {"math500": result}, "average": 1.0})
