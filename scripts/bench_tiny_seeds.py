"""How often the tiny CPU demo learns: `configs/tiny-cpu.yaml` trained over many seeds, through the real CLI.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_tiny_seeds.py --seeds 20 --jobs 2
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_tiny_seeds.py --seeds 20 --jobs 2 --build-seed 7

The tiny model is built on each machine, so its weights (and with them the whole run) differ between CPUs.
`--build-seed K` rebuilds it with `lowrank_rlvr.tiny.build_tiny_model(folder, seed=K)` into a temporary folder and
trains on that (`--set model.name_or_path=<folder>`): another warm start, as another machine's numerics would give.
Build seed 0 is the cached model the demo and the tests use.

Per training seed (`--set grpo.seed=N`, N = 1..seeds, plus 42, the config's default, if not among them): mean training
accuracy of the first 5 and last 5 steps, the first step where the 10-step mean reaches 0.9, success (last 5 >= 0.9).
Written to benchmarks/results/tiny-seeds-build<K>-<date>.json with the machine and library versions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "lowrank-rlvr")
CONFIG = REPO / "configs" / "tiny-cpu.yaml"
DEFAULT_SEED = 42
SUCCESS_ACCURACY = 0.9


def train_one(seed: int, model_dir: Path | None, runs_dir: Path, overrides: list[str]) -> dict:
    """One training run through the CLI; returns its per-seed row."""
    run_dir = runs_dir / f"seed-{seed}"
    command = [CLI, "train", str(CONFIG), "--output-dir", str(run_dir), "--set", f"grpo.seed={seed}"]
    if model_dir is not None:
        command += ["--set", f"model.name_or_path={model_dir}"]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        return {"seed": seed, "error": result.stderr[-2000:], "seconds": round(seconds, 1)}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"seed": seed, **summarize_curve(rows), "seconds": round(seconds, 1)}


def summarize_curve(rows: list[dict]) -> dict:
    accuracy = [row["train_accuracy"] for row in rows]
    first_mean, last_mean = sum(accuracy[:5]) / 5, sum(accuracy[-5:]) / 5
    windows = range(10, len(accuracy) + 1)  # the 10 steps ending at rows[end - 1]
    reached = next(
        (rows[end - 1]["step"] for end in windows if sum(accuracy[end - 10 : end]) / 10 >= SUCCESS_ACCURACY), None
    )
    return {
        "first5_accuracy": round(first_mean, 3),
        "last5_accuracy": round(last_mean, 3),
        "step_mean10_reaches_0.9": reached,
        "success": last_mean >= SUCCESS_ACCURACY,
        "final_entropy": round(rows[-1]["entropy"], 5),
        "final_completion_length": rows[-1]["completion_length"],
    }


def recipe(overrides: list[str]) -> dict:
    """The settings that decide whether the run learns, as trained (config plus overrides)."""
    from lowrank_rlvr.config import load_config

    cfg = load_config(CONFIG, overrides)
    keys = ["learning_rate", "adam_epsilon", "max_grad_norm", "lr_scheduler_type", "warmup_steps", "beta",
            "entropy_coef", "temperature", "max_steps"]
    return {**{key: getattr(cfg.grpo, key) for key in keys}, "lora": cfg.lora.model_dump(mode="json")}


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg())}


def versions() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "peft": peft.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="training seeds 1..N (42 is added if not among them)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--build-seed", type=int, default=0, help="tiny model build seed (0: the cached model)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override k=v")
    parser.add_argument("--output", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    parser.add_argument("--keep-runs", type=Path, default=None, help="keep the run folders here")
    args = parser.parse_args()

    from lowrank_rlvr.tiny import build_tiny_model
    from lowrank_rlvr.builtin import tiny_model_dir

    seeds = list(range(1, args.seeds + 1))
    if DEFAULT_SEED not in seeds:  # the config's default seed is the one a user runs: it always counts
        seeds = [DEFAULT_SEED, *seeds[:-1]] if args.seeds >= 1 else [DEFAULT_SEED]
    work = Path(tempfile.mkdtemp(prefix="bench-tiny-seeds-"))
    runs_dir = args.keep_runs or work / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        if args.build_seed == 0:
            model_dir, model_name = None, str(tiny_model_dir())
        else:
            model_dir = work / f"tiny-build-{args.build_seed}"
            build_tiny_model(model_dir, seed=args.build_seed)
            model_name = f"build_tiny_model(seed={args.build_seed})"
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda seed: train_one(seed, model_dir, runs_dir, args.overrides), seeds))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - started

    succeeded = [r for r in results if r.get("success")]
    default = next(r for r in results if r["seed"] == DEFAULT_SEED)
    run_seconds = sorted(r["seconds"] for r in results)
    report = {
        "command": " ".join(["OMP_NUM_THREADS=1", "python", "scripts/bench_tiny_seeds.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "config": str(CONFIG.relative_to(REPO)),
        "overrides": args.overrides,
        "recipe": recipe(args.overrides),
        "build_seed": args.build_seed,
        "model": model_name,
        "success_rule": f"mean training accuracy of the last 5 steps >= {SUCCESS_ACCURACY}",
        "succeeded": len(succeeded),
        "runs": len(results),
        "default_seed_succeeded": bool(default.get("success")),
        "median_run_seconds": run_seconds[len(run_seconds) // 2],
        "wall_seconds": round(wall, 1),
        "jobs": args.jobs,
        "per_seed": results,
    }
    output = args.output or REPO / "benchmarks" / "results" / (
        f"tiny-seeds-build{args.build_seed}-{datetime.date.today().isoformat()}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1) + "\n")
    failed = [r["seed"] for r in results if not r.get("success")]
    print(
        f"build seed {args.build_seed}: {len(succeeded)}/{len(results)} seeds learned (last-5 accuracy >= "
        f"{SUCCESS_ACCURACY}), default seed {DEFAULT_SEED} {'learned' if default.get('success') else 'FAILED'}, "
        f"failed seeds {failed or 'none'}, median {report['median_run_seconds']:.0f} s per run, "
        f"{wall:.0f} s wall with {args.jobs} jobs -> {output}"
    )


if __name__ == "__main__":
    main()
