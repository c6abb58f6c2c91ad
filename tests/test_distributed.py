"""Scale-out: the tiny CPU config under `torchrun` / `accelerate launch` with two processes (gloo), and the shipped
accelerate configs and multi-GPU example.

The slow tests launch real processes: TRL's GRPOTrainer wraps the policy in DDP over gloo, exactly as it would over
NCCL on GPUs. DeepSpeed is not installed here, so the ZeRO-2/ZeRO-3 files are checked with accelerate's own config
loader and launch-argument validation only, not run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from lowrank_rlvr.cli import app
from lowrank_rlvr.config import CONFIG_DIR, load_config
from run_files import sha256

BIN = Path(sys.executable).parent
CLI = str(BIN / "lowrank-rlvr")
ACCELERATE_CONFIGS = CONFIG_DIR / "accelerate"
FOUR_GPU_CONFIG = CONFIG_DIR / "qwen2.5-math-7b-pi1-4gpu.yaml"
SHORT_RUN = ["--set", "grpo.max_steps=6", "--set", "grpo.save_steps=3"]
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def torchrun(processes: int, *cli_args: str) -> subprocess.CompletedProcess:
    # --standalone: a free local rendezvous port, so parallel test runs on one machine do not collide on 29500
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(processes), "--no-python", CLI, *cli_args]
    return subprocess.run(command, capture_output=True, text=True, env=launch_env())


def accelerate_launch(config: Path, processes: int, *cli_args: str) -> subprocess.CompletedProcess:
    command = [
        str(BIN / "accelerate"), "launch", "--config_file", str(config), "--num_processes", str(processes),
        "--main_process_port", str(free_port()), CLI, *cli_args,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=launch_env())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_model):
    """tiny-cpu.yaml, 6 steps, checkpoints at 3 and 6, under `torchrun --nproc_per_node 2` (gloo on CPU)."""
    run_dir = tmp_path_factory.mktemp("ddp") / "tiny"
    base_before = sha256(tiny_model / "model.safetensors")
    result = torchrun(2, "train", "tiny-cpu", "--output-dir", str(run_dir), *SHORT_RUN)
    assert result.returncode == 0, result.stderr[-4000:]
    return {"dir": run_dir, "result": result, "base_before": base_before}


@pytest.mark.slow
def test_two_processes_train_into_one_run_folder(two_process_run):
    run_dir, stdout = two_process_run["dir"], two_process_run["result"].stdout
    for rank in (0, 1):
        assert re.search(rf"^process {rank}/2: backend hf, 2 prompts x 8 rollouts .* x 2 processes\)$", stdout, re.M), stdout
    assert stdout.count("adapter saved to") == 1, "only rank 0 saves the adapter"
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())["resolved"]
    assert resolved == {"processes": 2, "generation_batch_size": 16, "prompts_per_generation_batch": 2}
    assert [p.relative_to(run_dir) for p in run_dir.rglob("metrics.jsonl")] == [Path("metrics.jsonl")]
    assert logged_steps(run_dir) == [1, 2, 3, 4, 5, 6], "each step logged once, by rank 0 only"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    for checkpoint in run_dir.glob("checkpoint-*"):
        assert (checkpoint / "checkpoint_complete").exists() and (checkpoint / "optimizer.pt").exists()
        # each rank writes its own RNG state into the shared checkpoint: both ranks took part
        assert (checkpoint / "rng_state_0.pth").exists() and (checkpoint / "rng_state_1.pth").exists()
    assert not (run_dir / "adapter.partial").exists()
    assert json.loads((run_dir / "history.json").read_text()).keys() == {"0"}


@pytest.mark.slow
def test_two_process_adapter_moved_and_changes_the_base_output(two_process_run, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = two_process_run["dir"] / "adapter"
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b), "peft starts every lora_B at zero"

    input_ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model)(input_ids).logits  # [1, 5, vocab]
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter_dir)
        tuned_logits = tuned(input_ids).logits  # [1, 5, vocab]
    assert (tuned_logits - base_logits).abs().max() > 1e-4
    assert sha256(tiny_model / "model.safetensors") == two_process_run["base_before"], "the base file is untouched"


@pytest.mark.slow
def test_two_process_run_resumes_from_a_two_process_checkpoint(two_process_run, tmp_path):
    run_dir = tmp_path / "cut"
    shutil.copytree(two_process_run["dir"], run_dir)
    # as if killed while writing checkpoint-6: no completion marker, no final adapter
    (run_dir / "checkpoint-6" / "checkpoint_complete").unlink()
    shutil.rmtree(run_dir / "adapter")

    # the other launcher this time, with the shipped DDP config: both start the same torch.distributed processes
    result = accelerate_launch(
        ACCELERATE_CONFIGS / "ddp.yaml", 2, "train", "tiny-cpu", "--output-dir", str(run_dir), *SHORT_RUN, "--resume"
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("resuming from checkpoint-3 (step 3)") == 2, "both ranks resume from the same checkpoint"
    assert logged_steps(run_dir) == [1, 2, 3, 4, 5, 6], "every step logged exactly once across the cut"
    assert (run_dir / "checkpoint-6" / "checkpoint_complete").exists()
    assert json.loads((run_dir / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_batch_not_divisible_across_ranks_stops_every_rank_before_any_model_loads(tmp_path):
    # 4 per device x 1 accumulation is fine on 2 processes (8) but not on 3 (12) for 8 rollouts per prompt
    result = torchrun(3, "train", "tiny-cpu", "--output-dir", str(tmp_path / "run"),
                      "--set", "grpo.per_device_train_batch_size=4")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and set(errors) == {
        f"error: {CONFIG_DIR / 'tiny-cpu.yaml'}: per_device_train_batch_size x gradient_accumulation_steps x "
        "processes = 12 must be divisible by num_generations = 8"
    }, result.stderr[-3000:]
    assert re.search(r"exitcode\s*:\s*2\b", result.stderr), "torchrun reports the ranks' exit code 2"
    assert "Loading weights" not in result.stderr + result.stdout and not (tmp_path / "run").exists()


def test_a_rank_with_a_bad_batch_exits_2_with_one_line(cli, tmp_path, monkeypatch):
    # what each process sees under a launcher: WORLD_SIZE is the number of processes
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    args = ["train", "tiny-cpu", "--output-dir", str(tmp_path / "run"), "--set", "grpo.per_device_train_batch_size=4"]
    result = cli.invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("processes = 12 must be divisible by num_generations = 8")
    assert not (tmp_path / "run").exists()
    assert load_config("tiny-cpu", ["grpo.per_device_train_batch_size=4"], world_size=2).generation_batch_size(2) == 8


ACCELERATE_FILES = {
    "ddp.yaml": {"distributed_type": "MULTI_GPU", "multi_gpu": True, "use_deepspeed": False, "zero_stage": None},
    "zero2.yaml": {"distributed_type": "DEEPSPEED", "multi_gpu": False, "use_deepspeed": True, "zero_stage": 2},
    "zero3.yaml": {"distributed_type": "DEEPSPEED", "multi_gpu": False, "use_deepspeed": True, "zero_stage": 3},
}


@pytest.mark.parametrize("name", ACCELERATE_FILES)
def test_shipped_accelerate_configs_load_with_accelerates_own_loader(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = ACCELERATE_CONFIGS / name
    expected = ACCELERATE_FILES[name]
    loaded = load_config_from_file(str(path))
    assert isinstance(loaded, ClusterConfig)
    assert str(loaded.distributed_type).endswith(expected["distributed_type"])
    assert loaded.num_processes == 4 and loaded.num_machines == 1
    assert loaded.mixed_precision == "no", "precision comes from the run config's model.dtype, not from here"

    # what `accelerate launch --config_file <path> ...` turns the file into (no GPU, no DeepSpeed needed for this)
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(path), CLI, "train"])
    known_options = set(vars(args))
    args, _, _ = _validate_launch_command(args)
    assert (args.multi_gpu, args.use_deepspeed) == (expected["multi_gpu"], expected["use_deepspeed"])
    assert args.num_processes == 4
    if expected["zero_stage"] is not None:
        assert args.zero_stage == expected["zero_stage"]
        assert set(loaded.deepspeed_config) <= known_options, "every deepspeed_config key is a launch option"
    assert path.read_text().startswith(f"# accelerate launch --config_file configs/accelerate/{name} ")


def test_accelerate_loader_rejects_a_misspelled_setting(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    raw = yaml.safe_load((ACCELERATE_CONFIGS / "ddp.yaml").read_text())
    raw["num_process"] = raw.pop("num_processes")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="num_process"):
        load_config_from_file(str(path))


def test_four_gpu_config_keeps_the_one_gpu_recipe_and_batch():
    one_gpu = load_config("qwen2.5-math-7b-pi1")
    four_gpu = load_config(FOUR_GPU_CONFIG, world_size=4)
    assert four_gpu.generation_batch_size(4) == one_gpu.generation_batch_size(1) == 128  # 16 prompts x 8 rollouts per optimizer step
    for section in ("data", "reward", "lora"):
        assert getattr(four_gpu, section) == getattr(one_gpu, section), section
    same = ("num_generations", "max_completion_length", "temperature", "beta", "entropy_coef", "loss_type", "learning_rate")
    assert all(getattr(four_gpu.grpo, key) == getattr(one_gpu.grpo, key) for key in same)
    assert four_gpu.model.backend == "hf" and (four_gpu.grpo.use_vllm, four_gpu.grpo.vllm_mode) == (True, "colocate")


def test_four_gpu_header_launch_commands_name_real_files_and_valid_server_settings():
    header = "".join(line for line in FOUR_GPU_CONFIG.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "accelerate launch --config_file configs/accelerate/ddp.yaml" in header
    assert "torchrun --nproc_per_node 4" in header and "trl vllm-serve --model Qwen/Qwen2.5-Math-7B" in header
    for named in re.findall(r"configs/[\w./-]+\.yaml", header):
        assert (CONFIG_DIR.parent / named).is_file(), named
    paper_batch = load_config(
        FOUR_GPU_CONFIG, re.findall(r"--set (grpo.gradient_accumulation_steps=\d+)", header), world_size=4
    )
    assert paper_batch.generation_batch_size(4) == 128 * 8, "the paper's 128 prompts x 8 rollouts per step"
    # the server-mode command's --set overrides, exactly as written, give a valid config in server mode
    server_part = header.split("Rollouts from a vLLM server")[1].split("the same in this file")[0]
    overrides = re.findall(r"--set (\S+)", server_part)
    assert len(overrides) == 5, overrides
    server = load_config(FOUR_GPU_CONFIG, overrides, world_size=4)
    assert (server.grpo.use_vllm, server.grpo.vllm_mode, server.grpo.vllm_server_port) == (True, "server", 8000)
    assert server.model.load_in_4bit is False


def test_the_cli_runs_as_a_module_for_launchers():
    # `accelerate launch -m lowrank_rlvr.cli train ...` runs `python -m lowrank_rlvr.cli` in every process
    result = subprocess.run(
        [sys.executable, "-m", "lowrank_rlvr.cli", "train", "--help"], capture_output=True, text=True, env=launch_env()
    )
    assert result.returncode == 0 and "--resume" in result.stdout, "cli.py needs `if __name__ == '__main__': main()`"
