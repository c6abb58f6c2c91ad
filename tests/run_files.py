"""Reading a run folder's files in tests the plain way (not through `lowrank_rlvr.runs`, which the tests check)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def metrics(run_dir: Path) -> list[dict]:
    """Every line of metrics.jsonl, as written (no sorting, no dropping of repeated steps)."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
