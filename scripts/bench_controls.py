"""Is the one-shot gain real? SmolLM2-135M on CPU: the one-shot config against its three controls, side by side.

Trains `configs/smollm2-135m-cpu.yaml` (the treatment) and its controls `-random` (random reward), `-entropy`
(no reward, entropy bonus alone) and `-wrong-label` (gold answer 43 for 17+25), with the same seed and the same
steps, through the CLI; evaluates the base and every checkpoint of each greedily on held-out sums (as
`scripts/bench_smollm2.py`, whose helpers this reuses) and on `random_calculation` (generated from a seed); then
runs `lowrank-rlvr compare` on the four. Writes `benchmarks/results/controls-smollm2-135m-cpu-DATE.json` (commands,
curves, per-run held-out summaries, the comparison table) and `...-DATE.md` (the table as `compare` printed it).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_controls.py            # 8 steps each (the config: 20)
    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_controls.py --steps 20 --save-steps 10 --parallel 1

Every stage resumes: training with `train --resume` (a finished run says so), evaluation from its responses files,
so the same command after an interruption goes on where it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_smollm2 import CLI, held_out_sums, records_summary, run  # noqa: E402

RUNS = {  # name -> config; the first is the treatment
    "one-shot": "configs/smollm2-135m-cpu.yaml",
    "random-reward": "configs/smollm2-135m-cpu-random.yaml",
    "entropy-only": "configs/smollm2-135m-cpu-entropy.yaml",
    "wrong-label": "configs/smollm2-135m-cpu-wrong-label.yaml",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps of every run (the config's: 20)")
    parser.add_argument("--save-steps", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2, help="runs trained at once (each takes ~4 GB)")
    parser.add_argument("--held-out", type=int, default=32, help="held-out sums, and random_calculation problems")
    parser.add_argument("--difficulty", type=int, default=1, help="random_calculation operations per problem")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out sums and of random_calculation")
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="names the folders (resume)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--only", default=",".join(RUNS), help="comma-separated subset of the runs, the treatment first")
    args = parser.parse_args()
    names = [name.strip() for name in args.only.split(",")]
    if not set(names) <= set(RUNS) or names[0] != "one-shot":
        parser.error(f"--only: names from {', '.join(RUNS)}, one-shot first")

    root = (REPO / args.runs_dir / f"controls-smollm2-135m-cpu-{args.date}").resolve()
    data_dir = root / "held-out"
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = held_out_sums(args.held_out, args.seed)
    # `eval` reads the paper's benchmark files: the sums go in as a greedy one (math500's protocol: 1 sample, T=0)
    (data_dir / "math500.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    sums = {row["unique_id"]: row["problem"] for row in rows}
    steps = ["--set", f"grpo.max_steps={args.steps}", "--set", f"grpo.save_steps={args.save_steps}"]

    commands, seconds = {}, {}

    def train(name: str) -> None:
        command = [CLI, "train", RUNS[name], "--output-dir", str(root / name), "--resume", *steps]
        commands[f"train {name}"] = shlex.join(command)
        print("$", shlex.join(command), flush=True)
        seconds[f"train {name}"] = round(run(command, root / f"{name}-train.log"), 1)

    with ThreadPoolExecutor(args.parallel) as pool:  # train all first: a failing eval then costs no training
        list(pool.map(train, names))

    def evaluate(name: str) -> None:
        command = [CLI, "eval", "--run", str(root / name), "--benchmarks", "math500,random_calculation",
                    "--data-dir", str(data_dir), "--limit", str(args.held_out), "--difficulty", str(args.difficulty),
                    "--calculation-seed", str(args.seed), "--max-tokens", "48", "--temperature", "0",
                    "--backend", "hf", "--batch-size", "16"]
        commands[f"eval {name}"] = shlex.join(command)
        print("$", shlex.join(command), flush=True)
        seconds[f"eval {name}"] = round(run(command, root / f"{name}-eval.log"), 1)

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(evaluate, names))
    compare = [CLI, "compare", *(str(root / name) for name in names), "--output-dir", str(root / "comparison")]
    commands["compare"] = shlex.join(compare)
    print("$", shlex.join(compare), flush=True)
    done = subprocess.run(compare, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"compare failed ({done.returncode}): {done.stderr[-3000:]}")
    table = (root / "comparison" / "comparison.md").read_text()

    per_run = {}
    for name in names:
        folder = root / name
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        evaluated = sorted(int(p.stem.removeprefix("step-")) for p in (folder / "eval").glob("step-*.jsonl"))
        per_run[name] = {
            "config": RUNS[name],
            "train_seconds_logged": metrics[-1]["seconds"],  # from metrics.jsonl: a resumed stage records ~0 above
            "curves": {key: [m[key] for m in metrics]
                       for key in ("step", "reward_mean", "train_accuracy", "entropy", "completion_length")},
            "eval_by_step": [json.loads(line) for line in (folder / "eval_by_step.jsonl").read_text().splitlines()],
            # the sums' own summary (box rate, echoes) from bench_smollm2, per evaluated step
            "held_out_sums": {step: _sums_summary(folder / "eval" / f"step-{step}.jsonl", sums) for step in evaluated},
        }
    result = {
        "what": "SmolLM2-135M-Instruct one-shot GRPO (LoRA, CPU) vs random-reward, entropy-only and wrong-label "
                "controls; greedy held-out sums and random_calculation, compared with `lowrank-rlvr compare`",
        "date": args.date,
        "run_names": names,
        "cut": f"{args.steps} steps per run (the shipped config trains 20), checkpoints every {args.save_steps}; "
               f"{args.held_out} held-out sums and {args.held_out} random_calculation problems at difficulty "
               f"{args.difficulty}; 48 new tokens",
        "environment": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count(),
                        "machine": "shared 2-core development box, loaded by other jobs (timings are not speeds)",
                        "versions": versions()},
        "commands": commands,
        "seconds": seconds,
        "comparison": table,
        "runs": per_run,
    }
    stem = REPO / "benchmarks" / "results" / f"controls-smollm2-135m-cpu-{args.date}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(table)
    print(table)
    print(f"-> {stem.with_suffix('.json')}")


def versions() -> dict:
    import importlib.metadata
    import platform

    packages = ("torch", "transformers", "trl", "peft", "math-verify")
    return {"python": platform.python_version(), **{name: importlib.metadata.version(name) for name in packages}}


def _sums_summary(jsonl: Path, sums: dict[str, str]) -> dict:
    """bench_smollm2's summary of the held-out sums, from a sweep step's responses (random_calculation left out)."""
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    summary = records_summary([r for r in records if r["benchmark"] == "math500"], sums)
    summary.pop("examples", None)
    return summary


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"{time.perf_counter() - started:.0f} s")
