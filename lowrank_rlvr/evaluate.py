"""`lowrank-rlvr eval`: generate answers to the six benchmarks with vLLM or transformers, grade them, write the report.

The protocol follows the paper (which uses the Qwen2.5-Math evaluation suite): the Qwen2.5-Math CoT template, at most
3072 new tokens, greedy decoding for MATH500, Minerva Math and OlympiadBench, and 8 samples at temperature 0.6 for the
small AIME24, AIME25 and AMC23 (accuracy = mean over all samples, "avg@8"). Responses are graded by
`lowrank_rlvr.rewards` (math-verify), the same reward that training uses.

Where we depart from the Qwen suite: answers are checked by math-verify (the training reward), not by the suite's own
`math_equal`; generation's own departures (prompts too long for the context, greedy decoding) are in
`lowrank_rlvr.generation`.

`random_calculation` (`lowrank_rlvr.random_calculation`, generated from a seed) is graded greedily like MATH500 and
reported beside the six; `average` is the mean over the paper's benchmarks evaluated only (None with none of them).

The printed table sets the paper's figures beside ours when the base model and the run's example set match one of
its rows (`lowrank_rlvr.paper`: the base row for a base model alone, the trained row for a run's adapter).

Outputs: `PATH.json` (the report) and `PATH.jsonl` next to it (one line per response). Reusing PATH resumes: problems
whose responses are already in the jsonl, made with the same settings, are not generated again.

The checkpoint sweep (`eval --run RUN`) loads the base once and switches adapters, and evaluates only checkpoints
that were completely written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from lowrank_rlvr.adapters import read_adapter
from lowrank_rlvr.benchmarks import (
    BENCHMARKS, GENERATED_BENCHMARKS, Problem, benchmark_source, load_benchmark, parse_benchmarks,
)
from lowrank_rlvr.templates import DEFAULT_TEMPLATE
from lowrank_rlvr.defaults import PAPER_MAX_COMPLETION_LENGTH, PAPER_TEMPERATURE
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import appended_log, atomic_output, check_model, writable_dir, writable_file
from lowrank_rlvr.generation import Sampling, choose_sampler, open_generator
from lowrank_rlvr.paper import SOURCE, comparable_average, reference, reference_for_run
from lowrank_rlvr.random_calculation import RandomCalculation
from lowrank_rlvr.rewards import restates_question
from lowrank_rlvr.defaults import GRADER_TIMEOUT_SECONDS, GRADER_WORKERS
from lowrank_rlvr.grading import Grader
from lowrank_rlvr.files import read_jsonl
from lowrank_rlvr.runs import EVAL_REPORT, RunFolder

GREEDY_BENCHMARKS = ("math500", "minerva_math", "olympiadbench", "random_calculation")
SAMPLED_COUNT = 8  # AIME24, AIME25, AMC23: 8 samples at the paper's temperature, accuracy = mean ("avg@8")


def protocol_sampling(
    name: str, samples: int | None = None, temperature: float | None = None, top_p: float | None = None,
    max_tokens: int = PAPER_MAX_COMPLETION_LENGTH,
) -> Sampling:
    """The paper's setting for benchmark `name`, with any flag the user gave taking precedence."""
    greedy = name in GREEDY_BENCHMARKS
    temp = temperature if temperature is not None else (0.0 if greedy else PAPER_TEMPERATURE)
    if not temp >= 0:  # also refuses NaN
        raise UserError(f"--temperature must be >= 0 (got {temp})")
    count = samples if samples is not None else (1 if greedy or temp == 0 else SAMPLED_COUNT)
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
    run = RunFolder.around(adapter) if adapter is not None else None
    return run.eval_report_for(adapter) if run is not None else Path(EVAL_REPORT)


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
    records = [record for _, record in read_jsonl(path, torn_tail_ok=True)]
    if _has_torn_tail(path):
        with atomic_output(path) as staging:
            staging.write_text("".join(json.dumps(record) + "\n" for record in records))
    return records


def _has_torn_tail(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return False
        handle.seek(-1, 2)
        return handle.read(1) != b"\n"


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
        "restated_question": sum(r.get("restates_question", False) for r in mine),
    }


def markdown_table(report: dict, paper: Any = None) -> str:
    """Our accuracies (%), with the paper's beside them when `paper` (a `lowrank_rlvr.paper.PaperRow`) is given; a
    note under it when answers merely restate their question."""
    restated = sum(result.get("restated_question", 0) for result in report["benchmarks"].values())
    note = (f"\n\nnote: {restated} answer(s) restate their question (e.g. \\boxed{{18+46}} for 18+46), which math-verify "
            "counts as right; see `restates_question` in the responses file" if restated else "")
    return _table(report, paper) + note


def _table(report: dict, paper: Any) -> str:
    if paper is None:
        rows = ["| benchmark | accuracy | problems | samples |", "|---|---:|---:|---:|"]
        for name, result in report["benchmarks"].items():
            rows.append(f"| {name} | {100 * result['accuracy']:.1f} | {result['num_problems']} | {result['num_samples']} |")
        rows.append(f"| **average** | **{_percent(report['average'])}** | | |")
        return "\n".join(rows) + _generated_note(report)
    rows = [f"| benchmark | accuracy | {paper.label} | problems | samples |", "|---|---:|---:|---:|---:|"]
    for name, result in report["benchmarks"].items():
        theirs = paper.benchmarks.get(name)
        rows.append(
            f"| {name} | {100 * result['accuracy']:.1f} | {'-' if theirs is None else f'{theirs:.1f}'} | "
            f"{result['num_problems']} | {result['num_samples']} |"
        )
    theirs = comparable_average(paper, paper_benchmarks(report["benchmarks"])) if report["average"] is not None else None
    rows.append(f"| **average** | **{_percent(report['average'])}** | {'-' if theirs is None else f'{theirs:.1f}'} | | |")
    subset = "" if theirs == paper.average else "; its average here is its mean over the benchmarks evaluated"
    return ("\n".join(rows) + _generated_note(report)
            + f"\n\n{paper.label}: {SOURCE}{subset} (where our evaluation differs: lowrank_rlvr/paper.py)")


def paper_benchmarks(names) -> list[str]:
    """The names among `names` that count in the average: the paper's six, not the generated ones."""
    return [name for name in names if name in BENCHMARKS]


def average_accuracy(results: dict[str, dict]) -> float | None:
    """The mean accuracy over the paper's benchmarks evaluated (generated ones are reported beside it, never in it);
    None when only generated benchmarks were evaluated."""
    values = [results[name]["accuracy"] for name in paper_benchmarks(results)]
    return sum(values) / len(values) if values else None


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _generated_note(report: dict) -> str:
    generated = [name for name in report["benchmarks"] if name in GENERATED_BENCHMARKS]
    return f"\n\n{', '.join(generated)}: generated problems, not in the average" if generated else ""


# -------------------------------------------------------------------------------------------------------- evaluation


def run_eval_command(
    model, adapter, run, benchmarks, data_dir, limit, samples, temperature, top_p, max_tokens, template, backend,
    output, seed, batch_size, grader_workers=GRADER_WORKERS, grader_timeout=GRADER_TIMEOUT_SECONDS, hub=False,
    calculation: RandomCalculation | None = None,
) -> str:
    """`lowrank-rlvr eval`: one evaluation (MODEL [--adapter]) or a checkpoint sweep (--run); returns what to print."""
    common = dict(
        benchmarks=benchmarks, data_dir=str(data_dir) if data_dir else None, hub=hub, limit=limit, samples=samples,
        temperature=temperature, top_p=top_p, max_tokens=max_tokens, backend=backend, seed=seed, batch_size=batch_size,
        grader_workers=grader_workers, grader_timeout=grader_timeout, calculation=calculation,
    )
    if run is not None:
        if adapter is not None or output is not None:
            raise UserError("--run evaluates every checkpoint of the run: drop --adapter and --output")
        lines = run_sweep(run, model, template=template, **common)
        names = list(lines[0]["benchmarks"])
        table = ["| step | " + " | ".join(names) + " | average |", "|---:" * (len(names) + 2) + "|"]
        for line in lines:
            cells = " | ".join(f"{100 * acc:.1f}" for acc in line["benchmarks"].values())
            table.append(f"| {line['step']} | {cells} | {_percent(line['average'])} |")
        table += _paper_rows(RunFolder(run).config_data(), model, names)  # '-' under a generated benchmark
        return "\n".join(table) + f"\n\naccuracy by step: {RunFolder(run).eval_by_step_path}"
    if model is None:
        raise UserError("give MODEL (a Hub id, a folder, builtin:tiny-qwen2 or builtin:smollm2-135m), or --run RUN")
    report = run_eval(
        model, str(adapter) if adapter else None, output=output, template=template or DEFAULT_TEMPLATE, **common
    )
    settings = report["settings"]
    if adapter is None:
        paper = reference(model, "base")  # the base model alone: the paper's step 0
    else:
        paper = reference_for_run(RunFolder(Path(adapter).expanduser().resolve().parent).config_data(), model=model)
    return markdown_table(report, paper) + f"\n\nreport: {settings['report']}\nresponses: {settings['responses']}"


def _paper_rows(run_config: dict | None, model: str | None, names: list[str]) -> list[str]:
    """The paper's base and trained rows under the step table, when the run's model and example set match."""
    rows = []
    for step in (0, None):
        paper = reference_for_run(run_config, model=model, step=step)
        if paper is not None:
            cells = " | ".join("-" if paper.benchmarks.get(n) is None else f"{paper.benchmarks[n]:.1f}" for n in names)
            average = comparable_average(paper, paper_benchmarks(names)) if paper_benchmarks(names) else None
            rows.append(f"| {paper.label} | {cells} | {'-' if average is None else f'{average:.1f}'} |")
    return rows


def run_eval(
    model: str,
    adapter: str | None = None,
    benchmarks: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
    samples: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int = PAPER_MAX_COMPLETION_LENGTH,
    template: str = DEFAULT_TEMPLATE,
    backend: str = "auto",
    output: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 8,
    grader_workers: int = GRADER_WORKERS,
    grader_timeout: float = GRADER_TIMEOUT_SECONDS,
    hub: bool = False,
    calculation: RandomCalculation | None = None,
) -> dict:
    """Evaluate `model` (+ `adapter`) and write the report and the responses; returns the report. Benchmarks come
    from `data_dir`, the Hub (`hub`), else the paper's files (`lowrank_rlvr.benchmarks`)."""
    from lowrank_rlvr.builtin import resolve_model_path

    names = parse_benchmarks(benchmarks)
    adapters = [read_adapter(adapter)] if adapter is not None else []  # damaged files fail here, before the model
    adapter_dir = adapters[0].path if adapters else None
    sampler = choose_sampler(backend, adapters)  # before any download
    suite = _load_suite(names, data_dir, hub, limit, samples, temperature, top_p, max_tokens, calculation)
    report_path = writable_file(Path(output) if output is not None else default_output(adapter_dir), "--output")
    writable_file(responses_path(report_path), "responses file")
    check_model(resolve_model_path(model), "model", shown=model)  # before loading it, and before any output
    generator = open_generator(sampler, resolve_model_path(model), adapters, seed, batch_size)
    with Grader(workers=grader_workers, timeout_seconds=grader_timeout) as grader:
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
    max_tokens: int = PAPER_MAX_COMPLETION_LENGTH,
    template: str | None = None,
    backend: str = "auto",
    seed: int = 0,
    batch_size: int = 8,
    grader_workers: int = GRADER_WORKERS,
    grader_timeout: float = GRADER_TIMEOUT_SECONDS,
    hub: bool = False,
    calculation: RandomCalculation | None = None,
) -> list[dict]:
    """Evaluate the base (step 0), every `checkpoint-N` and the final `adapter/` (step grpo.max_steps, unless a
    checkpoint has that step) of a run; write RUN/eval_by_step.jsonl, one line per step, rewritten after each step."""
    from lowrank_rlvr.builtin import resolve_model_path

    run = RunFolder.existing(run_dir)
    cfg = run.read_config()
    steps = [(c.step, c.path.resolve()) for c in run.checkpoints()]  # complete ones only
    final_step = cfg.grpo.max_steps if cfg else None
    if (run.adapter_dir / "adapter_config.json").is_file() and final_step and final_step not in dict(steps):
        steps.append((final_step, run.adapter_dir.resolve()))  # the last steps after the last checkpoint
    if not steps:
        raise UserError(f"{run.path}: no complete checkpoint-N folders (train with grpo.save_steps to write them)")
    adapters = [read_adapter(path) for _, path in steps]
    model = model or (cfg.model.name_or_path if cfg else None) or adapters[steps.index(max(steps))].base
    if not model:
        raise UserError(f"{run.path}: cannot tell the base model (no config.yaml); give MODEL")
    template = template or (cfg.data.template if cfg else DEFAULT_TEMPLATE)
    names = parse_benchmarks(benchmarks)
    sampler = choose_sampler(backend, adapters)  # before any download
    suite = _load_suite(names, data_dir, hub, limit, samples, temperature, top_p, max_tokens, calculation)
    writable_dir(run.eval_step_report(0).parent, "sweep reports folder")
    writable_file(run.eval_by_step_path, "sweep results file")
    check_model(resolve_model_path(model), "model", shown=model)
    generator = open_generator(sampler, resolve_model_path(model), adapters, seed, batch_size)
    lines: list[dict] = []
    with Grader(workers=grader_workers, timeout_seconds=grader_timeout) as grader:
        for step, adapter_dir in [(0, None), *sorted(steps)]:
            report_path = run.eval_step_report(step)
            report = evaluate_suite(
                generator, grader, model, adapter_dir, suite, template, report_path, seed, data_dir, limit
            )
            lines.append({
                "step": step,
                "benchmarks": {name: result["accuracy"] for name, result in report["benchmarks"].items()},
                "average": report["average"],
            })
            run.write_eval_by_step(lines)
    return lines


def evaluate_suite(
    generator: Any,
    grader: Grader,
    model: str,
    adapter_dir: Path | None,
    suite: list[tuple[str, list[Problem], Sampling, str]],
    template: str,
    report_path: Path,
    seed: int,
    data_dir: str | None,
    limit: int | None,
) -> dict:
    """Generate what the jsonl at `report_path` lacks, grade it, append it; then write and return the report."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lowrank_rlvr.templates import render_prompt

    adapter = str(adapter_dir) if adapter_dir else None
    jsonl = responses_path(report_path)
    previous = read_records(jsonl)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    console = Console(stderr=True)
    with appended_log(jsonl) as sink, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
    ) as progress:
        for name, problems, sampling, source in suite:
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
                        "benchmark": name, "source": source, "id": problem.id, "sample": sample, "key": key,
                        "answer": problem.answer, "extracted": grade.extracted, "reward": float(grade.reward),
                        "timed_out": bool(grade.timed_out), "num_tokens": len(completion.token_ids),
                        "truncated": completion.truncated, "skipped": completion.skipped, "response": completion.text,
                        # `\boxed{18+46}` for "What is 18+46?": math-verify scores it right, nothing was computed
                        "restates_question": bool(grade.extracted and restates_question(grade.extracted, problem.problem)),
                    }
                    sink.write(json.dumps(record) + "\n")
                    records.append(record)
                sink.flush()
                progress.advance(task, len(chunk))
            results[name] = {**summarize(name, problems, records, sampling), "source": source}
    report = {
        "model": model,
        "adapter": adapter,
        "benchmarks": results,
        "average": average_accuracy(results),
        "settings": {
            "backend": generator.backend, "template": template, "max_tokens": suite[0][2].max_tokens, "seed": seed,
            "data_dir": str(data_dir) if data_dir else None, "limit": limit, "dtype": generator.dtype,
            "report": str(report_path), "responses": str(jsonl),
        },
    }
    with atomic_output(report_path) as staging:
        staging.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _load_suite(
    names, data_dir, hub, limit, samples, temperature, top_p, max_tokens, calculation=None
) -> list[tuple[str, list[Problem], Sampling, str]]:
    """(name, problems, sampling, source) per benchmark; `source` (the file read, the Hub id, or the generator's
    settings) goes with every answer."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1 (got {limit})")
    suite = []
    for name in names:
        sampling = protocol_sampling(name, samples, temperature, top_p, max_tokens)
        if name in GENERATED_BENCHMARKS:  # made here from a seed (--calculation-seed, --difficulty), not read
            calculation = calculation or RandomCalculation()
            problems = calculation.problems()
            source = f"generated: seed {calculation.seed}, difficulty {calculation.difficulty}"
        else:
            problems, source = load_benchmark(name, data_dir, hub), benchmark_source(name, data_dir, hub)
        suite.append((name, problems[:limit] if limit else problems, sampling, source))
    return suite


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
