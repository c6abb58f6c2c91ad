"""One-shot GRPO on SmolLM2-135M-Instruct, on CPU: does one example teach more than itself?

Trains `configs/smollm2-135m-cpu.yaml` (one prompt, "What is 17+25?") through the CLI, then evaluates the base and
every checkpoint greedily on held-out sums "What is a+b?" (a, b in 10..49, the training pair excluded) through
`lowrank-rlvr eval --run`, and writes one JSON with the exact commands, the training curves (reward, accuracy per
step), and per checkpoint on the held-out sums: accuracy as math-verify scores it, the box rate, the share of
answers that are arithmetic left undone (`\\boxed{18+46}`: math-verify counts it right) and of those that merely
restate the question, and the accuracy with such answers counted wrong.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_smollm2.py                      # the shipped config
    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_smollm2.py --name no-simplified \\
        --set reward.require_simplified_answer=false                                   # the echo-prone reward

Held-out prompts carry the same instruction as the training prompt ("Put your final answer within \\boxed{}.") and
the same template (`chat`, taken from the run), so only the numbers differ.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lowrank_rlvr.rewards import is_unevaluated_arithmetic, restates_question  # noqa: E402

CLI = str(Path(sys.executable).parent / "lowrank-rlvr")
INSTRUCTION = "Put your final answer within \\boxed{}."


def held_out_sums(count: int, seed: int, exclude: tuple[int, int] = (17, 25)) -> list[dict]:
    """`count` distinct sums a+b (10 <= a, b <= 49) in the benchmark layout, without the training pair."""
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < count:
        pair = (rng.randint(10, 49), rng.randint(10, 49))
        if pair != exclude and pair not in pairs:
            pairs.append(pair)
    return [{"unique_id": f"sum-{a}+{b}", "problem": f"What is {a}+{b}? {INSTRUCTION}", "answer": str(a + b)}
            for a, b in pairs]


def run(command: list[str], log: Path) -> float:
    """Run a CLI command, its output to `log`; seconds taken. Exits with the log's tail on failure."""
    started = time.perf_counter()
    with log.open("w") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(command)}\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started


def held_out_summary(jsonl: Path, problems: dict[str, str]) -> dict:
    """Accuracy, box rate and echo shares of one checkpoint's greedy answers."""
    return records_summary([json.loads(line) for line in jsonl.read_text().splitlines()], problems)


def records_summary(records: list[dict], problems: dict[str, str]) -> dict:
    """`held_out_summary` of `eval`'s response records."""
    count = len(records)
    boxed = [r for r in records if r["extracted"] is not None]
    unevaluated = [r for r in boxed if is_unevaluated_arithmetic(r["extracted"])]
    restating = [r for r in boxed if restates_question(r["extracted"], problems[r["id"]])]
    return {
        "count": count,
        "accuracy": sum(r["reward"] for r in records) / count,
        "accuracy_simplified": sum(r["reward"] for r in records if r not in unevaluated) / count,
        "box_rate": len(boxed) / count,
        # latent ability: the last number of the response is the sum, boxed or not ("18 + 46 = 64")
        "last_number_right": sum(_last_number(r["response"]) == r["answer"] for r in records) / count,
        "unevaluated_rate": len(unevaluated) / count,
        "restates_question_rate": len(restating) / count,
        "examples": [r["response"] for r in records[:3]],
    }


def _last_number(text: str) -> str | None:
    numbers = re.findall(r"-?\d+", text)
    return numbers[-1] if numbers else None


def run_arguments(description: str) -> argparse.ArgumentParser:
    """The options of a SmolLM2 run and its held-out sums (this script's, and bench_qlora's)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="configs/smollm2-135m-cpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="passed to train (repeatable)")
    parser.add_argument("--name", default="", help="suffix of the run folder and the result file")
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out sums")
    parser.add_argument("--runs-dir", default="runs")
    return parser


def main() -> None:
    args = run_arguments(__doc__.splitlines()[0]).parse_args()

    date = datetime.date.today().isoformat()
    stem = "smollm2-135m-cpu" + (f"-{args.name}" if args.name else "")
    run_dir = (REPO / args.runs_dir / f"{stem}-{date}").resolve()
    data_dir = run_dir.parent / f"{stem}-{date}-held-out"
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = held_out_sums(args.held_out, args.seed)
    # `eval` reads the six benchmarks' files: the sums go in as a greedy one (math500's protocol: 1 sample, T=0)
    (data_dir / "math500.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    problems = {row["unique_id"]: row["problem"] for row in rows}

    train = [CLI, "train", args.config, "--output-dir", str(run_dir)]
    for override in args.overrides:
        train += ["--set", override]
    max_tokens = json.loads(json.dumps(_config_value(args.config, args.overrides, "max_completion_length")))
    evaluate = [CLI, "eval", "--run", str(run_dir), "--benchmarks", "math500", "--data-dir", str(data_dir),
                "--max-tokens", str(max_tokens), "--temperature", "0", "--backend", "hf", "--batch-size", "16"]
    print("$", shlex.join(train), flush=True)
    train_seconds = run(train, run_dir.parent / f"{stem}-{date}-train.log")
    print("$", shlex.join(evaluate), flush=True)
    eval_seconds = run(evaluate, run_dir.parent / f"{stem}-{date}-eval.log")

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = sorted(int(p.stem.removeprefix("step-")) for p in (run_dir / "eval").glob("step-*.jsonl"))
    by_step = {step: held_out_summary(run_dir / "eval" / f"step-{step}.jsonl", problems) for step in steps}
    result = {
        "what": "one-shot GRPO (LoRA) on SmolLM2-135M-Instruct, CPU; greedy held-out sums before/after",
        "date": date,
        "commands": {"train": shlex.join(train), "eval": shlex.join(evaluate)},
        "environment": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count()},
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "config": json.loads(json.dumps(_resolved_config(run_dir))),
        "curves": {key: [m[key] for m in metrics] for key in ("step", "reward_mean", "train_accuracy",
                                                                "completion_length", "entropy", "seconds")},
        "held_out": {"prompts": len(rows), "example_prompt": rows[0]["problem"], "by_step": by_step},
        "before": by_step[steps[0]],
        "after": by_step[steps[-1]],
    }
    out = REPO / "benchmarks" / "results" / f"{stem}-{date}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for step, summary in by_step.items():
        print(f"step {step:3d}: held-out accuracy {summary['accuracy']:.2f} (simplified {summary['accuracy_simplified']:.2f})"
              f"  boxed {summary['box_rate']:.2f}  restating {summary['restates_question_rate']:.2f}"
              f"  last number right {summary['last_number_right']:.2f}")
    print(f"train {train_seconds:.0f} s, eval {eval_seconds:.0f} s -> {out}")


def _resolved_config(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def _config_value(config: str, overrides: list[str], key: str):
    from lowrank_rlvr.config import load_config

    return getattr(load_config(config, overrides).grpo, key)


if __name__ == "__main__":
    main()
