"""Adapter -> 16/32-bit base -> merged checkpoint, model card, Hugging Face Hub upload (and GGUF through Unsloth).

The merged folder is a plain transformers checkpoint (safetensors, config without `quantization_config`, tokenizer,
generation config): `AutoModelForCausalLM.from_pretrained`, vLLM and llama.cpp's converter read it as they read the
base model.

Departs from the usual Unsloth/QLoRA habit of merging into the model that was trained: training ran on a 4-bit base,
but we never merge into it. peft would add the LoRA delta to dequantized weights and re-quantize the sum, and the
rounding error (measured: 0.13 on the logits) is of the order of the adapter's own effect (1.4). The base is
therefore reloaded in bf16/fp16/fp32 from its original weights and the delta added there. A pre-quantized base named
in the adapter (`unsloth/...-bnb-4bit`) is replaced by its 16-bit twin.

Example:
    >>> folder, metrics = merge_adapter(Path("runs/tiny/adapter"), Path("exports/tiny"), dtype="fp32")
    >>> metrics["logits_max_rel_diff"] < 1e-3
    True
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from lowrank_rlvr.adapters import Adapter, read_adapter
from lowrank_rlvr.errors import UserError, first_line
from lowrank_rlvr.files import read_json_object
from lowrank_rlvr.pretrained import is_prequantized, sixteen_bit_name
from lowrank_rlvr.runs import RunFolder

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
CARD_TAGS = ["lowrank-rlvr", "rlvr", "grpo", "one-shot-rlvr", "lora", "math", "reasoning"]
PAPER = "https://arxiv.org/abs/2504.20571"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Eval settings worth a reader's attention; the report's local paths (report, responses, data_dir) stay out of the card.
_CARD_EVAL_SETTINGS = ("backend", "template", "max_tokens", "temperature", "top_p", "seed", "dtype", "limit")
_NOT_INTO_4BIT = {
    True: ", not into the 4-bit model used in training.",
    False: ".",
    None: " (lowrank-rlvr never merges into a 4-bit model).",
}
# A short input for the post-merge check: merged logits must reproduce base + adapter.
_CHECK_TEXT = "What is 17+25? Let's think step by step."


def export(
    adapter_dir: Path,
    output_dir: Path,
    base: str | None = None,
    dtype: str = "bf16",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    gguf: str | None = None,
) -> dict[str, Any]:
    """The whole `lowrank-rlvr merge`: check every precondition, merge, write the card, then GGUF and upload.

    Preconditions (adapter, output folder, Hub token, Unsloth for GGUF) are checked before any weight is loaded, so a
    typo costs seconds, not a merge. Returns the metrics of every stage in one dict.
    """
    read_adapter(adapter_dir)
    check_output_dir(output_dir, overwrite)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if push_to_hub:
        check_hub_ready(push_to_hub)
    if gguf and importlib.util.find_spec("unsloth") is None:
        raise UserError("--gguf needs Unsloth (CUDA): pip install -e '.[gpu]', or convert the merged folder with llama.cpp")
    folder, metrics = merge_adapter(
        adapter_dir, output_dir, base=base, dtype=dtype, overwrite=overwrite, model_id=push_to_hub
    )
    if gguf:
        metrics.update(save_gguf(folder, gguf))
    if push_to_hub:
        metrics.update(upload(folder, push_to_hub, private=private))
    return metrics


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    from lowrank_rlvr.files import writable_dir

    writable_dir(output_dir, "--output")
    writable_dir(output_dir.parent, "--output's parent folder")  # the merge is staged beside it, then renamed
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise UserError(f"--output {output_dir} exists and is not empty (pass --overwrite to replace it)")


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


def merge_adapter(
    adapter_dir: Path,
    output_dir: Path,
    base: str | None = None,
    dtype: str = "bf16",
    overwrite: bool = False,
    model_id: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Load the base in `dtype`, apply the adapter, merge, save a plain checkpoint and its model card.

    Written to a staging folder beside `output_dir` and renamed at the end: a failed merge leaves no half export.
    `model_id` (the Hub repo id when uploading) names the model in the card; default: the output folder.
    """
    import torch
    from peft import PeftModel
    from rich.console import Console
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lowrank_rlvr.builtin import resolve_model_path
    from lowrank_rlvr.files import check_model

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    adapter = read_adapter(adapter_dir)
    check_output_dir(output_dir, overwrite)
    run = find_run(adapter_dir)
    base_name = choose_base(adapter, run["config"], base)
    base_path = resolve_model_path(base_name)
    if run["config"] is not None and resolve_model_path(run["config"].model.name_or_path) == base_path:
        base_name = run["config"].model.name_or_path  # 'builtin:tiny-qwen2' or the Hub id, not a cache folder
    torch_dtype = getattr(torch, DTYPES[dtype])
    console = Console(stderr=True)
    started = time.perf_counter()

    try:
        base_config = AutoConfig.from_pretrained(base_path)
    except (OSError, ValueError) as exc:
        raise UserError(f"base model {base_name!r} could not be loaded ({first_line(exc)}); pass --base") from None
    if getattr(base_config, "quantization_config", None):
        raise UserError(f"base model {base_name!r} is stored quantized; pass --base with its 16-bit weights")
    check_model(base_path, "base model", shown=base_name)  # truncated weights, a broken tokenizer: before loading

    with console.status(f"loading {base_name} in {dtype}"):
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype)
        tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_path
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    with console.status(f"applying adapter {adapter_dir}"):
        try:
            model = PeftModel.from_pretrained(model, adapter_dir)
        except RuntimeError as exc:
            raise UserError(f"adapter {adapter_dir} does not fit base {base_name!r}: {_size_mismatch(exc)}") from None
        except ValueError as exc:  # peft: target modules not found in the base
            raise UserError(f"adapter {adapter_dir} does not fit base {base_name!r}: {first_line(exc)}") from None
        check_all_weights_loaded(model, adapter_dir, base_name)
        check_ids = tokenizer(_CHECK_TEXT, return_tensors="pt")["input_ids"]  # [1, L]
        with torch.no_grad():
            logits_adapter = model(input_ids=check_ids).logits.float()  # [1, L, V]
    with console.status("merging"):
        merged = model.merge_and_unload(safe_merge=True)
        with torch.no_grad():
            logits_merged = merged(input_ids=check_ids).logits.float()  # [1, L, V]
    max_rel_diff = ((logits_merged - logits_adapter).abs().max() / logits_adapter.abs().max()).item()

    merged.config.__dict__.pop("quantization_config", None)
    merged.config.dtype = torch_dtype
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()  # not tempfile.mkdtemp: its 0700 mode would carry over to the export
    try:
        with console.status(f"saving to {output_dir}"):
            merged.save_pretrained(staging, max_shard_size="5GB")
            tokenizer.save_pretrained(staging)
            metrics = {
                "base": base_name,
                "adapter": str(adapter_dir),
                "dtype": dtype,
                "lora_modules_merged": sum(".lora_A." in key for key in adapter.lora_tensor_names()),
                "logits_max_rel_diff": max_rel_diff,
                "step": run["step"],
            }
            (staging / "README.md").write_text(
                model_card(
                    base_name=base_name,
                    dtype=dtype,
                    model_id=model_id or str(output_dir),
                    run_config=run["config"],
                    step=run["step"],
                    eval_report=run["eval_report"],
                    eval_by_step=run["eval_by_step"],
                    license=base_license(base_path),
                    trained_in_4bit=run["config"].model.load_in_4bit if run["config"] is not None else None,
                    logits_max_rel_diff=max_rel_diff,
                )
            )
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    metrics["size_bytes"] = sum(f.stat().st_size for f in output_dir.iterdir() if f.is_file())
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    return output_dir, metrics


def check_all_weights_loaded(peft_model: Any, adapter_dir: Path, base_name: str) -> None:
    """Every LoRA tensor of the file must land in the base and every LoRA layer of the base must get one.

    peft loads with strict=False: an adapter from a deeper model would otherwise merge silently and partially.
    """
    file_keys = read_adapter(adapter_dir).lora_tensor_names()
    model_keys = {
        name.replace(".default", "") for name, _ in peft_model.named_parameters() if ".lora_A." in name or ".lora_B." in name
    }
    unused = sorted(file_keys - model_keys)
    missing = sorted(model_keys - file_keys)
    if unused or missing:
        example = (unused or missing)[0]
        what = f"{len(unused)} adapter tensors have no place in it" if unused else f"{len(missing)} base layers get no weights"
        raise UserError(f"adapter {adapter_dir} does not fit base {base_name!r}: {what} (e.g. {example})")


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


def base_license(base_path: str) -> str | None:
    """The `license` in the base model's card: a local folder's README.md, else the Hub's (cached or fetched)."""
    from huggingface_hub import ModelCard

    local = Path(base_path) / "README.md"
    try:
        card = ModelCard.load(local) if local.is_file() else ModelCard.load(base_path)
    except Exception:  # noqa: BLE001 - offline, private, or no card: the license is then simply not inherited
        return None
    return card.data.to_dict().get("license")


def model_card(
    base_name: str,
    dtype: str,
    model_id: str,
    run_config: Any | None = None,
    step: int | None = None,
    eval_report: dict | None = None,
    eval_by_step: dict | None = None,
    license: str | None = None,
    logits_max_rel_diff: float | None = None,
    trained_in_4bit: bool | None = None,
) -> str:
    """README.md with Hub metadata, the training recipe and, when the run was evaluated, its results table."""
    from huggingface_hub import ModelCardData

    hub_base = base_name if _HUB_ID.match(base_name) and not Path(base_name).exists() else None
    metadata = ModelCardData(
        base_model=hub_base,
        library_name="transformers",
        license=license,
        pipeline_tag="text-generation",
        tags=CARD_TAGS,
    ).to_yaml()
    after = f" after {step} steps of" if step is not None else ", trained with"
    lines = [
        "---",
        metadata,
        "---",
        "",
        f"# {model_id.rsplit('/', 1)[-1]}",
        "",
        f"`{base_name}`{after} one-shot RLVR ([Wang et al. 2025]({PAPER}): GRPO on a single math problem duplicated "
        f"to fill the batch), learned as a LoRA adapter and merged into the weights ({dtype}). "
        "Made with lowrank-rlvr.",
        "",
        f"The adapter was merged into the base loaded in {dtype}" + _NOT_INTO_4BIT[trained_in_4bit],
    ]
    if logits_max_rel_diff is not None:
        lines[-1] += f" Merged logits match base + adapter to {logits_max_rel_diff:.1e} (max relative difference)."
    if run_config is not None:
        lines += ["", "## Training recipe", "", *recipe_lines(run_config)]
    if eval_report is not None:
        from lowrank_rlvr.paper import reference_for_run

        paper = reference_for_run(run_config)  # the paper's figures for this model and example set, if it has them
        lines += ["", "## Evaluation", "", *eval_table(eval_report, eval_by_step, paper)]
    lines += ["", "## Use", "", "`problem` is the question text.", "", *usage_lines(model_id, run_config)]
    return "\n".join(lines) + "\n"


def recipe_lines(cfg: Any) -> list[str]:
    """The one-shot example(s) and the settings that define the run, as markdown."""
    g = cfg.grpo
    rows = [
        ("base model", cfg.model.name_or_path),
        ("base weights in training", "4-bit NF4" if cfg.model.load_in_4bit else cfg.model.dtype),
        ("LoRA", f"r={cfg.lora.r}, alpha={cfg.lora.alpha}, targets {_targets(cfg.lora.target_modules)}"),
        ("rollouts per prompt", g.num_generations),
        ("completions per optimizer step", g.per_device_train_batch_size * g.gradient_accumulation_steps),
        ("max response tokens", g.max_completion_length),
        ("temperature", g.temperature),
        ("KL coefficient (beta)", g.beta),
        ("entropy coefficient", g.entropy_coef),
        ("loss", g.loss_type),
        ("learning rate", f"{g.learning_rate:g} ({g.lr_scheduler_type})"),
        ("max steps", g.max_steps),
        ("reward", f"{cfg.reward.kind} (math-verify)"),
        ("prompt template", cfg.data.template),
    ]
    lines = ["| setting | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows), ""]
    if cfg.data.examples:
        for example in cfg.data.examples:
            lines += ["Training example:", "", *(f"> {line}" for line in example.prompt.splitlines()), ">",
                      f"> Answer: `{example.answer}`", ""]
    elif cfg.data.path:
        picked = f", examples {cfg.data.indices}" if cfg.data.indices else ""
        lines += [f"Training data: `{Path(cfg.data.path).name}`{picked}.", ""]
    else:
        picked = f", examples {cfg.data.indices}" if cfg.data.indices else ""
        lines += [f"Training data: dataset `{cfg.data.dataset}` (split {cfg.data.split}){picked}.", ""]
    return lines[:-1]


def eval_table(report: dict, eval_by_step: dict | None = None, paper: Any = None) -> list[str]:
    """Markdown table of an eval report (accuracy as a fraction 0..1, shown in %); a 'base' column when the sweep
    in eval_by_step.jsonl holds step 0; a column of the paper's figures when `paper` (a PaperRow, in %) is given."""
    from lowrank_rlvr.paper import SOURCE, comparable_average

    base_row = (eval_by_step or {}).get(0)
    base_scores = base_row["benchmarks"] if base_row else None
    paper_head, paper_rule = (f"{paper.label} | ", "---:|") if paper is not None else ("", "")
    header = "| benchmark | " + ("base | " if base_scores else "") + f"this model | {paper_head}problems | samples per problem |"
    lines = [header, "|---|" + ("---:|" if base_scores else "") + f"---:|{paper_rule}---:|---:|"]
    for name, result in report.get("benchmarks", {}).items():
        base_cell = f"{_percent(base_scores.get(name))} | " if base_scores else ""
        paper_cell = f"{_paper_percent(paper.benchmarks.get(name))} | " if paper is not None else ""
        lines.append(
            f"| {name} | {base_cell}{_percent(result.get('accuracy'))} | {paper_cell}{result.get('num_problems', '')} | "
            f"{result.get('num_samples', '')} |"
        )
    if report.get("average") is not None:
        base_cell = f"{_percent(base_row.get('average'))} | " if base_scores else ""
        paper_cell = (
            f"{_paper_percent(comparable_average(paper, list(report.get('benchmarks', {}))))} | " if paper is not None else ""
        )
        lines.append(f"| **average** | {base_cell}{_percent(report['average'])} | {paper_cell}| |")
    if paper is not None:
        lines += ["", f"{paper.label}: full fine-tuning in {SOURCE} (best six-benchmark average checkpoint)."]
    settings = {key: value for key, value in (report.get("settings") or {}).items() if key in _CARD_EVAL_SETTINGS}
    if settings:
        described = ", ".join(f"{key}={value}" for key, value in settings.items())
        lines += ["", f"Evaluated with `lowrank-rlvr eval`: {described}."]
    return lines


def usage_lines(model_id: str, cfg: Any | None) -> list[str]:
    """A vLLM snippet with the prompt template the model was trained on (it answers best in that format)."""
    from lowrank_rlvr.templates import render_prompt

    template = cfg.data.template if cfg is not None else "qwen-math-cot"
    lines = ["```python", "from vllm import LLM, SamplingParams", "", f"llm = LLM({model_id!r})"]
    if template == "chat":
        lines += [
            "tokenizer = llm.get_tokenizer()",
            "prompt = tokenizer.apply_chat_template([{'role': 'user', 'content': problem}], tokenize=False, "
            "add_generation_prompt=True)",
        ]
    else:
        prefix, suffix = render_prompt("\0", template).split("\0")
        lines += [f"prompt = {prefix!r} + problem + {suffix!r}  # the '{template}' template used in training"]
    lines += [
        "params = SamplingParams(temperature=0.0, max_tokens=3072)",
        "print(llm.generate([prompt], params)[0].outputs[0].text)",
        "```",
    ]
    return lines


def check_hub_ready(repo_id: str) -> None:
    """Fail before the merge, not after it, when an upload cannot happen: bad repo id, offline mode, no token."""
    from huggingface_hub import constants, get_token

    if not _HUB_ID.match(repo_id):
        raise UserError(f"--push-to-hub {repo_id!r}: expected a Hub repo id like 'your-name/model-name'")
    if constants.HF_HUB_OFFLINE:
        raise UserError("--push-to-hub: HF_HUB_OFFLINE=1 is set; unset it to upload")
    if get_token() is None:
        raise UserError("--push-to-hub: no Hugging Face token; run `hf auth login` or set HF_TOKEN")


def upload(folder: Path, repo_id: str, private: bool = False) -> dict[str, Any]:
    """Create (or reuse) the model repo and upload the folder. The token comes from HF_TOKEN or the login cache and
    is never written by us. A failure is a UserError that says why and that the local export is intact."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=folder, repo_id=repo_id, repo_type="model", commit_message="Upload merged model (lowrank-rlvr)"
        )
    except Exception as exc:  # noqa: BLE001 - network, auth, permissions, quota: all reported the same way
        raise UserError(
            f"upload to {repo_id} failed ({type(exc).__name__}: {first_line(exc)}); the merged model is intact in "
            f"{folder}; retry with: hf upload {repo_id} {folder}"
        ) from None
    return {"hub_url": str(repo_url)}


def save_gguf(folder: Path, quantization: str) -> dict[str, Any]:
    """GGUF files in `<folder>/gguf/` through Unsloth's saver (it builds llama.cpp; CUDA, network); uploaded with
    the merged model. Returns {"gguf": [their paths]}.

    Reloads the merged 16-bit folder (not the 4-bit training model) so the GGUF starts from the same weights.
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


def _targets(target_modules: Any) -> str:
    return target_modules if isinstance(target_modules, str) else ", ".join(target_modules)


def _percent(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * float(value):.1f}%"


def _paper_percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _size_mismatch(exc: RuntimeError) -> str:
    """peft's load error lists every mismatching tensor; keep the first, without the peft-internal prefixes."""
    for line in str(exc).splitlines():
        if "size mismatch" in line:
            return line.strip().replace("base_model.model.", "").replace(".default", "")
    return first_line(exc)
