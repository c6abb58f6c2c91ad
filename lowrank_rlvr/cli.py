"""`lowrank-rlvr`: parse the command line, call one function, print. Nothing else lives here.

Heavy libraries (torch, transformers, trl) are imported inside the commands, so `--help` and input errors are fast.
Bad input raises `UserError` anywhere below; `_fail_cleanly` turns it into `error: ...` and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer

from lowrank_rlvr.errors import UserError

app = typer.Typer(
    help="One-shot RLVR (GRPO on one math example) with low-rank adapters on a single GPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail_cleanly(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


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
    from lowrank_rlvr.config import load_config

    cfg = load_config(config, overrides, output_dir=str(output_dir) if output_dir else None)
    from lowrank_rlvr.train import run_training

    run_training(cfg, resume=resume)


@app.command(name="eval")
def evaluate() -> None:
    """Evaluate a model (+ adapter) on MATH500, AIME24/25, AMC23, Minerva Math, OlympiadBench."""
    _not_implemented("eval")


@app.command()
def merge() -> None:
    """Merge an adapter into a 16/32-bit base and export it (optionally to the Hugging Face Hub)."""
    _not_implemented("merge")


@app.command()
def select() -> None:
    """Rank pool examples by historical variance score and write the chosen one(s)."""
    _not_implemented("select")


@app.command()
def grade() -> None:
    """Grade a JSONL of responses against answers with the training reward."""
    _not_implemented("grade")


@app.command()
def plan() -> None:
    """Estimate peak GPU memory of a config before downloading anything."""
    _not_implemented("plan")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
