"""`lowrank-rlvr merge`: adapter -> 16/32-bit base -> merged checkpoint, with its model card (`card.py`), then GGUF
(`gguf.py`) and the Hugging Face Hub upload (`hub.py`).

The merged folder is a plain transformers checkpoint (safetensors, config without `quantization_config`, tokenizer,
generation config): `AutoModelForCausalLM.from_pretrained`, vLLM and llama.cpp's converter read it as they read the
base model.

Departs from the usual Unsloth/QLoRA habit of merging into the model that was trained: training ran on a 4-bit base,
but we never merge into it. peft would add the LoRA delta to dequantized weights and re-quantize the sum, and the
rounding error (measured: 0.13 on the logits) is of the order of the adapter's own effect (1.4). The base is
therefore reloaded in bf16/fp16/fp32 from its original weights and the delta added there. A pre-quantized base named
in the adapter (`unsloth/...-bnb-4bit`) is replaced by its 16-bit twin.

Example:
    >>> options = MergeOptions(Path("runs/tiny/adapter"), Path("exports/tiny"), dtype="fp32")
    >>> merge_command(options)["logits_max_rel_diff"] < 1e-3
    True
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowrank_rlvr.adapters import Adapter, read_adapter
from lowrank_rlvr.card import base_license, model_card
from lowrank_rlvr.errors import UserError, first_line
from lowrank_rlvr.files import read_json_object, writable_dir
from lowrank_rlvr.gguf import check_gguf_ready, save_gguf
from lowrank_rlvr.hub import check_hub_ready, check_repo_id, upload
from lowrank_rlvr.pretrained import is_prequantized, sixteen_bit_name
from lowrank_rlvr.runs import RunFolder

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# A short input for the post-merge check: merged logits must reproduce base + adapter.
_CHECK_TEXT = "What is 17+25? Let's think step by step."


@dataclass(frozen=True)
class MergeOptions:
    """What `lowrank-rlvr merge` was asked for, checked once (the files it names are checked by `merge_command`)."""

    adapter_dir: Path  # RUN/adapter or RUN/checkpoint-N
    output: Path  # the merged model's folder: new, empty, or replaced with `overwrite`
    base: str | None = None  # default: the adapter's base (its 16-bit twin if it is pre-quantized)
    dtype: str = "bf16"  # a key of DTYPES
    overwrite: bool = False
    push_to_hub: str | None = None  # a Hub repo id; it also names the model in the card
    private: bool = False
    gguf: str | None = None  # a GGUF quantization (Unsloth's names, e.g. q4_k_m)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.push_to_hub:
            check_repo_id(self.push_to_hub)


@dataclass(frozen=True)
class MergeSource:
    """The checked inputs of a merge: the adapter, the base it goes into, and what its run folder tells."""

    adapter_dir: Path  # as the user named it (for messages)
    adapter: Adapter
    base_name: str  # as shown and written in the card: 'builtin:tiny-qwen2' or a Hub id, not a cache folder
    base_path: str  # where the base's files are
    run: dict[str, Any]  # find_run's answer


def merge_command(options: MergeOptions) -> dict[str, Any]:
    """The whole `lowrank-rlvr merge`: check every precondition, merge, write the card, then GGUF and upload.

    Preconditions (adapter, output folder, Hub token, Unsloth for GGUF) are checked before any weight is loaded, so a
    typo costs seconds, not a merge. Returns the metrics of every stage in one dict.
    """
    adapter = read_adapter(options.adapter_dir)
    check_output_dir(options.output, options.overwrite)
    if options.push_to_hub:
        check_hub_ready(options.push_to_hub)
    if options.gguf:
        check_gguf_ready()
    folder, metrics = merge_adapter(options, adapter)
    if options.gguf:
        metrics.update(save_gguf(folder, options.gguf))
    if options.push_to_hub:
        metrics.update(upload(folder, options.push_to_hub, private=options.private))
    return metrics


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    writable_dir(output_dir, "--output")
    writable_dir(output_dir.parent, "--output's parent folder")  # the merge is staged beside it, then renamed
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise UserError(f"--output {output_dir} exists and is not empty (pass --overwrite to replace it)")


def merge_adapter(options: MergeOptions, adapter: Adapter) -> tuple[Path, dict[str, Any]]:
    """Load the base in `options.dtype`, apply the adapter, merge, check the logits, save a plain checkpoint and
    its model card in `options.output`.

    Written to a staging folder beside the output and renamed at the end: a failed merge leaves no half export.
    The Hub repo id (when uploading) names the model in the card; default: the output folder.
    """
    from rich.console import Console

    console = Console(stderr=True)
    started = time.perf_counter()
    source = check_base(options.adapter_dir, adapter, options.base)
    model, tokenizer = load_with_adapter(source, options.dtype, console)
    merged, max_rel_diff = merge_and_verify(model, tokenizer, options.dtype, console)
    run = source.run
    metrics = {
        "base": source.base_name,
        "adapter": str(options.adapter_dir),
        "dtype": options.dtype,
        "lora_modules_merged": sum(".lora_A." in key for key in adapter.lora_tensor_names()),
        "logits_max_rel_diff": max_rel_diff,
        "step": run["step"],
    }
    card = model_card(
        base_name=source.base_name,
        dtype=options.dtype,
        model_id=options.push_to_hub or str(options.output),
        run_config=run["config"],
        step=run["step"],
        eval_report=run["eval_report"],
        eval_by_step=run["eval_by_step"],
        license=base_license(source.base_path),
        trained_in_4bit=run["config"].model.load_in_4bit if run["config"] is not None else None,
        logits_max_rel_diff=max_rel_diff,
    )
    with console.status(f"saving to {options.output}"):
        write_export(merged, tokenizer, card, options.output)
    metrics["size_bytes"] = sum(f.stat().st_size for f in options.output.iterdir() if f.is_file())
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    return options.output, metrics


# -- the steps of a merge ------------------------------------------------------------------------------------------


def check_base(adapter_dir: Path, adapter: Adapter, base: str | None) -> MergeSource:
    """The base to merge into, checked before its weights are loaded: readable, not stored quantized, complete."""
    from transformers import AutoConfig

    from lowrank_rlvr.builtin import resolve_model_path
    from lowrank_rlvr.files import check_model

    run = find_run(adapter_dir)
    base_name = choose_base(adapter, run["config"], base)
    base_path = resolve_model_path(base_name)
    if run["config"] is not None and resolve_model_path(run["config"].model.name_or_path) == base_path:
        base_name = run["config"].model.name_or_path  # 'builtin:tiny-qwen2' or the Hub id, not a cache folder
    try:
        base_config = AutoConfig.from_pretrained(base_path)
    except (OSError, ValueError) as exc:
        raise UserError(f"base model {base_name!r} could not be loaded ({first_line(exc)}); pass --base") from None
    if getattr(base_config, "quantization_config", None):
        raise UserError(f"base model {base_name!r} is stored quantized; pass --base with its 16-bit weights")
    check_model(base_path, "base model", shown=base_name)  # truncated weights, a broken tokenizer: before loading
    return MergeSource(adapter_dir, adapter, base_name, base_path, run)


def choose_base(adapter: Adapter, run_config: Any | None, base: str | None) -> str:
    """The 16/32-bit base to merge into: `--base`, else the adapter's base (its 16-bit twin if it is pre-quantized)."""
    if base:
        return base
    named = adapter.base
    if not named:
        raise UserError("the adapter's adapter_config.json names no base_model_name_or_path: pass --base")
    if not is_prequantized(named):
        return named
    if run_config is not None and not is_prequantized(run_config.model.name_or_path):
        return run_config.model.name_or_path
    return sixteen_bit_name(named)


def load_with_adapter(source: MergeSource, dtype: str, console: Any) -> tuple[Any, Any]:
    """The base in `dtype` with the adapter applied (a peft model), and the tokenizer (the adapter's, else the base's).
    An adapter that does not fit the base, in shape or in layers, is a UserError naming the first misfit."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, base_name = source.adapter_dir, source.base_name
    with console.status(f"loading {base_name} in {dtype}"):
        model = AutoModelForCausalLM.from_pretrained(source.base_path, dtype=getattr(torch, DTYPES[dtype]))
        tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else source.base_path
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    with console.status(f"applying adapter {adapter_dir}"):
        try:
            model = PeftModel.from_pretrained(model, adapter_dir)
        except RuntimeError as exc:
            raise UserError(f"adapter {adapter_dir} does not fit base {base_name!r}: {_size_mismatch(exc)}") from None
        except ValueError as exc:  # peft: target modules not found in the base
            raise UserError(f"adapter {adapter_dir} does not fit base {base_name!r}: {first_line(exc)}") from None
        check_all_weights_loaded(model, source)
    return model, tokenizer


def check_all_weights_loaded(peft_model: Any, source: MergeSource) -> None:
    """Every LoRA tensor of the file must land in the base and every LoRA layer of the base must get one.

    peft loads with strict=False: an adapter from a deeper model would otherwise merge silently and partially.
    """
    file_keys = source.adapter.lora_tensor_names()
    model_keys = {
        name.replace(".default", "") for name, _ in peft_model.named_parameters() if ".lora_A." in name or ".lora_B." in name
    }
    unused = sorted(file_keys - model_keys)
    missing = sorted(model_keys - file_keys)
    if unused or missing:
        example = (unused or missing)[0]
        what = f"{len(unused)} adapter tensors have no place in it" if unused else f"{len(missing)} base layers get no weights"
        raise UserError(f"adapter {source.adapter_dir} does not fit base {source.base_name!r}: {what} (e.g. {example})")


def merge_and_verify(model: Any, tokenizer: Any, dtype: str, console: Any) -> tuple[Any, float]:
    """Merge the adapter into the weights; return the merged model (its config: `dtype`, not quantized) and the
    largest difference of its logits from base + adapter on a short input, relative to the largest logit."""
    import torch

    check_ids = tokenizer(_CHECK_TEXT, return_tensors="pt")["input_ids"]  # [1, L]
    with torch.no_grad():
        logits_adapter = model(input_ids=check_ids).logits.float()  # [1, L, V]
    with console.status("merging"):
        merged = model.merge_and_unload(safe_merge=True)
        with torch.no_grad():
            logits_merged = merged(input_ids=check_ids).logits.float()  # [1, L, V]
    max_rel_diff = ((logits_merged - logits_adapter).abs().max() / logits_adapter.abs().max()).item()
    merged.config.__dict__.pop("quantization_config", None)
    merged.config.dtype = getattr(torch, DTYPES[dtype])
    return merged, max_rel_diff


def write_export(merged: Any, tokenizer: Any, card: str, output_dir: Path) -> None:
    """Weights, tokenizer and README.md into a staging folder beside `output_dir`, renamed into place when complete
    (an existing `output_dir` is replaced)."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()  # not tempfile.mkdtemp: its 0700 mode would carry over to the export
    try:
        merged.save_pretrained(staging, max_shard_size="5GB")
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(card)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def find_run(adapter_dir: Path) -> dict[str, Any]:
    """What the run folder around an adapter (RUN/adapter, RUN/checkpoint-N) tells: config, step, eval results."""
    found: dict[str, Any] = {"config": None, "step": None, "eval_report": None, "eval_by_step": None}
    run = RunFolder.around(adapter_dir)
    if run is None or not run.config_path.is_file():
        return found
    try:
        found["config"] = run.read_config()
    except UserError:  # an unreadable config only costs the card its recipe section
        found["config"] = None
    found["step"] = RunFolder.step_of(adapter_dir)
    if found["step"] is None:
        metrics = run.read_metrics()
        found["step"] = metrics[-1]["step"] if metrics else None
    report_path = run.eval_report_for(adapter_dir)
    if report_path.is_file():
        found["eval_report"] = read_json_object(report_path, "eval report")
    found["eval_by_step"] = {row["step"]: row for row in run.read_eval_by_step()} or None
    return found


def _size_mismatch(exc: RuntimeError) -> str:
    """peft's load error lists every mismatching tensor; keep the first, without the peft-internal prefixes."""
    for line in str(exc).splitlines():
        if "size mismatch" in line:
            return line.strip().replace("base_model.model.", "").replace(".default", "")
    return first_line(exc)
