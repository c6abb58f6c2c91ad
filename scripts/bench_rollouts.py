"""Rollout speed on CPU, side by side: transformers `generate` vs colocated vLLM, the same SmolLM2 config, one run.

For each completion length (default 64 and 512 tokens) and each sampler, `configs/smollm2-135m-cpu.yaml` with 4
rollouts a step trains `--steps` steps through `lowrank-rlvr train`'s own code path (`lowrank_rlvr.cli.main`), in
the `.venv-vllm` environment for both samplers (one torch, one transformers: only the sampler differs), each in its
own process, one at a time. Measured per arm:
- seconds per step (median of steps 2..N: step 1 carries one-off warm-up), split into generation (TRL 1.14.2's
  `GRPOTrainer._generate`: the weight sync and the sampling), scoring (the rest of `_generate_and_score_completions`:
  the trainer's log-probabilities of the sampled tokens and the grading) and update (the rest of the step);
- generated tokens per second of generation (completion tokens, from metrics.jsonl);
- vLLM engine start-up (TRL's `VLLMGeneration._init_vllm`), and the process's peak RSS (`wait4`'s ru_maxrss).

    .venv/bin/python scripts/bench_rollouts.py                       # 64 and 512 tokens, 3 steps each
    .venv/bin/python scripts/bench_rollouts.py --lengths 32,128 --forced   # every completion exactly that long

The timing wrappers are the only change to the run (TRL 1.14.2 private names: `GRPOTrainer._generate`,
`GRPOTrainer._generate_and_score_completions`, trl/trainer/grpo_trainer.py; `VLLMGeneration._init_vllm`,
trl/generation/vllm_generation.py). The result names the machine and its load; this is a shared box.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """For the colocated engine's one-process torch.distributed group (29500 may be another job's)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def worker(timings_path: str, cli_args: list[str]) -> None:
    """In the .venv-vllm process: time TRL's generation, scoring and engine start, then run the CLI."""
    from trl.generation.vllm_generation import VLLMGeneration
    from trl.trainer.grpo_trainer import GRPOTrainer

    forced = os.environ.get("BENCH_FORCED_LENGTH")
    if forced:  # every completion exactly this long: TRL hands generation_kwargs to SamplingParams / GenerationConfig
        import lowrank_rlvr.train

        grpo_arguments = lowrank_rlvr.train.grpo_arguments

        def forced_arguments(cfg, *args):
            arguments = grpo_arguments(cfg, *args)
            arguments.generation_kwargs = {"min_tokens" if cfg.grpo.use_vllm else "min_new_tokens": int(forced)}
            return arguments

        lowrank_rlvr.train.grpo_arguments = forced_arguments

    timings: dict[str, list[float]] = {"generate": [], "generate_and_score": [], "engine_start": []}

    def timed(owner, name: str, key: str) -> None:
        original = getattr(owner, name)

        def wrapper(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                timings[key].append(time.perf_counter() - started)
                Path(timings_path).write_text(json.dumps(timings))

        setattr(owner, name, wrapper)

    timed(GRPOTrainer, "_generate", "generate")
    timed(GRPOTrainer, "_generate_and_score_completions", "generate_and_score")
    timed(VLLMGeneration, "_init_vllm", "engine_start")
    from lowrank_rlvr.cli import main

    sys.argv = ["lowrank-rlvr", *cli_args]
    main()


def run_arm(sampler: str, length: int, steps: int, workdir: Path, forced: bool) -> dict:
    run_dir = workdir / f"{sampler}-{length}"
    timings_path = workdir / f"{sampler}-{length}-timings.json"
    settings = [f"grpo.use_vllm={'true' if sampler == 'vllm' else 'false'}", "grpo.num_generations=4",
                "grpo.per_device_train_batch_size=4", f"grpo.max_completion_length={length}",
                f"grpo.max_steps={steps}", f"grpo.save_steps={steps}", "grpo.log_rollouts_steps=0"]
    cli_args = ["train", "configs/smollm2-135m-cpu.yaml", "--output-dir", str(run_dir)]
    for setting in settings:
        cli_args += ["--set", setting]
    command = [str(VLLM_PYTHON), __file__, "--worker", str(timings_path), "--", *cli_args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "HF_HUB_OFFLINE": "1",
           "MASTER_PORT": str(free_port()),
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           **({"BENCH_FORCED_LENGTH": str(length)} if forced else {})}
    print(f"$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    log = (workdir / f"{sampler}-{length}.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{sampler} {length}: failed\n{(workdir / f'{sampler}-{length}.log').read_text()[-3000:]}")
    timings = json.loads(timings_path.read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ends = [row["seconds"] for row in metrics]
    step_seconds = [b - a for a, b in zip(ends, ends[1:])]  # steps 2..N
    generate = timings["generate"][1:steps]
    score = [total - gen for total, gen in zip(timings["generate_and_score"][1:steps], generate)]
    tokens = [row["completion_length"] * 4 for row in metrics[1:]]
    return {
        "sampler": sampler,
        "max_completion_length": length,
        "steps": steps,
        "seconds_per_step": round(median(step_seconds), 2),
        "generation_seconds_per_step": round(median(generate), 2),
        "scoring_seconds_per_step": round(median(score), 2),
        "update_seconds_per_step": round(median(s - g - c for s, g, c in zip(step_seconds, generate, score)), 2),
        "generated_tokens_per_step": round(median(tokens), 1),
        "generated_tokens_per_second": round(sum(tokens) / sum(generate), 1),
        "engine_start_seconds": round(timings["engine_start"][0], 1) if timings["engine_start"] else None,
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
        "wall_seconds": round(wall, 1),
        "sampling_logp_difference_mean": [row.get("sampling_logp_difference_mean") for row in metrics],
        "per_step": {"seconds": step_seconds, "generate": timings["generate"], "tokens": tokens},
    }


def machine() -> dict:
    load = os.getloadavg()
    return {
        "host": "shared 2-core development VM (six jobs at once): figures are loaded-machine figures",
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_1_5_15_at_start": [round(x, 2) for x in load],
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def versions() -> dict:
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "('vllm-cpu', 'torch', 'transformers', 'trl', 'peft', 'accelerate')}))")
    return json.loads(subprocess.run([str(VLLM_PYTHON), "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return worker(sys.argv[2], sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="64,512", help="max_completion_length values, comma-separated")
    parser.add_argument("--steps", type=int, default=3, help="training steps per arm (>= 2)")
    parser.add_argument("--name", default="", help="suffix of the result file")
    parser.add_argument("--forced", action="store_true",
                        help="every completion runs to max_completion_length (min_tokens / min_new_tokens = it): "
                        "SmolLM2 answers in ~15 tokens, so without this a longer limit changes nothing")
    args = parser.parse_args()
    if not VLLM_PYTHON.is_file():
        sys.exit(f"no {VLLM_PYTHON}: make setup-vllm")
    lengths = [int(x) for x in args.lengths.split(",")]
    result = {"what": "GRPO rollouts on CPU: transformers generate vs colocated vLLM, SmolLM2-135M-Instruct + LoRA "
              "(smollm2-135m-cpu.yaml, 4 rollouts a step), the same venv and config",
              "date": datetime.date.today().isoformat(), "machine": machine(), "versions": versions(), "arms": []}
    with tempfile.TemporaryDirectory(prefix="bench-rollouts-") as workdir:
        for length in lengths:
            for sampler in ("hf", "vllm"):
                arm = run_arm(sampler, length, args.steps, Path(workdir), args.forced)
                print(json.dumps({k: v for k, v in arm.items() if k != "per_step"}), flush=True)
                result["arms"].append(arm)
    result["machine"]["load_average_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["forced_length"] = args.forced
    stem = f"rollouts-smollm2-cpu-{result['date']}" + ("-forced-length" if args.forced else "") + \
        (f"-{args.name}" if args.name else "")
    out = REPO / "benchmarks" / "results" / f"{stem}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
