"""Config loading: every shipped config validates; bad input is one line on stderr and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lowrank_rlvr.cli import app
from lowrank_rlvr.config import CONFIG_DIR, load_config
from lowrank_rlvr.errors import UserError

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads_and_validates(path: Path):
    cfg = load_config(path)
    assert cfg.grpo.num_generations >= 2
    assert cfg.generation_batch_size() % cfg.grpo.num_generations == 0
    assert path.read_text().startswith("# lowrank-rlvr train configs/"), "header names the command that runs it"


def test_paper_configs_keep_the_papers_rl_settings():
    for name in ["qwen2.5-math-1.5b-pi1", "qwen2.5-math-7b-pi1", "llama3.2-3b-instruct-pi1", "r1-distill-qwen-1.5b-pi1"]:
        g = load_config(name).grpo
        assert (g.num_generations, g.temperature, g.beta, g.entropy_coef) == (8, 0.6, 0.001, 0.001), name
        assert g.max_completion_length == 3072 and g.loss_type == "dapo"


def test_tiny_config_has_the_lines_the_issue_names():
    text = (CONFIG_DIR / "tiny-cpu.yaml").read_text()
    for key in ("num_generations:", "max_steps:", "save_steps:"):
        assert key in text


def test_default_config_is_qwen_math_1_5b_pi1():
    cfg = load_config(None)
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-Math-1.5B"
    assert cfg.data.examples[0].answer == "12.8"


def test_overrides_are_parsed_as_yaml_and_validated():
    cfg = load_config("tiny-cpu", ["grpo.max_steps=7", "grpo.save_steps=7", "lora.r=4"])
    assert (cfg.grpo.max_steps, cfg.lora.r) == (7, 4)
    with pytest.raises(UserError, match="grpo.max_steps"):
        load_config("tiny-cpu", ["grpo.max_steps=seven"])


def write_config(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((CONFIG_DIR / "tiny-cpu.yaml").read_text())
    mutate(raw)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _set(section, key, value):
    return lambda raw: raw[section].__setitem__(key, value)


BAD_CONFIGS = {
    "unknown key with hint": (_set("grpo", "num_generation", 8), "unknown setting 'grpo.num_generation' (did you mean 'grpo.num_generations'?)"),
    "wrong type": (_set("grpo", "learning_rate", "fast"), "grpo.learning_rate"),
    "one generation": (_set("grpo", "num_generations", 1), "num_generations must be >= 2"),
    "batch not divisible": (_set("grpo", "per_device_train_batch_size", 6), "must be divisible by num_generations"),
    "missing data file": (lambda raw: raw.__setitem__("data", {"path": "nowhere.jsonl"}), "data file not found: nowhere.jsonl"),
    "two data sources": (lambda raw: raw["data"].__setitem__("dataset", "some/id"), "exactly one of examples, path, dataset"),
    "bad backend": (_set("model", "backend", "tpu"), "model.backend"),
    "missing model": (lambda raw: raw.pop("model"), "missing setting 'model'"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_bad_config_is_one_line_and_exit_2(cli, tmp_path, case):
    mutate, expected = BAD_CONFIGS[case]
    result = cli.invoke(app, ["train", str(write_config(tmp_path, mutate)), "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "run").exists(), "nothing is written before the config validates"


def test_broken_yaml_names_the_line(cli, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  name_or_path: x\n grpo: [\n")
    result = cli.invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}: line ") and "not valid YAML" in result.stderr


def test_missing_config_file(cli, tmp_path):
    result = cli.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "config not found" in result.stderr


def test_bad_override_syntax(cli):
    result = cli.invoke(app, ["train", "tiny-cpu", "--set", "grpo.max_steps"])
    assert result.exit_code == 2 and "--set expects key.path=value" in result.stderr


def test_data_row_without_answer_is_rejected_before_the_model_loads(cli, tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_text('{"problem": "What is 1+1?", "answer": "2"}\n{"problem": "What is 2+2?"}\n')
    cfg = write_config(tmp_path, lambda raw: raw.__setitem__("data", {"path": str(data)}))
    result = cli.invoke(app, ["train", str(cfg), "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {data}: row 2: no answer (expected 'answer' or reward_model.ground_truth)"


def test_help_lists_every_command(cli):
    result = cli.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "eval", "merge", "select", "grade", "plan"):
        assert command in result.output
