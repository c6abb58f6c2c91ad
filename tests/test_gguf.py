"""`merge --gguf`: the GGUF files are the ones Unsloth's saver says it wrote, moved into `<export>/gguf/`, listed.

Unsloth cannot run here (CUDA, llama.cpp), so `unsloth` is the STAND-IN in tests/standins/gguf/: it writes and
returns what Unsloth 2026.10.9's `save_pretrained_gguf` writes and returns (see its docstring). This tests OUR
wiring around that call: the real merge, the real CLI, the stand-in's files only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "lowrank-rlvr")
STANDIN = Path(__file__).parent / "standins" / "gguf"


def test_gguf_files_are_those_unsloth_returns_moved_into_the_export_and_listed(tiny_adapter: Path, tmp_path: Path):
    out, log = tmp_path / "export", tmp_path / "unsloth-calls.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", STANDIN_LOG=str(log),
               PYTHONPATH=os.pathsep.join(filter(None, [str(STANDIN), os.environ.get("PYTHONPATH")])))
    merge = [CLI, "merge", str(tiny_adapter), "--output", str(out), "--dtype", "fp32", "--gguf", "q4_k_m"]
    proc = subprocess.run(merge, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Unsloth was asked for the merged 16-bit folder, never the 4-bit model
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [{"model_name": str(out), "load_in_4bit": False}]
    gguf = out / "gguf" / "model.Q4_K_M.gguf"
    assert gguf.read_bytes() == b"GGUF stand-in for " + str(out).encode()
    assert (out / "gguf" / "Modelfile").read_text() == "FROM ./model.Q4_K_M.gguf\n"  # beside the file it names
    assert [line for line in proc.stdout.splitlines() if line.startswith("gguf: ")] == [f"gguf: {gguf}"]
    # nothing left beside the export (Unsloth's sibling folder, its scratch merge), and the export is the real merge
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "unsloth-calls.jsonl"]
    from safetensors.torch import load_file

    assert load_file(out / "model.safetensors")  # the merged weights, not the stand-in's scratch file
