"""The CUDA path's wiring, tested on CPU (issue 25): what our code decides before Unsloth, TRL, vLLM or a GPU is reached.

No GPU runs here. Each test stands in for one device query at most (the GPU's compute capability, the NVIDIA driver,
whether torch sees CUDA) and says so; everything else is the real code path, through the CLI where a user meets it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lowrank_rlvr.cli import app
from lowrank_rlvr.runtime import (
    Launch,
    NvidiaDriver,
    check_cpu_training,
    compute_dtype,
    generation_dtype,
    launch_from_environment,
    nvidia_driver,
)

BIN = Path(sys.executable).parent
T4, A100 = (7, 5), (8, 0)


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- item 2: every rank loads its 4-bit base onto its own GPU ------------------------------------------------------


@pytest.mark.parametrize("local_rank", [0, 1, 3])
def test_a_4bit_base_on_rank_n_is_loaded_onto_gpu_n(monkeypatch, local_rank):
    from lowrank_rlvr.backends import hf_device_map

    # the variables torchrun / accelerate launch set on the second machine of two with 4 GPUs each
    monkeypatch.setenv("RANK", str(4 + local_rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", "8")
    launch = launch_from_environment()
    assert launch == Launch(rank=4 + local_rank, world_size=8, local_rank=local_rank)
    assert hf_device_map(launch, on_cuda=True, load_in_4bit=True) == {"": local_rank}
    # a 16-bit base is moved by the Trainer (and ZeRO-3 refuses a device_map); on CPU there is no GPU to pick
    assert hf_device_map(launch, on_cuda=True, load_in_4bit=False) is None
    assert hf_device_map(launch, on_cuda=False, load_in_4bit=True) is None


def test_a_plain_launch_is_rank_0_of_1_on_gpu_0(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launch_from_environment() == Launch(rank=0, world_size=1, local_rank=0)


# -- items 3 and 9: combinations the pinned libraries cannot run are refused at load ---------------------------------


def test_hf_4bit_with_trl_vllm_is_refused_at_load_with_what_to_change(cli):
    line = _one_error_line(
        cli.invoke(app, ["plan", "qwen2.5-math-7b-pi1-4gpu", "--gpu-memory", "79", "--set", "model.load_in_4bit=true"])
    )
    assert "grpo.use_vllm with model.load_in_4bit" in line
    assert "model.load_in_4bit: false" in line and "grpo.use_vllm: false" in line
    # 'auto' is hf wherever unsloth is missing: refused the same way
    auto = cli.invoke(app, ["plan", "qwen2.5-math-1.5b-pi1", "--set", "grpo.use_vllm=true"])
    assert "grpo.use_vllm with model.load_in_4bit" in _one_error_line(auto)


def test_the_unsloth_backend_keeps_its_own_4bit_sampling(cli):
    result = cli.invoke(
        app, ["plan", "qwen2.5-math-1.5b-pi1", "--set", "model.backend=unsloth", "--set", "grpo.use_vllm=true"]
    )
    assert result.exit_code == 0, result.output


def test_the_shipped_4gpu_config_syncs_a_16bit_base_into_colocated_vllm_and_fits_80gb(cli):
    result = cli.invoke(app, ["plan", "qwen2.5-math-7b-pi1-4gpu", "--gpu-memory", "79"])
    assert result.exit_code == 0, result.output
    assert "16-bit linears" in result.stdout and "vllm_weights" in result.stdout
    # its 4-bit alternative without vLLM, as the header says, loads as well
    four_bit = cli.invoke(
        app, ["plan", "qwen2.5-math-7b-pi1-4gpu", "--gpu-memory", "79", "--set", "model.load_in_4bit=true",
              "--set", "grpo.use_vllm=false"],
    )
    assert four_bit.exit_code == 0, four_bit.output


def test_float32_on_unsloth_is_refused_at_load(cli, tmp_path):
    args = ["--set", "model.backend=unsloth", "--set", "model.dtype=float32"]
    line = _one_error_line(cli.invoke(app, ["plan", "qwen2.5-math-1.5b-pi1", *args]))
    assert "model.dtype: float32 cannot run on the unsloth backend" in line and "model.dtype: auto" in line
    train = cli.invoke(app, ["train", "tiny-cpu", "-o", str(tmp_path / "run"), *args])
    assert "model.dtype: float32 cannot run on the unsloth backend" in _one_error_line(train)
    assert not (tmp_path / "run").exists()
    # without Unsloth's vLLM engine float32 is Unsloth's to take (unsloth 2026.10.9 llama.py:3620 allows it)
    no_vllm = cli.invoke(app, ["plan", "qwen2.5-math-1.5b-pi1", *args, "--set", "model.fast_inference=false"])
    assert no_vllm.exit_code in (0, 3), no_vllm.output  # it plans (fits or not), it is not refused


def test_plan_and_help_say_unsloths_share_is_of_free_memory(cli):
    plan = cli.invoke(app, ["plan", "qwen2.5-math-1.5b-pi1"])
    assert plan.exit_code == 0, plan.output
    assert "share is of the memory free when it loads" in " ".join(plan.stdout.split())
    from lowrank_rlvr.config import ModelSettings

    assert "FREE when vLLM loads" in ModelSettings.model_fields["gpu_memory_utilization"].description


# -- item 4: one dtype on a GPU without bf16, for training and for generation --------------------------------------


def test_training_auto_dtype_and_generation_agree_on_a_card_without_bf16():
    import torch

    # a bf16 checkpoint (Qwen2.5-Math) on a T4: vLLM 0.30 refuses bf16 below capability 8.0
    assert generation_dtype("bfloat16", T4) == "float16"
    assert compute_dtype("auto", T4) == torch.float16
    assert generation_dtype("bfloat16", A100) == "bfloat16" and compute_dtype("auto", A100) == torch.bfloat16
    # CPU (capability None): as stored for generation, float32 for training; other stored dtypes are kept
    assert generation_dtype("bfloat16", None) == "bfloat16" and compute_dtype("auto", None) == torch.float32
    assert generation_dtype("float32", T4) == "float32" and generation_dtype("float16", A100) == "float16"


def test_eval_of_a_bf16_checkpoint_on_a_t4_generates_in_float16(cli, monkeypatch, tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bf16_model = tmp_path / "tiny-bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(bf16_model)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(bf16_model)
    # the stand-in: the capability query answers as a T4 would; the model still runs on this CPU
    monkeypatch.setattr("lowrank_rlvr.generation.cuda_capability", lambda: T4)
    report = tmp_path / "report.json"
    result = cli.invoke(
        app, ["eval", str(bf16_model), "--backend", "hf", "--benchmarks", "math500", "--limit", "1", "--max-tokens",
              "4", "--output", str(report)],  # the shipped MATH500
    )
    assert result.exit_code == 0, result.output
    assert '"dtype": "float16"' in report.read_text()


# -- items 8 and 9: unsloth is imported first, with UNSLOTH_VLLM_STANDBY set both ways ----------------------------

STAND_IN_UNSLOTH = '''
# A stand-in for Unsloth (this tests OUR wiring, not Unsloth): record what was imported before it, then stop.
import json, os, sys
import torch
record = {
    "modules": sorted({name.split(".")[0] for name in sys.modules}),
    "cuda_initialized": torch.cuda.is_initialized(),
    "UNSLOTH_VLLM_STANDBY": os.environ.get("UNSLOTH_VLLM_STANDBY"),
}
with open(os.environ["STAND_IN_RECORD"], "w") as f:
    json.dump(record, f)
os._exit(17)
'''
# The one other stand-in: torch answers "CUDA is available" (this CPU has none), so `train` reaches the import.
STAND_IN_CUDA = '''
import torch
torch.cuda.is_available = lambda: True
'''


@pytest.mark.parametrize("standby", [False, True])
def test_unsloth_is_imported_before_transformers_and_cuda(tmp_path, standby):
    stand_ins = tmp_path / "stand-ins"
    (stand_ins / "unsloth").mkdir(parents=True)
    (stand_ins / "unsloth" / "__init__.py").write_text(STAND_IN_UNSLOTH)
    (stand_ins / "sitecustomize.py").write_text(STAND_IN_CUDA)
    record_path = tmp_path / "record.json"
    env = {
        **os.environ, "PYTHONPATH": str(stand_ins), "STAND_IN_RECORD": str(record_path),
        "UNSLOTH_VLLM_STANDBY": "0" if standby else "1",  # inherited the other way round: must be overridden
    }
    result = subprocess.run(
        [str(BIN / "lowrank-rlvr"), "train", "tiny-cpu", "-o", str(tmp_path / "run"), "--set", "model.backend=unsloth",
         "--set", "model.dtype=auto", "--set", f"model.vllm_standby={str(standby).lower()}"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 17, result.stderr[-3000:]  # the stand-in was reached (it exits with 17)
    record = json.loads(record_path.read_text())
    assert not {"transformers", "trl", "peft", "accelerate"} & set(record["modules"]), record["modules"]
    assert record["cuda_initialized"] is False
    assert record["UNSLOTH_VLLM_STANDBY"] == ("1" if standby else "0")


# -- item 10: a GPU that torch cannot use does not mean silent CPU training ----------------------------------------

FAKE_NVIDIA_SMI = """#!/bin/sh
# A stand-in for the driver query: an old driver on a T4 (what torch's CUDA 13 wheel cannot use).
case "$*" in
  *driver_version*) echo "550.54.15, Tesla T4, 7.5" ;;
  *memory.total*) echo "15360, Tesla T4" ;;
  *) exit 1 ;;
esac
"""


@pytest.fixture()
def old_driver(tmp_path, monkeypatch):
    folder = tmp_path / "fake-bin"
    folder.mkdir()
    smi = folder / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # no-op here; on a GPU machine: "unusable"
    return folder


def test_train_refuses_cpu_training_of_a_real_model_when_the_gpu_is_unusable(cli, old_driver, tiny_model, tmp_path):
    # a local model folder is not a builtin: it could be a 1.5B model
    result = cli.invoke(
        app, ["train", "tiny-cpu", "-o", str(tmp_path / "run"), "--set", f"model.name_or_path={tiny_model}"]
    )
    line = _one_error_line(result)
    assert "an NVIDIA GPU is present (driver 550.54.15, Tesla T4, compute capability 7.5)" in line
    assert "driver >= 580" in line and "download.pytorch.org/whl/cu128" in line and "CUDA_VISIBLE_DEVICES=" in line
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_cpu_training_is_allowed_for_builtins_hidden_gpus_and_machines_without_nvidia():
    driver = NvidiaDriver("550.54.15", "Tesla T4", "7.5")
    check_cpu_training("builtin:tiny-qwen2", False, driver, None, "13.0")  # the demo models are meant for CPU
    check_cpu_training("Qwen/Qwen2.5-Math-1.5B", False, driver, "", "13.0")  # GPUs hidden on purpose
    check_cpu_training("Qwen/Qwen2.5-Math-1.5B", False, driver, "-1", "13.0")
    check_cpu_training("Qwen/Qwen2.5-Math-1.5B", False, None, None, "13.0")  # no NVIDIA driver at all
    check_cpu_training("Qwen/Qwen2.5-Math-1.5B", True, driver, None, "13.0")  # torch uses the GPU


def test_plan_env_reports_the_driver_and_capability_torch_cannot_use(cli, old_driver):
    result = cli.invoke(app, ["plan", "--env"])
    assert result.exit_code == 0, result.output
    assert "NVIDIA driver: driver 550.54.15, Tesla T4, compute capability 7.5" in result.stdout
    assert "warning: an NVIDIA GPU is present (driver 550.54.15" in result.stdout


def test_the_driver_version_is_read_from_proc_without_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    proc = tmp_path / "version"
    proc.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16-I3-B03-4-3)\n"
        "GCC version:  gcc version 12.3.0\n"
    )
    monkeypatch.setattr("lowrank_rlvr.runtime.NVIDIA_PROC_VERSION", proc)
    assert nvidia_driver() == NvidiaDriver("580.65.06")
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n")
    assert nvidia_driver() == NvidiaDriver("535.104.05")
    monkeypatch.setattr("lowrank_rlvr.runtime.NVIDIA_PROC_VERSION", tmp_path / "absent")
    assert nvidia_driver() is None
