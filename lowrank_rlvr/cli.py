"""`lowrank-rlvr`: parse the command line, call one function, print. Nothing else lives here.

Heavy libraries (torch, transformers, trl) are imported inside the commands, so `--help` and input errors are fast.
Every bad input ends as one line, `error: ...`, and exit code 2:
- `UserError`, raised where an input enters (`lowrank_rlvr.files`) or is validated, is printed by `_fail_cleanly`;
- an exception that escapes from a library but says the input is at fault (an `OSError` naming a file, a parser's
  complaint: `errors.input_error`) is printed the same way; anything else is a bug and keeps its traceback;
- a usage error (a missing argument, `--workers 0`, `--temperature nan`) is one line too, not Typer's framed panel.
`--debug` (or `LOWRANK_RLVR_DEBUG=1`) shows the full traceback of every error instead, `UserError` included.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

# typer 0.29 (pinned) parses with its own vendored copy of click, `typer._click`: its exceptions and context stack,
# not the `click` package's, are the ones raised and kept while a command runs.
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer._click.globals import get_current_context

from lowrank_rlvr.benchmarks import BENCHMARKS, GENERATED_BENCHMARKS, SAMPLED_COUNT
from lowrank_rlvr.builtin import SMOLLM2_MODEL, TINY_MODEL
from lowrank_rlvr.defaults import (
    GRADER_TIMEOUT_SECONDS, GRADER_WORKERS, PAPER_MAX_COMPLETION_LENGTH, PAPER_TEMPERATURE, SATURATION_THRESHOLD,
    TRAILING_WINDOW,
)
from lowrank_rlvr.errors import UserError, input_error
from lowrank_rlvr.random_calculation import DEFAULT_COUNT, DEFAULT_DIFFICULTY, DEFAULT_SEED, MAX_DIFFICULTY
from lowrank_rlvr.templates import DEFAULT_TEMPLATE, TEMPLATES


@contextlib.contextmanager
def _usage_errors_in_one_line():
    try:
        yield
    except NoArgsIsHelpError:  # `lowrank-rlvr` alone: the help page, as Typer shows it
        raise
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "lowrank-rlvr"
        typer.echo(f"error: {exc.format_message()} (see '{where} --help')", err=True)
        raise typer.Exit(2) from None


class _OneLineUsageErrors(TyperGroup):
    """Typer prints a usage error as a framed panel of four lines; we print the one line all bad input gets.

    Options are parsed in `make_context` (the group's own) and in `invoke` (the command's, and the command's name).
    """

    def make_context(self, *args, **kwargs):
        with _usage_errors_in_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors_in_one_line():
            return super().invoke(ctx)

app = typer.Typer(
    cls=_OneLineUsageErrors,
    help="One-shot RLVR (GRPO on one math example) with low-rank adapters on a single GPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback of any error, bad input included (also LOWRANK_RLVR_DEBUG=1)."
    ),
) -> None:
    # bitsandbytes 0.50.2 warns on every CPU import that an optional `kernels` package is missing; it changes nothing.
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _debugging() -> bool:
    if os.environ.get("LOWRANK_RLVR_DEBUG", "") not in ("", "0"):
        return True
    ctx = get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


def _fail_cleanly(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            if _debugging():
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except Exception as exc:
            message = input_error(exc)
            if message is None or _debugging():
                raise
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _finite(value: Optional[float]) -> Optional[float]:
    """Option callback: 'nan' and 'inf' parse as floats but are never a setting."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _not_implemented(name: str) -> None:
    typer.echo(f"error: '{name}' is not implemented yet", err=True)
    raise typer.Exit(2)


@app.command()
@_fail_cleanly
def train(
    config: Optional[str] = typer.Argument(None, help="YAML config path or shipped name (default: qwen2.5-math-1.5b-pi1)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Run folder (overrides output_dir)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a setting: --set grpo.max_steps=20 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in the run folder."),
) -> None:
    """Train a LoRA adapter with GRPO on the one-shot example."""
    from lowrank_rlvr.train import train_command

    train_command(config, overrides, str(output_dir) if output_dir else None, resume)


@app.command(name="eval")
@_fail_cleanly
def evaluate(
    model: Optional[str] = typer.Argument(None, help=f"Base model: Hub id, local folder, {TINY_MODEL} or {SMOLLM2_MODEL} (optional with --run)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="LoRA adapter folder (RUN/adapter or RUN/checkpoint-N)."),
    run: Optional[Path] = typer.Option(None, "--run", help="Sweep: evaluate the base and every RUN/checkpoint-N; writes RUN/eval_by_step.jsonl."),
    benchmarks: Optional[str] = typer.Option(None, "--benchmarks", help=f"Comma-separated subset of {','.join(BENCHMARKS)} (default: these six), and/or {','.join(GENERATED_BENCHMARKS)} (generated from a seed, reported beside the six, not in their average)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with <benchmark>.jsonl in the Qwen2.5-Math layout (default: the paper's files, shipped; AIME24/25 and AMC23 fetched once, see data/NOTICE.md)."),
    hub: bool = typer.Option(False, "--hub", help="Download the benchmarks from the Hugging Face Hub instead (not byte for byte the paper's files)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N problems of each benchmark."),
    samples: Optional[int] = typer.Option(None, "--samples", help=f"Responses per problem (default: 1 greedy; {SAMPLED_COUNT} for AIME24/25, AMC23)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", callback=_finite, help=f"Sampling temperature for all benchmarks (default: 0 greedy; {PAPER_TEMPERATURE} for AIME24/25, AMC23)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", callback=_finite, help="Nucleus sampling (default 1.0)."),
    max_tokens: int = typer.Option(PAPER_MAX_COMPLETION_LENGTH, "--max-tokens", help="Maximum new tokens per response."),
    template: Optional[str] = typer.Option(None, "--template", help=f"{', '.join(TEMPLATES)} (default {DEFAULT_TEMPLATE}; with --run: the run's)."),
    backend: str = typer.Option("auto", "--backend", help="vllm, hf (transformers generate) or auto (vllm when installed)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Report JSON (responses go to the .jsonl beside it). Default: RUN/eval_report.json for a run's adapter, else ./eval_report.json."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="hf backend: prompts per generate call."),
    grader_workers: int = typer.Option(GRADER_WORKERS, "--grader-workers", min=1, help="Grading worker processes."),
    grader_timeout: float = typer.Option(GRADER_TIMEOUT_SECONDS, "--grader-timeout", min=0.01, help="Hard time limit in seconds per response."),
    difficulty: int = typer.Option(DEFAULT_DIFFICULTY, "--difficulty", help=f"random_calculation: arithmetic operations per problem (1-{MAX_DIFFICULTY})."),
    calculation_seed: int = typer.Option(DEFAULT_SEED, "--calculation-seed", help=f"random_calculation: the seed its {DEFAULT_COUNT} problems are generated from."),
) -> None:
    """Evaluate a model (+ adapter) on MATH500, AIME24/25, AMC23, Minerva Math, OlympiadBench (and random_calculation)."""
    from lowrank_rlvr.evaluate import EvalOptions, eval_command

    typer.echo(eval_command(EvalOptions(
        model=model, adapter=adapter, run=run, benchmarks=benchmarks, data_dir=data_dir, hub=hub, limit=limit,
        samples=samples, temperature=temperature, top_p=top_p, max_tokens=max_tokens, template=template,
        backend=backend, output=output, seed=seed, batch_size=batch_size, grader_workers=grader_workers,
        grader_timeout=grader_timeout, difficulty=difficulty, calculation_seed=calculation_seed,
    )))


@app.command()
@_fail_cleanly
def merge(
    adapter_dir: Path = typer.Argument(..., help="LoRA adapter folder: RUN/adapter or RUN/checkpoint-N."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the merged model (must be new or empty)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model (default: the adapter's, in 16-bit)."),
    dtype: str = typer.Option("bf16", "--dtype", help="Weights of the merged model: bf16, fp16 or fp32."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help="Upload to this Hub repo (user/name)."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo as private."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --output folder."),
    gguf: Optional[str] = typer.Option(None, "--gguf", help="Also write GGUF with this quantization (Unsloth), e.g. q4_k_m."),
) -> None:
    """Merge an adapter into a 16/32-bit base and export it (optionally to the Hugging Face Hub)."""
    from lowrank_rlvr.merge import MergeOptions, merge_command

    options = MergeOptions(
        adapter_dir, output, base=base, dtype=dtype, overwrite=overwrite, push_to_hub=push_to_hub, private=private,
        gguf=gguf,
    )
    metrics = merge_command(options)
    typer.echo(
        f"merged {adapter_dir} into {metrics['base']} ({metrics['dtype']}) -> {output} "
        f"({metrics['size_bytes'] / 1e6:.1f} MB, logits match base+adapter to {metrics['logits_max_rel_diff']:.1e})"
    )
    for path in metrics.get("gguf", []):
        typer.echo(f"gguf: {path}")
    if "hub_url" in metrics:
        typer.echo(f"uploaded: {metrics['hub_url']}")


@app.command()
@_fail_cleanly
def select(
    history: Optional[Path] = typer.Argument(
        None, help="History JSON ({\"<pool index>\": [accuracy per epoch, ...]}) or a run folder with history.json."
    ),
    pool: Path = typer.Option(..., "--pool", help="Pool .jsonl or .parquet (verl or simple layout), or a shipped file by name: dsr_sub (the paper's DSR-sub)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the selection: .jsonl or .parquet."),
    top: Optional[int] = typer.Option(None, "--top", help="Write the N highest-scoring examples (default 1)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Write only the example at rank K (1 = pi_1)."),
    method: str = typer.Option("std", "--method", help="'std' (historical variance score) or 'random'."),
    repeat: int = typer.Option(1, "--repeat", help="Write the selection this many times (the paper's pi1_r128: 128)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --method random and for --estimate sampling."),
    estimate: Optional[str] = typer.Option(
        None, "--estimate", help="No history: sample rollouts with this base model and rank by their spread (our approximation)."
    ),
    samples: int = typer.Option(8, "--samples", help="--estimate: rollouts per pool example."),
    limit: Optional[int] = typer.Option(None, "--limit", help="--estimate: only the first N pool examples."),
    template: str = typer.Option(DEFAULT_TEMPLATE, "--template", help=f"--estimate: {', '.join(TEMPLATES)}."),
    temperature: float = typer.Option(PAPER_TEMPERATURE, "--temperature", callback=_finite, help="--estimate: sampling temperature."),
    max_new_tokens: int = typer.Option(PAPER_MAX_COMPLETION_LENGTH, "--max-new-tokens", help="--estimate: tokens per rollout."),
) -> None:
    """Rank pool examples by historical variance score and write the chosen one(s)."""
    from lowrank_rlvr.select import SelectOptions, select_command

    options = SelectOptions(
        history, pool, output, top=top, rank=rank, method=method, repeat=repeat, seed=seed, estimate=estimate,
        samples=samples, limit=limit, template=template, temperature=temperature, max_new_tokens=max_new_tokens,
    )
    typer.echo(select_command(options)["summary"])


@app.command()
@_fail_cleanly
def grade(
    input_path: Path = typer.Argument(..., help="INPUT.jsonl: one JSON object per line with 'response' and 'answer'."),
    output: Path = typer.Option(..., "--output", "-o", help="Input lines plus 'reward' and 'extracted', in order."),
    workers: int = typer.Option(GRADER_WORKERS, "--workers", min=1, help="Grading worker processes."),
    timeout: float = typer.Option(GRADER_TIMEOUT_SECONDS, "--timeout", min=0.01, callback=_finite, help="Hard time limit in seconds per response."),
    kind: str = typer.Option("accuracy", "--kind", help="'accuracy' (vs the answer) or 'format' (any parsable box)."),
) -> None:
    """Grade a JSONL of responses against answers with the training reward."""
    from lowrank_rlvr.grade import grade_command

    typer.echo(grade_command(input_path, output, workers=workers, timeout_seconds=timeout, kind=kind))


@app.command()
@_fail_cleanly
def plan(
    config: Optional[str] = typer.Argument(None, help="YAML config path or shipped name (default: qwen2.5-math-1.5b-pi1)."),
    gpu_memory: Optional[float] = typer.Option(
        None, "--gpu-memory", callback=_finite, help="GPU memory in GiB as the driver reports it (default: the detected GPU, else 24)."
    ),
    overrides: list[str] = typer.Option([], "--set", help="Override a setting: --set grpo.max_completion_length=2048."),
    env: bool = typer.Option(False, "--env", help="Report versions, the GPU and the backend 'auto' picks, then exit."),
) -> None:
    """Estimate peak GPU memory of a config before downloading anything (exit 3 when it does not fit)."""
    if env:
        from lowrank_rlvr.doctor import env_command

        typer.echo(env_command())
        return
    from lowrank_rlvr.plan import plan_command

    text, exit_code = plan_command(config, overrides, gpu_memory)
    typer.echo(text)
    raise typer.Exit(exit_code)


@app.command()
@_fail_cleanly
def configs() -> None:
    """List the shipped configs (name, model, what it is); `train NAME` and `plan NAME` take the name."""
    from lowrank_rlvr.shipped import configs_command

    typer.echo(configs_command())


@app.command()
@_fail_cleanly
def report(
    run_dir: Path = typer.Argument(..., help="Run folder written by `lowrank-rlvr train` (metrics.jsonl, ...)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where to write (default RUN_DIR/report)."),
    threshold: float = typer.Option(SATURATION_THRESHOLD, "--threshold", callback=_finite, help="Training accuracy that counts as saturated."),
    window: int = typer.Option(TRAILING_WINDOW, "--window", help="Logged steps averaged for the saturation test and smoothing."),
) -> None:
    """Plot training vs held-out accuracy, entropy, length and reflection words; write a one-page HTML."""
    from lowrank_rlvr.report import ReportOptions, report_command

    html_path, summary = report_command(run_dir, ReportOptions(output_dir, threshold, window))
    saturated = summary["saturation_step"]
    typer.echo(f"saturation step: {saturated if saturated is not None else 'not reached'}; report: {html_path}")


@app.command()
@_fail_cleanly
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders, the treatment first, then its controls (one base model)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where to write (default FIRST_RUN/comparison)."),
) -> None:
    """Runs side by side: training curves, held-out accuracy (final and best) with differences from the first run."""
    from lowrank_rlvr.compare import compare_command

    text, page = compare_command(runs, output_dir)
    typer.echo(f"{text}\n\npage: {page}")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # `python -m lowrank_rlvr.cli ...`, e.g. under `accelerate launch -m lowrank_rlvr.cli train ...`
    main()
