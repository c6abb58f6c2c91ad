"""The doctor (`lowrank-rlvr plan --env`, `env_command`): versions, the GPU, the backend `auto` picks, and the
combinations known not to work."""

from __future__ import annotations

import os

from lowrank_rlvr.backends import choose_backend
from lowrank_rlvr.plan import GiB
from lowrank_rlvr.runtime import NvidiaDriver, has_bf16, nvidia_driver

DOCTOR_PACKAGES = (
    "torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "unsloth", "unsloth_zoo", "vllm",
    "vllm-bnb-plugin",
)


def env_command() -> str:
    """Versions, the GPU, the backend `auto` picks, and warnings about combinations known not to work."""
    import platform

    versions = {name: _version(name) for name in DOCTOR_PACKAGES}
    gpu = _gpu_info()
    driver = nvidia_driver()
    lines = [f"python: {platform.python_version()}"]
    lines += [f"{name}: {versions[name] or 'not installed'}" for name in DOCTOR_PACKAGES]
    lines.append(f"CUDA (torch build): {gpu['cuda_build'] or 'none'}")
    lines.append(f"NVIDIA driver: {driver.describe() if driver else 'none found (no nvidia-smi, no /proc/driver/nvidia)'}")
    if gpu["name"]:
        lines.append(
            f"GPU: {gpu['name']}, {gpu['gib']:.2f} GiB, "
            f"compute capability {gpu['capability'][0]}.{gpu['capability'][1]}, "
            f"bf16 {'yes' if gpu['bf16'] else 'no (use model.dtype: float16)'}"
        )
    else:
        lines.append("GPU: none visible to torch")
    lines.append(f"backend 'auto' picks: {choose_backend('auto', on_cuda=gpu['name'] is not None)}")
    lines += [f"warning: {w}" for w in known_bad_combinations(versions, gpu, driver)]
    return "\n".join(lines)


def known_bad_combinations(versions: dict[str, str | None], gpu: dict, driver: NvidiaDriver | None = None) -> list[str]:
    """Warnings for combinations that fail or silently degrade (sources: the pinned wheels' metadata and code)."""
    from packaging.version import InvalidVersion, Version

    def at_least(name: str, minimum: str) -> bool:
        try:
            return versions[name] is not None and Version(versions[name]) >= Version(minimum)
        except InvalidVersion:
            return False

    warnings = []
    if driver is not None and not gpu["name"]:
        warnings.append(
            f"an NVIDIA GPU is present ({driver.describe()}) but torch (CUDA build {gpu['cuda_build'] or 'none'}) "
            "cannot use it: `train` refuses to train a real model on the CPU (README: GPU install)"
        )
    has_unsloth = versions["unsloth"] is not None
    if has_unsloth and not gpu["name"]:
        warnings.append("unsloth is installed but no CUDA GPU is visible: 'auto' falls back to the hf backend")
    if has_unsloth and versions["unsloth_zoo"] is None:
        warnings.append("unsloth without unsloth_zoo: install both from the [gpu] extra")
    if has_unsloth and at_least("trl", "1.15.1"):
        warnings.append(f"trl {versions['trl']} is newer than unsloth 2026.10.9 supports (trl<=1.15.0)")
    if has_unsloth and at_least("transformers", "5.17.1"):
        warnings.append(f"transformers {versions['transformers']} is newer than unsloth 2026.10.9 supports (<=5.17.0)")
    if versions["trl"] == "1.15.0" and not gpu["name"]:
        warnings.append("trl 1.15.0's GRPOTrainer needs Triton for its fused log-prob head: fails on CPU (pin 1.14.2)")
    if at_least("vllm", "0.28.0") and versions["vllm-bnb-plugin"] is None:
        warnings.append(
            f"vllm {versions['vllm']} moved bitsandbytes out of tree: 4-bit models with Unsloth's fast_inference "
            "need `pip install vllm-bnb-plugin` (unsloth_zoo vllm_utils.py:4526)"
        )
    vllm_030, torch_213 = (versions["vllm"] or "").startswith("0.30."), (versions["torch"] or "").startswith("2.13.")
    if vllm_030 and versions["torch"] and not torch_213:
        warnings.append(f"vllm {versions['vllm']} pins torch 2.13.0, torch {versions['torch']} is installed")
    if versions["bitsandbytes"] in ("0.46.0", "0.48.0"):
        warnings.append(f"bitsandbytes {versions['bitsandbytes']} is excluded by unsloth (broken release)")
    if os.environ.get("UNSLOTH_VLLM_STANDBY", "0") != "0" and versions["vllm"]:
        vllm = versions["vllm"]
        if vllm.startswith(("0.10.", "0.14.")):
            warnings.append(f"UNSLOTH_VLLM_STANDBY with vllm {vllm} crashes (unsloth_zoo refuses 0.10.x and 0.14.x)")
    if gpu["name"] and gpu["capability"] < (7, 0):
        warnings.append("compute capability < 7.0: vLLM does not run, Unsloth samples without it (slow)")
    elif gpu["name"] and not gpu["bf16"]:
        warnings.append("no bf16 on this GPU: use model.dtype: float16 (configs/qwen2.5-math-1.5b-t4.yaml)")
    return warnings


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _gpu_info() -> dict:
    info = {"cuda_build": None, "name": None, "gib": 0.0, "capability": (0, 0), "bf16": False}
    try:
        import torch
    except ImportError:
        return info
    info["cuda_build"] = torch.version.cuda
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            gib=props.total_memory / GiB,
            capability=(props.major, props.minor),
            bf16=has_bf16((props.major, props.minor)),  # not is_bf16_supported(): it counts emulation (a T4)
        )
    return info
