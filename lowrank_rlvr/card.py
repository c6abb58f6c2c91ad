"""The merged model's card (README.md): Hub metadata, what the model is, the training recipe read from the run's
config, the run's evaluation with the paper's figures beside it where the paper has a row for the run, and how to
prompt it (the template it was trained on).

Example:
    >>> text = model_card(base_name="Qwen/Qwen2.5-Math-1.5B", dtype="bf16", model_id="me/qwen-pi1")
    >>> "LLM('me/qwen-pi1')" in text
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowrank_rlvr.defaults import PAPER_MAX_COMPLETION_LENGTH
from lowrank_rlvr.hub import is_hub_id
from lowrank_rlvr.tables import figure, markdown_table, percent
from lowrank_rlvr.templates import DEFAULT_TEMPLATE, render_prompt

CARD_TAGS = ["lowrank-rlvr", "rlvr", "grpo", "one-shot-rlvr", "lora", "math", "reasoning"]
PAPER = "https://arxiv.org/abs/2504.20571"
# Eval settings worth a reader's attention; the report's local paths (report, responses, data_dir) stay out of the card.
CARD_EVAL_SETTINGS = ("backend", "template", "max_tokens", "temperature", "top_p", "seed", "dtype", "limit")
# How the card ends its sentence on the merge, by whether training ran on a 4-bit base (None: no run config found).
_NOT_INTO_4BIT = {
    True: ", not into the 4-bit model used in training.",
    False: ".",
    None: " (lowrank-rlvr never merges into a 4-bit model).",
}


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

    hub_base = base_name if is_hub_id(base_name) and not Path(base_name).exists() else None
    metadata = ModelCardData(
        base_model=hub_base,
        library_name="transformers",
        license=license,
        pipeline_tag="text-generation",
        tags=CARD_TAGS,
    ).to_yaml()
    after = f" after {step} steps of" if step is not None else ", trained with"
    merged_into = f"The adapter was merged into the base loaded in {dtype}" + _NOT_INTO_4BIT[trained_in_4bit]
    if logits_max_rel_diff is not None:
        merged_into += f" Merged logits match base + adapter to {logits_max_rel_diff:.1e} (max relative difference)."
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
        merged_into,
    ]
    if run_config is not None:
        lines += ["", "## Training recipe", "", *recipe_lines(run_config)]
    if eval_report is not None:
        from lowrank_rlvr.paper import reference_for_run

        paper = reference_for_run(run_config)  # the paper's figures for this model and example set, if it has them
        lines += ["", "## Evaluation", "", *eval_table(eval_report, eval_by_step, paper)]
    lines += ["", "## Use", "", "`problem` is the question text.", "", *usage_lines(model_id, run_config)]
    return "\n".join(lines) + "\n"


def recipe_lines(cfg: Any) -> list[str]:
    """The settings that define the run as a markdown table, then the one-shot example(s) or where they came from."""
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
    return [*markdown_table(["setting", "value"], rows, left=2).splitlines(), "", *_data_lines(cfg.data)]


def _data_lines(data: Any) -> list[str]:
    """The inline example(s) quoted, or the data file or dataset named (with the picked indices)."""
    picked = f", examples {data.indices}" if data.indices else ""
    if data.examples:
        lines = []
        for example in data.examples:
            quoted = [f"> {line}" for line in example.prompt.splitlines()]
            lines += ["Training example:", "", *quoted, ">", f"> Answer: `{example.answer}`", ""]
        return lines[:-1]
    if data.path:
        return [f"Training data: `{Path(data.path).name}`{picked}."]
    return [f"Training data: dataset `{data.dataset}` (split {data.split}){picked}."]


def eval_table(report: dict, eval_by_step: dict | None = None, paper: Any = None) -> list[str]:
    """Markdown table of an eval report (accuracy as a fraction 0..1, shown in %); a 'base' column when the sweep
    in eval_by_step.jsonl holds step 0; a column of the paper's figures when `paper` (a PaperRow, in %) is given."""
    from lowrank_rlvr.benchmarks import paper_benchmarks
    from lowrank_rlvr.paper import SOURCE, comparable_average

    base_row = (eval_by_step or {}).get(0)
    base_scores = base_row["benchmarks"] if base_row else None
    benchmarks = report.get("benchmarks", {})

    def accuracies(base: Any, ours: Any, theirs: Any) -> list[str]:  # a row's cells: base, this model, the paper
        return [
            *([percent(base, "%")] if base_scores else []),
            percent(ours, "%"),
            *([figure(theirs, "%")] if paper is not None else []),
        ]

    header = ["benchmark", *(["base"] if base_scores else []), "this model", *([paper.label] if paper is not None else [])]
    rows = []
    for name, result in benchmarks.items():
        base = base_scores.get(name) if base_scores else None
        theirs = paper.benchmarks.get(name) if paper is not None else None
        cells = accuracies(base, result.get("accuracy"), theirs)
        rows.append([name, *cells, result.get("num_problems", ""), result.get("num_samples", "")])
    if report.get("average") is not None:
        base = base_row.get("average") if base_scores else None
        theirs = comparable_average(paper, paper_benchmarks(benchmarks)) if paper is not None else None
        rows.append(["**average**", *accuracies(base, report["average"], theirs), "", ""])
    lines = markdown_table([*header, "problems", "samples per problem"], rows).splitlines()
    if paper is not None:
        lines += ["", f"{paper.label}: full fine-tuning in {SOURCE} (best six-benchmark average checkpoint)."]
    settings = {key: value for key, value in (report.get("settings") or {}).items() if key in CARD_EVAL_SETTINGS}
    if settings:
        described = ", ".join(f"{key}={value}" for key, value in settings.items())
        lines += ["", f"Evaluated with `lowrank-rlvr eval`: {described}."]
    return lines


def usage_lines(model_id: str, cfg: Any | None) -> list[str]:
    """A vLLM snippet with the prompt template the model was trained on (it answers best in that format)."""
    template = cfg.data.template if cfg is not None else DEFAULT_TEMPLATE
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
        f"params = SamplingParams(temperature=0.0, max_tokens={PAPER_MAX_COMPLETION_LENGTH})",
        "print(llm.generate([prompt], params)[0].outputs[0].text)",
        "```",
    ]
    return lines


def base_license(base_path: str) -> str | None:
    """The `license` in the base model's card: a local folder's README.md, else the Hub's (cached or fetched)."""
    from huggingface_hub import ModelCard

    local = Path(base_path) / "README.md"
    try:
        card = ModelCard.load(local) if local.is_file() else ModelCard.load(base_path)
    except Exception:  # noqa: BLE001 - offline, private, or no card: the license is then simply not inherited
        return None
    return card.data.to_dict().get("license")


def _targets(target_modules: Any) -> str:
    return target_modules if isinstance(target_modules, str) else ", ".join(target_modules)
