"""Facts about this process, worked out once at the start of a command and passed down.

- the launch: this process's rank, its local rank (its GPU) and the number of processes (set by
  `accelerate launch` / `torchrun`);
- the machine: whether CUDA is there, the GPU's compute capability, and the NVIDIA driver (present even when torch
  cannot use it);
- the dtype rules: the compute dtype that `model.dtype` means on this machine, and what a checkpoint generates in;
- whether training on the CPU is a choice or a broken GPU install (`check_cpu_training`).

What `train` works out from these and the config (the backend, the data, the tokenizer) is `train.training_setup`'s;
which backend `auto` picks is `backends.choose_backend`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowrank_rlvr.errors import UserError


@dataclass(frozen=True)
class Launch:
    rank: int  # 0 = the main process: the only one that writes the run folder
    world_size: int  # processes training together
    local_rank: int = 0  # this process's index on its machine: the GPU it trains on (cuda:<local_rank>)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch_from_environment() -> Launch:
    """RANK, WORLD_SIZE and LOCAL_RANK as the launcher set them (a plain `lowrank-rlvr train` is rank 0 of 1)."""
    return Launch(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cuda_capability() -> tuple[int, int] | None:
    """(major, minor) compute capability of this process's GPU; None without CUDA. Initialises CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability())


# bf16 needs compute capability 8.0 (Ampere): vllm 0.30.0 vllm/platforms/cuda.py:669-686 refuses it below ("Bfloat16
# is only supported on GPUs with compute capability of at least 8.0"), and torch 2.13's is_bf16_supported() says yes on
# a T4 (7.5) because it counts emulation. One rule for training and generation, from the capability alone.
BF16_MIN_CAPABILITY = (8, 0)


def has_bf16(capability: tuple[int, int] | None) -> bool:
    return capability is not None and tuple(capability) >= BF16_MIN_CAPABILITY


def compute_dtype(setting: str, capability: tuple[int, int] | None) -> Any:
    """The torch dtype for `model.dtype` ('auto': bf16 on a GPU of capability >= 8.0, fp16 on older GPUs, fp32 on
    CPU; `capability` None = CPU)."""
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if capability is None:
        return torch.float32
    return torch.bfloat16 if has_bf16(capability) else torch.float16


def generation_dtype(stored: str, capability: tuple[int, int] | None) -> str:
    """The dtype to generate in for a checkpoint stored in `stored`: as stored, except bf16 on a GPU without it
    (capability < 8.0, e.g. a T4), which is float16, as `compute_dtype('auto', ...)` trains there."""
    if stored == "bfloat16" and capability is not None and not has_bf16(capability):
        return "float16"
    return stored


@dataclass(frozen=True)
class NvidiaDriver:
    """An NVIDIA driver on this machine, seen without torch (torch may be unable to use it)."""

    version: str  # e.g. '550.54.15'
    gpu: str | None = None  # e.g. 'Tesla T4' (nvidia-smi only)
    capability: str | None = None  # e.g. '7.5' (nvidia-smi of a driver >= 510 only)

    def describe(self) -> str:
        parts = [f"driver {self.version}"]
        parts += [self.gpu] if self.gpu else []
        parts += [f"compute capability {self.capability}"] if self.capability else []
        return ", ".join(parts)


NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")


def nvidia_driver() -> NvidiaDriver | None:
    """The NVIDIA driver from `nvidia-smi` (driver, GPU name, capability), else from /proc/driver/nvidia/version
    (driver only); None when neither is there."""
    if shutil.which("nvidia-smi"):
        for fields in ("driver_version,name,compute_cap", "driver_version,name"):  # compute_cap: drivers >= 510
            try:
                out = subprocess.run(
                    ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=20, check=True,
                ).stdout.strip().splitlines()
            except (OSError, subprocess.SubprocessError):
                continue
            if out and out[0].strip():
                values = [v.strip() for v in out[0].split(",")] + [None]
                return NvidiaDriver(values[0], values[1] or None, values[2] if len(values) > 3 else None)
    try:
        text = NVIDIA_PROC_VERSION.read_text()
    except OSError:
        return None
    # 'NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05 ...' (open modules: '... Kernel Module for x86_64')
    match = re.search(r"Kernel Module(?: for \S+)?\s+([0-9][0-9.]*)", text)
    return NvidiaDriver(match.group(1)) if match else NvidiaDriver("unknown")


def gpus_hidden(cuda_visible_devices: str | None) -> bool:
    """CUDA_VISIBLE_DEVICES set to nothing ('' or -1): the GPUs are hidden on purpose, CPU training is meant."""
    return cuda_visible_devices is not None and cuda_visible_devices.strip() in ("", "-1")


def check_cpu_training(
    model_name: str, on_cuda: bool, driver: NvidiaDriver | None, cuda_visible_devices: str | None, torch_cuda: str | None
) -> None:
    """Refuse to train a real (non-builtin) model on the CPU when the machine has an NVIDIA GPU that torch cannot use:
    that is a driver or wheel mismatch, not a choice, and the run would take days without a word."""
    if on_cuda or driver is None or model_name.startswith("builtin:") or gpus_hidden(cuda_visible_devices):
        return
    build = f"torch built for CUDA {torch_cuda}" if torch_cuda else "a torch without CUDA (a CPU build)"
    # torch 2.13.0's default Linux wheel and vllm 0.30.0's are CUDA 13.0 builds (torch requires cuda-toolkit 13.0.3,
    # vllm nvidia-cutlass-dsl[cu13]): CUDA 13 needs driver >= 580 and dropped GPUs below compute capability 7.5.
    raise UserError(
        f"an NVIDIA GPU is present ({driver.describe()}) but {build} cannot use it, so {model_name} would train on "
        "the CPU: the [gpu] install needs driver >= 580 and compute capability >= 7.5 (plan --env shows both); with "
        "an older driver update it, or use the hf backend with torch for CUDA 12.8 (pip install torch==2.13.0 "
        "--index-url https://download.pytorch.org/whl/cu128); set CUDA_VISIBLE_DEVICES= to train on the CPU on purpose"
    )
