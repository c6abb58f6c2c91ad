"""GGUF files of a merged model through Unsloth's saver (`merge --gguf`): it builds llama.cpp and converts, so it
needs Unsloth (CUDA) and the network. Without Unsloth, llama.cpp's own converter reads the merged folder as it is.

The GGUF starts from the merged 16-bit folder, reloaded, not from the 4-bit model used in training (see
`lowrank_rlvr.merge` for why nothing is merged into a 4-bit model).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from lowrank_rlvr.errors import UserError


def check_gguf_ready() -> None:
    """Fail before the merge when `--gguf` cannot run: Unsloth is not installed."""
    if importlib.util.find_spec("unsloth") is None:
        raise UserError("--gguf needs Unsloth (CUDA): pip install -e '.[gpu]', or convert the merged folder with llama.cpp")


def save_gguf(folder: Path, quantization: str) -> dict[str, Any]:
    """GGUF files in `<folder>/gguf/` through Unsloth's saver; uploaded with the merged model. Returns
    {"gguf": [their paths]}.

    Unsloth 2026.10.9's `save_pretrained_gguf(save_directory, ...)` writes its files into the SIBLING folder
    `f"{save_directory}_gguf"` (unsloth/save.py:3965-3967 `_gguf_output_directory`, used at 4729; on Kaggle its disk
    preflight may first swap `save_directory` for /tmp, 4097 and 4680) and returns where they are:
    `{"save_directory", "gguf_directory", "gguf_files", "modelfile_location", ...}` (save.py:4968-4976). So it is
    handed a scratch folder beside ours, and the files it names are moved into `<folder>/gguf/`.
    """
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(model_name=str(folder), load_in_4bit=False)
    scratch = folder.parent / f".{folder.name}.gguf-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        saved = model.save_pretrained_gguf(str(scratch), tokenizer, quantization_method=quantization)
        target = folder / "gguf"
        target.mkdir(exist_ok=True)
        written = [Path(name) for name in saved["gguf_files"]]
        if saved.get("modelfile_location"):  # Ollama's Modelfile names the first GGUF file by its bare name
            written.append(Path(saved["modelfile_location"]))
        moved = [Path(shutil.move(str(path), str(target / path.name))) for path in written]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(f"{scratch}_gguf", ignore_errors=True)
    return {"gguf": [str(path) for path in moved if path.suffix == ".gguf"]}
