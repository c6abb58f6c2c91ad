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

Reading order: `EvalOptions` (the flags, checked once) -> `eval_command` -> `run_eval` (one model) or `run_sweep` (a
run's checkpoints) -> `load_suite` -> `evaluate_suite` (resume, generate and grade by chunk, write the report) -> the
printed tables (`report_table`, `step_table`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from lowrank_rlvr.adapters import Adapter, read_adapter
from lowrank_rlvr.benchmarks import (
    GENERATED_BENCHMARKS, GREEDY_BENCHMARKS, SAMPLED_COUNT, Problem, average_accuracy, benchmark_source, load_benchmark, paper_benchmarks,
    parse_benchmarks,
)
from lowrank_rlvr.builtin import SMOLLM2_MODEL, TINY_MODEL, resolve_model_path
from lowrank_rlvr.defaults import GRADER_TIMEOUT_SECONDS, GRADER_WORKERS, PAPER_MAX_COMPLETION_LENGTH, PAPER_TEMPERATURE
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import appended_log, atomic_output, check_model, read_jsonl, writable_dir, writable_file
from lowrank_rlvr.generation import Completion, Sampling, check_sampler_name, choose_sampler, open_generator
from lowrank_rlvr.grading import Grader
from lowrank_rlvr.paper import SOURCE, PaperRow, comparable_average, reference, reference_cells, reference_for_run
from lowrank_rlvr.random_calculation import DEFAULT_DIFFICULTY, DEFAULT_SEED, RandomCalculation
from lowrank_rlvr.rewards import GradeResult, restates_question
from lowrank_rlvr.runs import EVAL_REPORT, RunFolder
from lowrank_rlvr.tables import markdown_table, percent
from lowrank_rlvr.templates import DEFAULT_TEMPLATE, render_prompt



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


@dataclass(frozen=True)
class EvalOptions:
    """What `lowrank-rlvr eval` was asked for (its flags), checked once when it is made.

    `model` may be None with `run` (the run's base); `template` None means the default, or with `run` the run's.
    """

    model: str | None = None
    adapter: Path | None = None
    run: Path | None = None
    benchmarks: str | None = None  # comma-separated names; None: the paper's six
    data_dir: Path | None = None
    hub: bool = False
    limit: int | None = None
    samples: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int = PAPER_MAX_COMPLETION_LENGTH
    template: str | None = None
    backend: str = "auto"
    output: Path | None = None
    seed: int = 0
    batch_size: int = 8
    grader_workers: int = GRADER_WORKERS
    grader_timeout: float = GRADER_TIMEOUT_SECONDS
    difficulty: int = DEFAULT_DIFFICULTY  # random_calculation
    calculation_seed: int = DEFAULT_SEED  # random_calculation

    def __post_init__(self):
        if self.run is not None and (self.adapter is not None or self.output is not None):
            raise UserError("--run evaluates every checkpoint of the run: drop --adapter and --output")
        if self.run is None and self.model is None:
            raise UserError(f"give MODEL (a Hub id, a folder, {TINY_MODEL} or {SMOLLM2_MODEL}), or --run RUN")
        check_sampler_name(self.backend)
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be >= 1 (got {self.limit})")
        for name in self.benchmark_names():
            self.sampling(name)
        self.random_calculation()

    def benchmark_names(self) -> list[str]:
        return parse_benchmarks(self.benchmarks)

    def sampling(self, name: str) -> Sampling:
        return protocol_sampling(name, self.samples, self.temperature, self.top_p, self.max_tokens)

    def random_calculation(self) -> RandomCalculation:
        return RandomCalculation(seed=self.calculation_seed, difficulty=self.difficulty)


@dataclass(frozen=True)
class LoadedBenchmark:
    name: str
    problems: list[Problem]  # the first --limit ones
    sampling: Sampling
    source: str  # the file read, the Hub id, or the generator's settings: recorded with every answer


def eval_command(options: EvalOptions) -> str:
    """`lowrank-rlvr eval`: one evaluation (MODEL [--adapter]) or a checkpoint sweep (--run); returns what to print."""
    if options.run is not None:
        lines = run_sweep(options)
        run = RunFolder(options.run)
        return step_table(lines, run.config_data(), options.model) + f"\n\naccuracy by step: {run.eval_by_step_path}"
    report = run_eval(options)
    settings = report["settings"]
    return (report_table(report, _paper_reference(options.model, options.adapter))
            + f"\n\nreport: {settings['report']}\nresponses: {settings['responses']}")


def run_eval(options: EvalOptions) -> dict:
    """Evaluate `options.model` (+ `options.adapter`) and write the report and the responses; returns the report.
    Benchmarks come from `data_dir`, the Hub (`hub`), else the paper's files (`lowrank_rlvr.benchmarks`)."""
    options = replace(options, template=options.template or DEFAULT_TEMPLATE)
    adapters = [read_adapter(options.adapter)] if options.adapter is not None else []  # damaged: fail before the model
    adapter_dir = adapters[0].path if adapters else None
    sampler = choose_sampler(options.backend, adapters)  # before any download
    suite = load_suite(options)
    report_path = writable_file(options.output if options.output is not None else default_output(adapter_dir),
                                "--output")
    writable_file(responses_path(report_path), "responses file")
    generator = _open_model(options, sampler, adapters)  # the model is checked before any output is written
    with Grader(workers=options.grader_workers, timeout_seconds=options.grader_timeout) as grader:
        return evaluate_suite(generator, grader, options, adapter_dir, suite, report_path)


def run_sweep(options: EvalOptions) -> list[dict]:
    """Evaluate the base (step 0), every `checkpoint-N` and the final `adapter/` (step grpo.max_steps, unless a
    checkpoint has that step) of the run `options.run`; write RUN/eval_by_step.jsonl, one line per step, rewritten
    after each step."""
    run = RunFolder.existing(options.run)
    cfg = run.read_config()
    steps = _sweep_steps(run, cfg)
    adapters = [read_adapter(path) for _, path in steps]
    model = options.model or (cfg.model.name_or_path if cfg else None) or adapters[steps.index(max(steps))].base
    if not model:
        raise UserError(f"{run.path}: cannot tell the base model (no config.yaml); give MODEL")
    template = options.template or (cfg.data.template if cfg else DEFAULT_TEMPLATE)
    options = replace(options, model=model, template=template)  # the run's, where the command line names none
    sampler = choose_sampler(options.backend, adapters)  # before any download
    suite = load_suite(options)
    writable_dir(run.eval_step_report(0).parent, "sweep reports folder")
    writable_file(run.eval_by_step_path, "sweep results file")
    generator = _open_model(options, sampler, adapters)
    lines: list[dict] = []
    with Grader(workers=options.grader_workers, timeout_seconds=options.grader_timeout) as grader:
        for step, adapter_dir in [(0, None), *sorted(steps)]:
            report = evaluate_suite(generator, grader, options, adapter_dir, suite, run.eval_step_report(step))
            lines.append({
                "step": step,
                "benchmarks": {name: result["accuracy"] for name, result in report["benchmarks"].items()},
                "average": report["average"],
            })
            run.write_eval_by_step(lines)
    return lines


def _sweep_steps(run: RunFolder, cfg: Any) -> list[tuple[int, Path]]:
    """(step, adapter folder) of every complete checkpoint, and of `adapter/` at grpo.max_steps when no checkpoint
    has that step (the steps trained after the last checkpoint)."""
    steps = [(c.step, c.path.resolve()) for c in run.checkpoints()]  # complete ones only
    final_step = cfg.grpo.max_steps if cfg else None
    if (run.adapter_dir / "adapter_config.json").is_file() and final_step and final_step not in dict(steps):
        steps.append((final_step, run.adapter_dir.resolve()))
    if not steps:
        raise UserError(f"{run.path}: no complete checkpoint-N folders (train with grpo.save_steps to write them)")
    return steps


def _open_model(options: EvalOptions, sampler: str, adapters: list[Adapter]) -> Any:
    """The generator for `options.model`, whose files are checked first (a missing or damaged model: one line)."""
    model_path = resolve_model_path(options.model)
    check_model(model_path, "model", shown=options.model)
    return open_generator(sampler, model_path, adapters, options.seed, options.batch_size)


def load_suite(options: EvalOptions) -> list[LoadedBenchmark]:
    """Every benchmark asked for, its problems (the first --limit), its sampling and where it came from."""
    suite = []
    for name in options.benchmark_names():
        if name in GENERATED_BENCHMARKS:  # made here from a seed (--calculation-seed, --difficulty), not read
            calculation = options.random_calculation()
            problems, source = calculation.problems(), calculation.source
        else:
            problems = load_benchmark(name, options.data_dir, options.hub)
            source = benchmark_source(name, options.data_dir, options.hub)
        problems = problems[: options.limit] if options.limit else problems
        suite.append(LoadedBenchmark(name, problems, options.sampling(name), source))
    return suite


# -------------------------------------------------------------------------------------------------------- evaluation


def evaluate_suite(
    generator: Any, grader: Grader, options: EvalOptions, adapter_dir: Path | None, suite: list[LoadedBenchmark],
    report_path: Path,
) -> dict:
    """Generate what the jsonl at `report_path` lacks, grade it, append it; then write and return the report.
    `options` has its model and template filled in; `adapter_dir` None is the base model alone."""
    adapter = str(adapter_dir) if adapter_dir else None
    jsonl = responses_path(report_path)
    previous = read_records(jsonl)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    with appended_log(jsonl) as sink, _progress_bar() as progress:
        for benchmark in suite:
            key = settings_key(options.model, adapter, options.template, benchmark.sampling)
            records, todo = _resume(previous, benchmark, key, jsonl)
            task = progress.add_task(benchmark.name, total=len(benchmark.problems),
                                     completed=len(benchmark.problems) - len(todo))
            for chunk in _chunks(todo, generator.chunk_size):
                new = _generate_and_grade(generator, grader, options, adapter_dir, benchmark, key, chunk)
                sink.write("".join(json.dumps(record) + "\n" for record in new))
                sink.flush()
                records += new
                progress.advance(task, len(chunk))
            results[benchmark.name] = {
                **benchmark_result(benchmark.problems, records, benchmark.sampling), "source": benchmark.source,
            }
    report = _report(options, adapter, results, generator, report_path)
    with atomic_output(report_path) as staging:
        staging.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _progress_bar() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def _resume(
    previous: list[dict], benchmark: LoadedBenchmark, key: str, jsonl: Path
) -> tuple[list[dict], list[Problem]]:
    """(the records of problems already answered in full, the problems still to generate). A problem with only some
    of its samples is generated again."""
    records = _matching_records(previous, benchmark.name, key, jsonl)
    done = _complete_ids(records, benchmark.sampling.num_samples)
    todo = [p for p in benchmark.problems if p.id not in done]
    return [r for r in records if r["id"] in done], todo


def _generate_and_grade(
    generator: Any, grader: Grader, options: EvalOptions, adapter_dir: Path | None, benchmark: LoadedBenchmark,
    key: str, chunk: list[Problem],
) -> list[dict]:
    """One record per (problem, sample) of `chunk`: the response and its reward."""
    prompts = [render_prompt(p.problem, options.template, generator.tokenizer) for p in chunk]
    completions = generator.generate(prompts, benchmark.sampling, adapter_dir, options.seed)
    flat = [(p, k, c) for p, row in zip(chunk, completions, strict=True) for k, c in enumerate(row)]
    grades = grader.grade([c.text for _, _, c in flat], [p.answer for p, _, _ in flat], kind="accuracy")
    return [
        _record(benchmark, key, problem, sample, completion, grade)
        for (problem, sample, completion), grade in zip(flat, grades, strict=True)
    ]


def _record(
    benchmark: LoadedBenchmark, key: str, problem: Problem, sample: int, completion: Completion, grade: GradeResult
) -> dict:
    return {
        "benchmark": benchmark.name, "source": benchmark.source, "id": problem.id, "sample": sample, "key": key,
        "answer": problem.answer, "extracted": grade.extracted, "reward": float(grade.reward),
        "timed_out": bool(grade.timed_out), "num_tokens": len(completion.token_ids),
        "truncated": completion.truncated, "skipped": completion.skipped, "response": completion.text,
        # `\boxed{18+46}` for "What is 18+46?": math-verify scores it right, nothing was computed
        "restates_question": bool(grade.extracted and restates_question(grade.extracted, problem.problem)),
    }


def _report(options: EvalOptions, adapter: str | None, results: dict[str, dict], generator: Any,
            report_path: Path) -> dict:
    """The report JSON: per-benchmark results, their average and the settings that made them."""
    return {
        "model": options.model,
        "adapter": adapter,
        "benchmarks": results,
        "average": average_accuracy({name: result["accuracy"] for name, result in results.items()}),
        "settings": {
            "backend": generator.backend, "template": options.template, "max_tokens": options.max_tokens,
            "seed": options.seed, "data_dir": str(options.data_dir) if options.data_dir else None,
            "limit": options.limit, "dtype": generator.dtype,
            "report": str(report_path), "responses": str(responses_path(report_path)),
        },
    }


def benchmark_result(problems: list[Problem], records: list[dict], sampling: Sampling) -> dict:
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


# ----------------------------------------------------------------------------------------------- outputs and resume


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


# ------------------------------------------------------------------------------------------------------------ tables


def report_table(report: dict, paper: PaperRow | None = None) -> str:
    """Our accuracies (%), with the paper's beside them when `paper` is given; a note under it when answers merely
    restate their question."""
    restated = sum(result.get("restated_question", 0) for result in report["benchmarks"].values())
    note = (f"\n\nnote: {restated} answer(s) restate their question (e.g. \\boxed{{18+46}} for 18+46), which math-verify "
            "counts as right; see `restates_question` in the responses file" if restated else "")
    return _accuracy_table(report, paper) + _generated_note(report) + _paper_note(report, paper) + note


def _accuracy_table(report: dict, paper: PaperRow | None) -> str:
    results = report["benchmarks"]
    ours = [percent(result["accuracy"]) for result in results.values()]
    counts = [[result["num_problems"], result["num_samples"]] for result in results.values()]
    average = ["**average**", f"**{percent(report['average'])}**"]
    if paper is None:
        rows = [[name, accuracy, *count] for name, accuracy, count in zip(results, ours, counts)]
        return markdown_table(["benchmark", "accuracy", "problems", "samples"], [*rows, [*average, "", ""]])
    *theirs, their_average = reference_cells(paper, list(results))
    rows = [[name, accuracy, cell, *count] for name, accuracy, cell, count in zip(results, ours, theirs, counts)]
    return markdown_table(["benchmark", "accuracy", paper.label, "problems", "samples"],
                          [*rows, [*average, their_average, "", ""]])


def _paper_note(report: dict, paper: PaperRow | None) -> str:
    if paper is None:
        return ""
    subset = ("" if comparable_average(paper, paper_benchmarks(report["benchmarks"])) == paper.average
              else "; its average here is its mean over the benchmarks evaluated")
    return f"\n\n{paper.label}: {SOURCE}{subset} (where our evaluation differs: lowrank_rlvr/paper.py)"


def _generated_note(report: dict) -> str:
    generated = [name for name in report["benchmarks"] if name in GENERATED_BENCHMARKS]
    return f"\n\n{', '.join(generated)}: generated problems, not in the average" if generated else ""


def step_table(lines: list[dict], run_config: dict | None, model: str | None) -> str:
    """Accuracy (%) by step, one row per `eval_by_step.jsonl` line, and the paper's base and trained rows under it
    when the run's model and example set match ('-' under a benchmark the paper has no figure for)."""
    names = list(lines[0]["benchmarks"])
    rows = [[line["step"], *map(percent, line["benchmarks"].values()), percent(line["average"])] for line in lines]
    for step in (0, None):
        paper = reference_for_run(run_config, model=model, step=step)
        if paper is not None:
            rows.append([paper.label, *reference_cells(paper, names)])
    return markdown_table(["step", *names, "average"], rows, left=0)


def _paper_reference(model: str, adapter: Path | None) -> PaperRow | None:
    """The paper's row to set beside one evaluation: the base row for a base model alone, the trained row that the
    adapter's run matches."""
    if adapter is None:
        return reference(model, "base")  # the paper's step 0
    return reference_for_run(RunFolder(Path(adapter).expanduser().resolve().parent).config_data(), model=model)
