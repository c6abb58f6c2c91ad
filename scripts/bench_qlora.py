"""QLoRA on CPU: the policy that was trained (4-bit base + adapter) vs the model users export (merged, full precision).

Trains `configs/smollm2-135m-cpu.yaml` with `model.load_in_4bit=true` (NF4 through bitsandbytes, on CPU) through the
CLI, merges the adapter into the float32 base with `lowrank-rlvr merge` (merge never uses the 4-bit model), and
answers the held-out sums of `scripts/bench_smollm2.py` (same prompts, same seed, same metrics: its
`held_out_sums` and `held_out_summary`) greedily with four models, all through the same transformers generator that
`eval` uses:

- `base_fp32`: the float32 base, untrained (what bench_smollm2 calls "before");
- `base_4bit`: the 4-bit base as training loaded it, untrained (what quantization alone changes);
- `policy_4bit`: the 4-bit base + the trained adapter: the policy GRPO optimised and sampled from;
- `merged_fp32`: the merged float32 model: what `merge` exports and users run.

and counts the held-out prompts on which the policy and the export answer differently (response text, extracted
answer, reward). One JSON in benchmarks/results/ with the commands, versions, machine and figures.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_qlora.py                         # the shipped 20 steps
    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_qlora.py --set grpo.max_steps=10 --name 10-steps
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_smollm2 import CLI, held_out_sums, held_out_summary, run, run_arguments  # noqa: E402

VERSIONS = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate")


def answer(generator, adapter_dir: Path | None, rows: list[dict], template: str, max_tokens: int, grader) -> list[dict]:
    """Greedy answers of one model to the held-out rows, graded as `eval` grades them, as `eval`'s jsonl records."""
    from lowrank_rlvr.templates import render_prompt
    from lowrank_rlvr.generation import Sampling

    sampling = Sampling(num_samples=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens)
    prompts = [render_prompt(row["problem"], template, generator.tokenizer) for row in rows]
    completions = []
    for start in range(0, len(prompts), generator.chunk_size):
        completions += generator.generate(prompts[start : start + generator.chunk_size], sampling, adapter_dir, 0)
    texts = [row[0].text for row in completions]
    grades = grader.grade(texts, [row["answer"] for row in rows], kind="accuracy")
    return [
        {"id": row["unique_id"], "answer": row["answer"], "response": text, "extracted": grade.extracted,
         "reward": float(grade.reward)}
        for row, text, grade in zip(rows, texts, grades, strict=True)
    ]


def summary(records: list[dict], problems: dict[str, str]) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as sink:
        sink.write("".join(json.dumps(r) + "\n" for r in records))
    try:
        return held_out_summary(Path(sink.name), problems)
    finally:
        os.unlink(sink.name)


def differences(records: dict[str, list[dict]], one: str, other: str) -> dict:
    """On how many held-out prompts two models answered differently, and a few examples."""
    pairs = list(zip(records[one], records[other], strict=True))
    return {
        "responses_differ": sum(x["response"] != y["response"] for x, y in pairs),
        "extracted_answers_differ": sum(x["extracted"] != y["extracted"] for x, y in pairs),
        "rewards_differ": sum(x["reward"] != y["reward"] for x, y in pairs),
        "of": len(pairs),
        "examples": [{"id": x["id"], one: x["response"], other: y["response"]}
                     for x, y in pairs if x["response"] != y["response"]][:4],
    }


def main() -> None:
    parser = run_arguments(__doc__.splitlines()[0])  # bench_smollm2's: the same run and held-out sums
    parser.add_argument("--run-dir", help="an existing 4-bit run folder: skip training, merge and answer with it")
    args = parser.parse_args()

    from lowrank_rlvr.runs import RunFolder

    date = datetime.date.today().isoformat()
    stem = "qlora-smollm2" + (f"-{args.name}" if args.name else "")
    run_dir = Path(args.run_dir).resolve() if args.run_dir else (REPO / args.runs_dir / f"{stem}-{date}").resolve()
    merged_dir = run_dir.parent / f"{stem}-{date}-merged"
    overrides = ["model.load_in_4bit=true", *args.overrides]
    train = [CLI, "train", args.config, "--output-dir", str(run_dir)] + [x for o in overrides for x in ("--set", o)]
    merge = [CLI, "merge", str(run_dir / "adapter"), "--output", str(merged_dir), "--dtype", "fp32", "--overwrite"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    train_seconds = None
    if not args.run_dir:
        print("$", shlex.join(train), flush=True)
        train_seconds = run(train, run_dir.parent / f"{stem}-{date}-train.log")
    print("$", shlex.join(merge), flush=True)
    merge_seconds = run(merge, run_dir.parent / f"{stem}-{date}-merge.log")

    cfg = RunFolder(run_dir).read_config()  # the run's resolved config
    rows = held_out_sums(args.held_out, args.seed)
    problems = {row["unique_id"]: row["problem"] for row in rows}
    max_tokens = cfg.grpo.max_completion_length

    from lowrank_rlvr.generation import HFGenerator
    from lowrank_rlvr.backends import load_policy
    from lowrank_rlvr.grading import Grader
    from lowrank_rlvr.runtime import Launch
    from lowrank_rlvr.train import training_setup

    runtime = training_setup(cfg, Launch(0, 1))
    trained_on = [{"unique_id": f"train-{i}", "problem": ex.prompt, "answer": ex.answer}
                  for i, ex in enumerate(runtime.examples)]
    records, on_training_prompt = {}, {}

    def both(name, generator, adapter_dir):
        records[name] = answer(generator, adapter_dir, rows, cfg.data.template, max_tokens, grader)
        on_training_prompt[name] = answer(generator, adapter_dir, trained_on, cfg.data.template, max_tokens, grader)

    with Grader(workers=1) as grader:
        base = HFGenerator(str(runtime.model_path), batch_size=16)
        both("base_fp32", base, None)
        # the 4-bit base exactly as `train` loaded it (lowrank_rlvr.backends), in the same generator
        base.model = load_policy(
            cfg, runtime.backend, runtime.model_path, runtime.tokenizer, runtime.dtype, runtime.launch, runtime.on_cuda,
            runtime.longest_prompt_tokens,
        )[0].eval()
        both("base_4bit", base, None)
        both("policy_4bit", base, run_dir / "adapter")
        del base
        both("merged_fp32", HFGenerator(str(merged_dir), batch_size=16), None)

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    merge_said = [line for line in (run_dir.parent / f"{stem}-{date}-merge.log").read_text().splitlines()
                  if line.startswith("merged ")]
    result = {
        "what": "QLoRA (NF4 4-bit base + LoRA) GRPO on SmolLM2-135M-Instruct, CPU; greedy held-out sums of the "
                "trained policy (4-bit base + adapter) vs the merged float32 export",
        "date": date,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "note": "shared development box, loaded by other jobs: timings are not an idle machine's"},
        "versions": {name: importlib.metadata.version(name) for name in VERSIONS},
        "commands": {"train": shlex.join(train), "merge": shlex.join(merge)},
        "train_seconds": train_seconds and round(train_seconds, 1),  # the command's wall time (None: --run-dir)
        "train_seconds_recorded": metrics[-1]["seconds"],  # metrics.jsonl: trainer start to the last step
        "merge_seconds": round(merge_seconds, 1),
        "merge_said": merge_said,  # its check: merged logits vs the float32 base + adapter
        "config": cfg.model_dump(mode="json"),
        "curves": {key: [m[key] for m in metrics] for key in ("step", "reward_mean", "train_accuracy",
                                                                "completion_length", "entropy", "seconds")},
        "held_out": {"prompts": len(rows), "seed": args.seed, "example_prompt": rows[0]["problem"],
                     "max_tokens": max_tokens,
                     "by_model": {name: summary(recs, problems) for name, recs in records.items()}},
        "answers": {name: [r["extracted"] for r in recs] for name, recs in records.items()},
        "training_prompt": {name: {"response": recs[0]["response"], "reward": recs[0]["reward"]}
                            for name, recs in on_training_prompt.items()},
        "policy_4bit_vs_merged_fp32": differences(records, "policy_4bit", "merged_fp32"),
        "base_4bit_vs_base_fp32": differences(records, "base_4bit", "base_fp32"),
    }
    out = REPO / "benchmarks" / "results" / f"{stem}-{date}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for name, s in result["held_out"]["by_model"].items():
        print(f"{name:12s}: held-out accuracy {s['accuracy']:.2f} (simplified {s['accuracy_simplified']:.2f})"
              f"  boxed {s['box_rate']:.2f}  last number right {s['last_number_right']:.2f}")
    d = result["policy_4bit_vs_merged_fp32"]
    print(f"policy_4bit vs merged_fp32: {d['responses_differ']}/{d['of']} responses differ, "
          f"{d['extracted_answers_differ']} extracted answers, {d['rewards_differ']} rewards")
    print(f"train {train_seconds} s, merge {merge_seconds:.0f} s -> {out}")


if __name__ == "__main__":
    main()
