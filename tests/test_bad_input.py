"""Every bad input is one line, `error: <file>: <what>`, and exit code 2, for every command; nothing half-written.

The classes of bad input, each tried on every command that takes such an input:
- damaged files: truncated or corrupted safetensors (adapters, base models), adapter_config.json that is not JSON,
  not an object or lacks peft's keys, truncated/empty parquet, JSONL with a broken line, binary files read as text,
  a damaged YAML run config;
- paths of the wrong kind: a file where a folder is expected, a folder where a file is expected;
- outputs that cannot be written: a path under a regular file (root ignores permission bits), a read-only file system;
- nonsense numbers: zero/negative counts, negative, NaN and infinite floats; and usage errors (a missing argument).
Inputs are real files damaged in tmp_path; every case fails before a model is loaded except the adapter that does
not fit its model, which loads the tiny model once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from lowrank_rlvr.cli import app


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rewrite_json(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_model: Path, tiny_adapter: Path, paper_data: Path, benchmark_dir: Path) -> SimpleNamespace:
    """Damaged copies of real inputs (the tiny model, an adapter for it, the paper's data), built once."""
    root = tmp_path_factory.mktemp("bad-input")
    paths = SimpleNamespace(root=root, tiny_model=tiny_model, adapter=tiny_adapter, benchmarks=benchmark_dir)

    def adapter_copy(name: str) -> Path:
        return Path(shutil.copytree(tiny_adapter, root / name))

    paths.adapter_truncated = adapter_copy("adapter-truncated")
    _truncate(paths.adapter_truncated / "adapter_model.safetensors")
    paths.adapter_garbage = adapter_copy("adapter-garbage")
    (paths.adapter_garbage / "adapter_model.safetensors").write_bytes(b"\x00not safetensors\xff" * 8)
    paths.adapter_config_not_json = adapter_copy("adapter-config-not-json")
    (paths.adapter_config_not_json / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8')
    paths.adapter_config_list = adapter_copy("adapter-config-list")
    (paths.adapter_config_list / "adapter_config.json").write_text("[8]")
    paths.adapter_config_no_keys = adapter_copy("adapter-config-no-keys")
    _rewrite_json(paths.adapter_config_no_keys / "adapter_config.json", r=None, target_modules=None)
    paths.adapter_config_binary = adapter_copy("adapter-config-binary")
    (paths.adapter_config_binary / "adapter_config.json").write_bytes(b"\xff\xfe\x00\x01")
    paths.adapter_weights_folder = adapter_copy("adapter-weights-folder")
    (paths.adapter_weights_folder / "adapter_model.safetensors").unlink()
    (paths.adapter_weights_folder / "adapter_model.safetensors").mkdir()
    paths.adapter_wrong_rank = adapter_copy("adapter-wrong-rank")  # config says r=4, the weights hold r=8
    _rewrite_json(paths.adapter_wrong_rank / "adapter_config.json", r=4)

    paths.model_truncated = Path(shutil.copytree(tiny_model, root / "model-truncated"))
    _truncate(paths.model_truncated / "model.safetensors")
    paths.model_bad_tokenizer = Path(shutil.copytree(tiny_model, root / "model-bad-tokenizer"))
    _truncate(paths.model_bad_tokenizer / "tokenizer.json")

    paths.parquet_truncated = root / "pool-truncated.parquet"
    paths.parquet_truncated.write_bytes((paper_data / "train" / "dsr_sub.parquet").read_bytes()[:5000])
    paths.parquet_empty = root / "pool-empty.parquet"
    paths.parquet_empty.write_bytes(b"")
    paths.jsonl_broken = root / "broken.jsonl"
    paths.jsonl_broken.write_text('{"problem": "1+1?", "answer": "2", "response": "2"}\n{"problem": "2+2?", "ans\n')
    paths.binary = root / "binary.jsonl"
    paths.binary.write_bytes(b"\xff\xfe\x00\x01" * 16)
    paths.pool = root / "pool.jsonl"
    paths.pool.write_text('{"problem": "1+1?", "answer": "2", "index": 0}\n{"problem": "2+2?", "answer": "4", "index": 1}\n')
    paths.history = root / "history.json"
    paths.history.write_text(json.dumps({"0": [0.0, 1.0], "1": [1.0, 1.0]}))
    paths.history_truncated = root / "history-truncated.json"
    paths.history_truncated.write_text('{"0": [0.0, 1.0], "1": [1.')
    paths.responses = root / "responses.jsonl"
    paths.responses.write_text('{"response": "\\\\boxed{2}", "answer": "2"}\n')

    paths.benchmarks_broken = Path(shutil.copytree(benchmark_dir, root / "benchmarks-broken"))
    os.chmod(paths.benchmarks_broken, 0o755)
    (paths.benchmarks_broken / "amc23.jsonl").chmod(0o644)
    lines = (paths.benchmarks_broken / "amc23.jsonl").read_text().splitlines()
    (paths.benchmarks_broken / "amc23.jsonl").write_text("\n".join([lines[0], lines[1][:40], *lines[2:]]) + "\n")

    paths.run = root / "run"  # a run folder as `report` reads it
    paths.run.mkdir()
    (paths.run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "train_accuracy": 0.5, "entropy": 0.1}) + "\n" for s in range(1, 4))
    )
    paths.run_binary_metrics = Path(shutil.copytree(paths.run, root / "run-binary-metrics"))
    (paths.run_binary_metrics / "metrics.jsonl").write_bytes(b"\xff\xfe\x00\x01")
    paths.run_bad_history = Path(shutil.copytree(paths.run, root / "run-bad-history"))
    (paths.run_bad_history / "history.json").write_text('{"0": [0.5,')
    paths.run_broken_config = root / "run-broken-config"  # `train --resume` reads back config.yaml
    paths.run_broken_config.mkdir()
    (paths.run_broken_config / "config.yaml").write_text("model: {name_or_path: [\n")
    (paths.run_broken_config / "checkpoint-1").mkdir()
    (paths.run_broken_config / "checkpoint-1" / "checkpoint_complete").write_text("")
    paths.run_merge_bad_report = root / "run-merge-bad-report"  # merge reads the run's eval report for the card
    paths.run_merge_bad_report.mkdir()
    shutil.copytree(tiny_adapter, paths.run_merge_bad_report / "adapter")
    (paths.run_merge_bad_report / "config.yaml").write_text("output_dir: x\n")
    (paths.run_merge_bad_report / "eval_report.json").write_text('{"benchmarks": {')

    paths.config_binary = root / "config.yaml"
    paths.config_binary.write_bytes(b"\xff\xfe\x00\x01")
    paths.a_file = root / "a-file.txt"
    paths.a_file.write_text("not a folder\n")
    paths.a_folder = root / "a-folder"
    paths.a_folder.mkdir()
    (root / "a-folder.jsonl").mkdir()
    paths.run_damaged_checkpoint = root / "run-damaged-checkpoint"  # train --resume: the newest checkpoint is damaged
    for step in (1, 2):
        shutil.copytree(tiny_adapter, paths.run_damaged_checkpoint / f"checkpoint-{step}")
        (paths.run_damaged_checkpoint / f"checkpoint-{step}" / "checkpoint_complete").write_text("")
    import torch

    torch.save({"state": {0: {"exp_avg": torch.zeros(256)}}}, paths.run_damaged_checkpoint / "checkpoint-2" / "optimizer.pt")
    _truncate(paths.run_damaged_checkpoint / "checkpoint-2" / "optimizer.pt")
    paths.sweep_run_binary_config = root / "sweep-run-binary-config"  # eval --run reads the run's config.yaml
    shutil.copytree(tiny_adapter, paths.sweep_run_binary_config / "checkpoint-1")
    (paths.sweep_run_binary_config / "checkpoint-1" / "checkpoint_complete").write_text("")
    (paths.sweep_run_binary_config / "config.yaml").write_bytes(b"\xff\xfe\x00\x01")
    paths.sweep_run = root / "sweep-run"  # eval --run over a checkpoint whose weights are truncated
    paths.sweep_run.mkdir()
    shutil.copytree(paths.adapter_truncated, paths.sweep_run / "checkpoint-1")
    (paths.sweep_run / "checkpoint-1" / "checkpoint_complete").write_text("")  # complete, yet damaged since
    return paths


def assert_one_line_error(result, *names) -> str:
    """Exit 2, exactly one line, `error: ...`, no traceback, naming each of `names`."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


TINY_TRAIN = ["train", "tiny-cpu", "--set", "grpo.max_steps=1", "--set", "grpo.save_steps=1"]
EVAL = ["--benchmarks", "amc23", "--limit", "1", "--max-tokens", "2", "--backend", "hf"]


def _eval(b, model, *args):
    """`eval MODEL` on one AMC23 problem (the tests' stand-in), then `args` (a repeated flag: the last one wins)."""
    return ["eval", model, *EVAL, "--data-dir", b.benchmarks, *args]


def _select(b, out):
    return ["select", b.history, "--pool", b.pool, "-o", out / "s.jsonl"]


def _estimate(b, out):
    return ["select", "--estimate", b.tiny_model, "--pool", b.pool, "-o", out / "s.jsonl"]


# (command line, what the error line must name); `b` is the `bad` namespace, `out` a fresh tmp_path.
DAMAGED_FILES = {
    "merge-adapter-truncated-safetensors": (
        lambda b, out: ["merge", b.adapter_truncated, "-o", out / "m"], ["adapter_model.safetensors", "truncated"]),
    "merge-adapter-garbage-safetensors": (
        lambda b, out: ["merge", b.adapter_garbage, "-o", out / "m"], ["adapter-garbage/adapter_model.safetensors"]),
    "merge-adapter-config-not-json": (
        lambda b, out: ["merge", b.adapter_config_not_json, "-o", out / "m"], ["adapter_config.json", "not valid JSON"]),
    "merge-adapter-config-not-object": (
        lambda b, out: ["merge", b.adapter_config_list, "-o", out / "m"], ["adapter_config.json", "JSON object"]),
    "merge-adapter-config-lacks-keys": (
        lambda b, out: ["merge", b.adapter_config_no_keys, "-o", out / "m"], ["adapter_config.json", "'r'"]),
    "merge-adapter-config-binary": (
        lambda b, out: ["merge", b.adapter_config_binary, "-o", out / "m"], ["adapter_config.json", "UTF-8"]),
    "merge-base-truncated-weights": (
        lambda b, out: ["merge", b.adapter, "-o", out / "m", "--base", b.model_truncated],
        ["model-truncated/model.safetensors"]),
    "merge-base-truncated-tokenizer": (
        lambda b, out: ["merge", b.adapter, "-o", out / "m", "--base", b.model_bad_tokenizer], ["tokenizer.json"]),
    "merge-run-eval-report-truncated": (
        lambda b, out: ["merge", b.run_merge_bad_report / "adapter", "-o", out / "m"], ["eval_report.json"]),
    "eval-adapter-truncated-safetensors": (
        lambda b, out: _eval(b, b.tiny_model, "--adapter", b.adapter_truncated, "-o", out / "r.json"),
        ["adapter-truncated/adapter_model.safetensors"]),
    "eval-adapter-config-not-json": (
        lambda b, out: _eval(b, b.tiny_model, "--adapter", b.adapter_config_not_json, "-o", out / "r.json"),
        ["adapter_config.json"]),
    "eval-adapter-config-lacks-keys": (
        lambda b, out: _eval(b, b.tiny_model, "--adapter", b.adapter_config_no_keys, "-o", out / "r.json"),
        ["adapter_config.json", "target_modules"]),
    "eval-run-checkpoint-truncated": (
        lambda b, out: _eval(b, b.tiny_model, "--run", b.sweep_run), ["checkpoint-1/adapter_model.safetensors"]),
    "eval-run-config-binary": (
        lambda b, out: ["eval", *EVAL, "--data-dir", b.benchmarks, "--run", b.sweep_run_binary_config],
        ["sweep-run-binary-config/config.yaml", "UTF-8"]),
    "eval-model-truncated-weights": (
        lambda b, out: _eval(b, b.model_truncated, "-o", out / "r.json"), ["model-truncated/model.safetensors"]),
    "eval-benchmark-broken-line": (
        lambda b, out: _eval(b, b.tiny_model, "--data-dir", b.benchmarks_broken, "-o", out / "r.json"),
        ["amc23.jsonl: line 2"]),
    "select-estimate-model-truncated": (
        lambda b, out: ["select", "--estimate", b.model_truncated, "--pool", b.pool, "-o", out / "s.jsonl"],
        ["model-truncated/model.safetensors"]),
    "select-pool-truncated-parquet": (
        lambda b, out: ["select", b.history, "--pool", b.parquet_truncated, "-o", out / "s.jsonl"],
        ["pool-truncated.parquet", "parquet"]),
    "select-pool-empty-parquet": (
        lambda b, out: ["select", b.history, "--pool", b.parquet_empty, "-o", out / "s.jsonl"], ["pool-empty.parquet"]),
    "select-pool-broken-jsonl": (
        lambda b, out: ["select", b.history, "--pool", b.jsonl_broken, "-o", out / "s.jsonl"], ["broken.jsonl: line 2"]),
    "select-pool-binary": (
        lambda b, out: ["select", b.history, "--pool", b.binary, "-o", out / "s.jsonl"], ["binary.jsonl", "UTF-8"]),
    "select-history-truncated": (
        lambda b, out: ["select", b.history_truncated, "--pool", b.pool, "-o", out / "s.jsonl"],
        ["history-truncated.json"]),
    "grade-input-broken-line": (
        lambda b, out: ["grade", b.jsonl_broken, "-o", out / "g.jsonl"], ["broken.jsonl: line 2"]),
    "grade-input-binary": (lambda b, out: ["grade", b.binary, "-o", out / "g.jsonl"], ["binary.jsonl"]),
    "report-metrics-binary": (lambda b, out: ["report", b.run_binary_metrics], ["metrics.jsonl", "UTF-8"]),
    "report-history-truncated": (lambda b, out: ["report", b.run_bad_history], ["history.json"]),
    "train-config-binary": (lambda b, out: ["train", b.config_binary, "-o", out / "run"], ["config.yaml", "UTF-8"]),
    "train-data-truncated-parquet": (
        lambda b, out: [*TINY_TRAIN, "--set", f"data.path={b.parquet_truncated}", "--set", "data.examples=null",
                        "-o", out / "run"], ["pool-truncated.parquet"]),
    "train-data-broken-jsonl": (
        lambda b, out: [*TINY_TRAIN, "--set", f"data.path={b.jsonl_broken}", "--set", "data.examples=null",
                        "-o", out / "run"], ["broken.jsonl: line 2"]),
    "train-model-truncated-weights": (
        lambda b, out: [*TINY_TRAIN, "--set", f"model.name_or_path={b.model_truncated}", "-o", out / "run"],
        ["model-truncated/model.safetensors"]),
    "train-resume-damaged-run-config": (
        lambda b, out: [*TINY_TRAIN, "-o", b.run_broken_config, "--resume"], ["run-broken-config/config.yaml"]),
    "train-resume-truncated-optimizer-state": (
        lambda b, out: [*TINY_TRAIN, "-o", b.run_damaged_checkpoint, "--resume"],
        ["checkpoint-2/optimizer.pt", "truncated", "to resume from the checkpoint before it"]),
    "plan-config-binary": (lambda b, out: ["plan", b.config_binary], ["config.yaml"]),
}

WRONG_KIND = {
    "train-output-dir-is-a-file": (lambda b, out: [*TINY_TRAIN, "-o", b.a_file], ["a-file.txt", "is a file"]),
    "merge-adapter-is-a-file": (lambda b, out: ["merge", b.a_file, "-o", out / "m"], ["a-file.txt", "is a file"]),
    "merge-output-is-a-file": (lambda b, out: ["merge", b.adapter, "-o", b.a_file], ["a-file.txt", "is a file"]),
    "merge-adapter-weights-are-a-folder": (
        lambda b, out: ["merge", b.adapter_weights_folder, "-o", out / "m"], ["adapter_model.safetensors", "folder"]),
    "eval-model-is-a-file": (lambda b, out: _eval(b, b.a_file, "-o", out / "r.json"), ["a-file.txt", "is a file"]),
    "eval-data-dir-is-a-file": (
        lambda b, out: _eval(b, b.tiny_model, "--data-dir", b.a_file, "-o", out / "r.json"), ["a-file.txt", "is a file"]),
    "eval-output-is-a-folder": (
        lambda b, out: _eval(b, b.tiny_model, "-o", b.a_folder), ["a-folder", "is a folder"]),
    "eval-run-is-a-file": (lambda b, out: ["eval", *EVAL, "--data-dir", b.benchmarks, "--run", b.a_file], ["a-file.txt", "is a file"]),
    "select-pool-is-a-folder": (
        lambda b, out: ["select", b.history, "--pool", b.a_folder, "-o", out / "s.jsonl"], ["a-folder", "is a folder"]),
    "select-output-is-a-folder": (
        lambda b, out: ["select", b.history, "--pool", b.pool, "-o", b.root / "a-folder.jsonl"], ["a-folder.jsonl"]),
    "grade-input-is-a-folder": (lambda b, out: ["grade", b.a_folder, "-o", out / "g.jsonl"], ["a-folder", "is a folder"]),
    "grade-output-is-a-folder": (lambda b, out: ["grade", b.responses, "-o", b.a_folder], ["a-folder", "is a folder"]),
    "report-run-is-a-file": (lambda b, out: ["report", b.a_file], ["a-file.txt", "is a file"]),
    "train-config-is-a-folder": (lambda b, out: ["train", b.a_folder, "-o", out / "run"], ["a-folder", "is a folder"]),
    "plan-config-is-a-folder": (lambda b, out: ["plan", b.a_folder], ["a-folder", "is a folder"]),
    "report-output-is-a-file": (lambda b, out: ["report", b.run, "-o", b.a_file], ["a-file.txt", "is a file"]),
}

UNWRITABLE = {  # a path under a regular file: no one, root included, can create it
    "train": lambda b, out: [*TINY_TRAIN, "-o", b.a_file / "run"],
    "eval": lambda b, out: _eval(b, b.tiny_model, "-o", b.a_file / "r.json"),
    "merge": lambda b, out: ["merge", b.adapter, "-o", b.a_file / "merged"],
    "select": lambda b, out: ["select", b.history, "--pool", b.pool, "-o", b.a_file / "s.jsonl"],
    "select-estimate": lambda b, out: ["select", "--estimate", b.tiny_model, "--pool", b.pool, "-o", b.a_file / "s.jsonl"],
    "grade": lambda b, out: ["grade", b.responses, "-o", b.a_file / "g.jsonl"],
    "report": lambda b, out: ["report", b.run, "-o", b.a_file / "report"],
}

NONSENSE_NUMBERS = {  # (command line, what the error line must name)
    "eval-limit-0": (lambda b, out: _eval(b, b.tiny_model, "--limit", "0"), "--limit"),
    "eval-samples-negative": (lambda b, out: _eval(b, b.tiny_model, "--samples", "-1"), "--samples"),
    "eval-temperature-negative": (lambda b, out: _eval(b, b.tiny_model, "--temperature", "-1"), "--temperature"),
    "eval-temperature-nan": (lambda b, out: _eval(b, b.tiny_model, "--temperature", "nan"), "--temperature"),
    "eval-temperature-inf": (lambda b, out: _eval(b, b.tiny_model, "--temperature", "inf", "--samples", "2"), "--temperature"),
    "eval-top-p-nan": (lambda b, out: _eval(b, b.tiny_model, "--top-p", "nan"), "--top-p"),
    "eval-max-tokens-0": (lambda b, out: _eval(b, b.tiny_model, "--max-tokens", "0"), "--max-tokens"),
    "eval-batch-size-0": (lambda b, out: _eval(b, b.tiny_model, "--batch-size", "0"), "--batch-size"),
    "select-top-0": (lambda b, out: [*_select(b, out), "--top", "0"], "--top"),
    "select-repeat-negative": (lambda b, out: [*_select(b, out), "--repeat", "-2"], "--repeat"),
    "select-estimate-samples-1": (lambda b, out: [*_estimate(b, out), "--samples", "1"], "--samples"),
    "select-estimate-temperature-nan": (lambda b, out: [*_estimate(b, out), "--temperature", "nan"], "--temperature"),
    "select-estimate-temperature-negative": (lambda b, out: [*_estimate(b, out), "--temperature", "-1"], "--temperature"),
    "select-estimate-max-new-tokens-0": (lambda b, out: [*_estimate(b, out), "--max-new-tokens", "0"], "--max-new-tokens"),
    "select-estimate-limit-0": (lambda b, out: [*_estimate(b, out), "--limit", "0"], "--limit"),
    "grade-workers-0": (lambda b, out: ["grade", b.responses, "-o", out / "g.jsonl", "--workers", "0"], "--workers"),
    "grade-timeout-nan": (lambda b, out: ["grade", b.responses, "-o", out / "g.jsonl", "--timeout", "nan"], "--timeout"),
    "grade-timeout-inf": (lambda b, out: ["grade", b.responses, "-o", out / "g.jsonl", "--timeout", "inf"], "--timeout"),
    "report-window-0": (lambda b, out: ["report", b.run, "-o", out / "report", "--window", "0"], "--window"),
    "report-threshold-nan": (lambda b, out: ["report", b.run, "-o", out / "report", "--threshold", "nan"], "--threshold"),
    "plan-gpu-memory-nan": (lambda b, out: ["plan", "tiny-cpu", "--gpu-memory", "nan"], "--gpu-memory"),
    "plan-gpu-memory-inf": (lambda b, out: ["plan", "tiny-cpu", "--gpu-memory", "inf"], "--gpu-memory"),
    "plan-gpu-memory-negative": (lambda b, out: ["plan", "tiny-cpu", "--gpu-memory", "-4"], "--gpu-memory"),
    "train-temperature-nan": (lambda b, out: [*TINY_TRAIN, "--set", "grpo.temperature=.nan", "-o", out / "run"],
                              "grpo.temperature"),
    "train-max-steps-negative": (lambda b, out: [*TINY_TRAIN, "--set", "grpo.max_steps=-1", "-o", out / "run"],
                                 "grpo.max_steps"),
}


def _invoke(cli, args):
    return cli.invoke(app, [str(arg) for arg in args])


def _nothing_written(out: Path) -> None:
    assert list(out.iterdir()) == [], f"a failed command left {sorted(p.name for p in out.iterdir())}"


@pytest.mark.parametrize("case", list(DAMAGED_FILES), ids=str)
def test_a_damaged_file_is_one_line_naming_it(cli, bad, tmp_path, case):
    build, names = DAMAGED_FILES[case]
    out = tmp_path / "out"
    out.mkdir()
    assert_one_line_error(_invoke(cli, build(bad, out)), *names)
    _nothing_written(out)


@pytest.mark.parametrize("case", list(WRONG_KIND), ids=str)
def test_a_path_of_the_wrong_kind_is_one_line_naming_it(cli, bad, tmp_path, case):
    build, names = WRONG_KIND[case]
    out = tmp_path / "out"
    out.mkdir()
    assert_one_line_error(_invoke(cli, build(bad, out)), *names)
    _nothing_written(out)
    assert bad.a_file.read_text() == "not a folder\n" and list(bad.a_folder.iterdir()) == []


@pytest.mark.parametrize("command", list(UNWRITABLE), ids=str)
def test_an_output_under_a_regular_file_is_refused_before_any_work(cli, bad, tmp_path, command):
    line = assert_one_line_error(_invoke(cli, UNWRITABLE[command](bad, tmp_path)), bad.a_file)
    assert "is a file, not a folder" in line


@pytest.mark.skipif(os.access("/proc/sys", os.W_OK), reason="needs a read-only folder (/proc/sys is one for root)")
@pytest.mark.parametrize("command", ["grade", "select"])
def test_an_output_on_a_read_only_file_system_is_refused(cli, bad, command):
    target = Path("/proc/sys/lowrank-rlvr-out.jsonl")
    args = (["grade", bad.responses, "-o", target] if command == "grade"
            else ["select", bad.history, "--pool", bad.pool, "-o", target])
    assert "not writable" in assert_one_line_error(_invoke(cli, args), target)


@pytest.mark.parametrize("case", list(NONSENSE_NUMBERS), ids=str)
def test_a_nonsense_number_is_one_line_naming_the_flag(cli, bad, tmp_path, case):
    build, flag = NONSENSE_NUMBERS[case]
    assert_one_line_error(_invoke(cli, build(bad, tmp_path)), flag)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, named",
    [(["grade"], "INPUT_PATH"), (["trian"], "trian"), (["grade", "x.jsonl", "--no-such-flag"], "--no-such-flag")],
)
def test_a_usage_error_is_one_line_too(cli, args, named):
    line = assert_one_line_error(_invoke(cli, args))
    assert named.lower() in line.lower() and "--help" in line


@pytest.mark.parametrize(
    "build",
    [
        lambda b, out: _eval(b, "nobody/no-such-model", "-o", out / "r.json"),
        lambda b, out: ["select", "--estimate", "nobody/no-such-model", "--pool", b.pool, "-o", out / "s.jsonl"],
        lambda b, out: [*TINY_TRAIN, "--set", "model.name_or_path=nobody/no-such-model", "-o", out / "run"],
        lambda b, out: ["merge", b.adapter, "-o", out / "m", "--base", "nobody/no-such-model"],
    ],
    ids=["eval", "select-estimate", "train", "merge-base"],
)
def test_a_hub_model_that_cannot_be_fetched_is_one_line(cli, bad, tmp_path, build):
    """Offline (conftest sets HF_HUB_OFFLINE=1) and not cached: the Hub id is named, nothing is written."""
    assert_one_line_error(_invoke(cli, build(bad, tmp_path)), "nobody/no-such-model")
    assert list(tmp_path.iterdir()) == []


def test_an_adapter_that_does_not_fit_the_model_fails_in_one_line_and_leaves_no_output(cli, bad, tmp_path):
    """Found only when peft loads it (the config says r=4, the weights r=8): after the model loads, before any
    response is written; the responses file the failed attempt opened is not left behind empty."""
    result = _invoke(cli, _eval(bad, bad.tiny_model, "--adapter", bad.adapter_wrong_rank, "-o", tmp_path / "r.json"))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "adapter-wrong-rank" in errors[0] and "does not fit" in errors[0]
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_debug_switch_shows_the_traceback(cli, bad, tmp_path):
    """`--debug` (or LOWRANK_RLVR_DEBUG=1) re-raises: the real console script prints Python's traceback."""
    import subprocess
    import sys

    args = ["grade", str(bad.jsonl_broken), "-o", str(tmp_path / "g.jsonl")]
    proc = subprocess.run(
        [sys.executable, "-m", "lowrank_rlvr.cli", "--debug", *args], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback (most recent call last):")
    assert "lowrank_rlvr.errors.UserError: " in proc.stderr and "broken.jsonl: line 2" in proc.stderr
    result = cli.invoke(app, args, env={"LOWRANK_RLVR_DEBUG": "1"})
    assert result.exit_code == 1 and type(result.exception).__name__ == "UserError"
    assert_one_line_error(cli.invoke(app, args, env={"LOWRANK_RLVR_DEBUG": "0"}), bad.jsonl_broken)


def test_the_boundary_translates_input_errors_and_keeps_bugs(tmp_path):
    """What escapes the edge checks: an OSError naming a file (a path under a regular file, a folder opened as a
    file) or a parser's complaint is one line; anything else is a bug and returns None (its traceback stays)."""
    from lowrank_rlvr.errors import input_error

    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError) as under_a_file:  # a real NotADirectoryError, as a library would meet it
        (tmp_path / "a-file" / "x").write_text("")
    assert input_error(under_a_file.value) == f"{tmp_path / 'a-file' / 'x'}: Not a directory"
    with pytest.raises(IsADirectoryError) as folder_as_file:
        tmp_path.read_text()
    assert input_error(folder_as_file.value) == f"{tmp_path}: Is a directory"
    with pytest.raises(json.JSONDecodeError) as not_json:
        json.loads('{"a": ')
    assert "not valid JSON: line 1" in input_error(not_json.value) and "--debug" in input_error(not_json.value)
    assert input_error(KeyError("peft_type")) is None
    assert input_error(RuntimeError("size mismatch")) is None
    assert input_error(OSError("no file name: a library's own failure")) is None


def test_atomic_output_leaves_the_old_file_when_writing_fails(tmp_path):
    from lowrank_rlvr.files import atomic_output

    target = tmp_path / "selection.jsonl"
    target.write_text("old\n")
    with pytest.raises(ZeroDivisionError):
        with atomic_output(target) as staging:
            staging.write_text("half")
            1 / 0
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["selection.jsonl"]
    with atomic_output(target) as staging:
        staging.write_text("new\n")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["selection.jsonl"]
