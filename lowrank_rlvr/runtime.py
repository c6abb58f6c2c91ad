"""Facts about this process, worked out once at the start of a command and passed down.

- the launch: this process's rank and the number of processes (set by `accelerate launch` / `torchrun`);
- the machine: whether CUDA is there;
- the training backend (`unsloth` or `hf`) and the compute dtype that follow from the config on this machine;
- the data: the example set and its longest rendered prompt in tokens (vLLM's context is sized from it).

Nothing below this module reads the environment for these again.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

from lowrank_rlvr.errors import UserError


@dataclass(frozen=True)
class Launch:
    rank: int  # 0 = the main process: the only one that writes the run folder
    world_size: int  # processes training together

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch_from_environment() -> Launch:
    """RANK and WORLD_SIZE as the launcher set them (a plain `lowrank-rlvr train` is rank 0 of 1)."""
    return Launch(rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")))


@dataclass(frozen=True)
class Runtime:
    launch: Launch
    on_cuda: bool
    backend: str  # 'unsloth' or 'hf'
    dtype: Any  # torch.dtype of computation
    model_path: str  # local folder or Hub id (builtin names resolved)
    examples: list  # list[data.Example]: the example set, loaded once
    longest_prompt_tokens: int  # the longest rendered prompt of the example set
    tokenizer: Any  # the model's tokenizer (with a pad token), loaded once: prompts were measured with it


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_backend(requested: str, on_cuda: bool) -> str:
    """'auto' -> 'unsloth' with CUDA and the package, else 'hf'. An impossible explicit request is a UserError."""
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "auto":
        return "unsloth" if on_cuda and has_unsloth else "hf"
    if requested == "unsloth":
        if not on_cuda:
            raise UserError("backend 'unsloth' needs a CUDA GPU and none was found (use model.backend: hf)")
        if not has_unsloth:
            raise UserError("backend 'unsloth' needs the unsloth package: pip install -e '.[gpu]'")
    return requested


def compute_dtype(setting: str, on_cuda: bool) -> Any:
    """The torch dtype for `model.dtype` ('auto': bf16 if the GPU has it, fp16 on older GPUs, fp32 on CPU)."""
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if not on_cuda:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def training_runtime(cfg: Any, launch: Launch) -> Runtime:
    """Everything `train` needs to know before loading the model; bad data or an impossible backend fail here."""
    from lowrank_rlvr.data import load_examples, render_prompt
    from lowrank_rlvr.model import load_tokenizer, resolve_model_path

    examples = load_examples(cfg.data)
    on_cuda = cuda_available()
    backend = choose_backend(cfg.model.backend, on_cuda)
    model_path = resolve_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(model_path, cfg.model.name_or_path)
    prompts = [render_prompt(example.prompt, cfg.data.template, tokenizer) for example in examples]
    longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in prompts)
    dtype = compute_dtype(cfg.model.dtype, on_cuda)
    return Runtime(launch, on_cuda, backend, dtype, model_path, examples, longest, tokenizer)
