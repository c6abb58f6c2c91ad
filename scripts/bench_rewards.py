"""Throughput of the math reward: serial in-process grading vs the `Grader` worker pool, hostile items mixed in.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_rewards.py --items 1024 --workers 1 2 \
        --output benchmarks/results/rewards-cpu-2core.json

Two workloads of `--items` completions each (one GRPO step at the paper's scale grades 1,024), each with `--hostile`
hostile items mixed in (a 200k-character response, 5,000 nested brackets, power towers):
- math500: MATH500 reference solutions (real worked solutions ending in \\boxed{}, shipped in data/), half with
  the boxed answer replaced by a wrong one; every (answer, gold) pair distinct, the pool's worst case;
- one_shot_pi1: rollouts of the paper's pi_1 (gold 12.8), 60% right, 10 distinct final answers: one-shot RLVR's case.
Each measurement starts cold (parse cache cleared, fresh worker processes); worker start-up is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

from lowrank_rlvr import rewards

REPO = Path(__file__).resolve().parent.parent
MATH500 = REPO / "data" / "benchmarks" / "math500.jsonl"  # the shipped copy

HOSTILE = [
    ("x" * 200_000 + " \\boxed{" + "9" * 200_000 + "}", "9"),
    ("\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "1"),
    ("\\boxed{10^{10^{10^{10}}}}", "10^{10^{10^{9}}}"),
    ("\\boxed{2^{2^{40}}}", "5"),
]


def build_workload(items: int, hostile: int) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in MATH500.read_text().splitlines() if line.strip()]
    responses, answers = [], []
    for n in range(items - hostile):
        row = rows[n % len(rows)]
        solution = row["solution"]
        if n % 2:  # a wrong final answer in the same place
            cut = solution.rfind("\\boxed")
            solution = solution[:cut] + "\\boxed{" + f"{n + 7}" + "}."
        responses.append(solution)
        answers.append(row["answer"])
    return mix_in_hostile(responses, answers, hostile)


def mix_in_hostile(responses: list[str], answers: list[str], hostile: int) -> tuple[list[str], list[str]]:
    """Spread `hostile` items of HOSTILE evenly through the workload (in place)."""
    for n in range(hostile):
        response, answer = HOSTILE[n % len(HOSTILE)]
        position = (n + 1) * len(responses) // (hostile + 1)
        responses.insert(position, response)
        answers.insert(position, answer)
    return responses, answers


def build_one_shot_workload(items: int, hostile: int) -> tuple[list[str], list[str]]:
    """One GRPO step of one-shot RLVR: rollouts of pi_1 (gold 12.8) whose final answers repeat, as sampled ones do."""
    finals = ["12.8"] * 10 + ["\\frac{64}{5}"] * 2
    finals += ["16", "3.2", "12.5", "0.8", "25.6", "\\frac{32}{5}", "6.4", "51.2"]
    reasoning = (
        "The pressure varies jointly as the area and the cube of the velocity: $P = kAV^3$. With $A = 2$, $V = 8$, "
        "$P = 4$ we get $k = \\frac{4}{2 \\cdot 512} = \\frac{1}{256}$. For $P = 32$ on $A = 4$: "
        "$32 = \\frac{4 V^3}{256}$, so $V^3 = 2048$ and $V = \\sqrt[3]{2048} \\approx 12.7$. "
    ) * 4
    responses = [f"{reasoning}Therefore the velocity is $\\boxed{{{finals[(n * 7) % len(finals)]}}}$."
                 for n in range(items - hostile)]
    answers = ["12.8"] * len(responses)
    return mix_in_hostile(responses, answers, hostile)


def bench_serial(responses: list[str], answers: list[str], timeout: float) -> dict:
    rewards._parse_boxed.cache_clear()
    rewards._parse_gold.cache_clear()
    cpu_started = time.process_time()
    started = time.perf_counter()
    scores = [rewards.math_reward(r, a, timeout_seconds=timeout) for r, a in zip(responses, answers)]
    seconds = time.perf_counter() - started
    return {"mode": "serial", "workers": 0, "seconds": round(seconds, 3),
            "items_per_second": round(len(responses) / seconds, 1), "accuracy": sum(scores) / len(scores),
            "cpu_seconds": round(time.process_time() - cpu_started, 3)}


def bench_pool(responses: list[str], answers: list[str], workers: int, timeout: float) -> dict:
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with rewards.Grader(workers=workers, timeout_seconds=timeout) as grader:
        grader.wait_ready()
        startup = time.perf_counter() - started
        started = time.perf_counter()
        results = grader.grade(responses, answers)
        seconds = time.perf_counter() - started
        # a second step on the warm pool: what every step after the first costs in training
        started = time.perf_counter()
        grader.grade(responses, answers)
        warm_seconds = time.perf_counter() - started
        replaced = grader.replaced_workers
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    parent_cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers are joined by now
    workers_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime)
    return {"mode": "pool", "workers": workers, "startup_seconds": round(startup, 3), "seconds": round(seconds, 3),
            "items_per_second": round(len(responses) / seconds, 1), "second_call_seconds": round(warm_seconds, 3),
            "accuracy": sum(r.reward for r in results) / len(results),
            "timed_out": sum(r.timed_out for r in results), "replaced_workers": replaced,
            "parent_cpu_seconds": round(parent_cpu, 3),
            "workers_cpu_seconds_all_calls_and_startup": round(workers_cpu, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1024)
    parser.add_argument("--hostile", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    rewards.math_reward("\\boxed{1}", "1")  # import math-verify before timing anything
    load_before = os.getloadavg()
    runs = []
    for workload, build in (("math500", build_workload), ("one_shot_pi1", build_one_shot_workload)):
        responses, answers = build(args.items, args.hostile)
        for run in [bench_serial(responses, answers, args.timeout)] + [
            bench_pool(responses, answers, workers, args.timeout) for workers in args.workers
        ]:
            runs.append({"workload": workload, **run})
            print(json.dumps(runs[-1]), flush=True)
    report = {
        "benchmark": "rewards",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_rewards.py "
        f"--items {args.items} --hostile {args.hostile} --workers {' '.join(map(str, args.workers))} "
        f"--timeout {args.timeout}",
        "workloads": {
            "math500": f"{args.items - args.hostile} MATH500 reference solutions (half with a wrong boxed answer) "
            f"+ {args.hostile} hostile items; every (answer, gold) pair distinct: the pool's worst case",
            "one_shot_pi1": f"{args.items - args.hostile} rollouts of pi_1 (gold 12.8, ~1.2k characters each), 60% "
            f"right, 10 distinct final answers + {args.hostile} hostile items: what one-shot RLVR grades each step",
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "runs": runs,
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
