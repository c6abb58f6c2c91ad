"""Shared fixtures (the tiny local model, a LoRA adapter for it, the paper's data, the CLI runner) and the skip check.

No test needs anything outside the repository: the paper's data is the copy shipped in `data/`. A test may skip only
for a reason the README names ("What is tested where"), listed in NAMED_SKIPS; with LOWRANK_RLVR_NO_UNEXPECTED_SKIPS=1
(`make test`, `make test-fast`) any other skip fails the session, listed at the end of the run
(tests/test_skip_check.py plants one to show it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

STAND_INS = Path(__file__).resolve().parent / "data" / "benchmarks"  # AIME24, AIME25, AMC23 are not shipped

# The skip reasons the README names; a skip whose reason starts otherwise is unexpected.
NAMED_SKIPS = (
    "no vLLM",  # the vLLM tests outside `make test-vllm` (they need .venv-vllm)
    "needs CUDA",  # GPU-only code, on a machine without CUDA
    "unsloth is installed",  # the [gpu] extra is installed: the test of the no-Unsloth path cannot run
    "every tracker package is installed here",  # the [tracking] extra is installed: no tracker is missing
    "set QWEN_MATH_EVAL_DIR",  # the optional cross-check against the Qwen2.5-Math suite's own grader (not shipped)
    "needs a read-only folder",  # /proc/sys is writable here (a privileged container): no read-only path to write to
)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_skips: list[tuple[str, str]] = []


def pytest_runtest_logreport(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skips.append((report.nodeid, reason.removeprefix("Skipped: ")))


def _unexpected_skips() -> list[tuple[str, str]]:
    return [(nodeid, reason) for nodeid, reason in _skips if not reason.startswith(NAMED_SKIPS)]


def pytest_sessionfinish(session, exitstatus) -> None:
    if os.environ.get("LOWRANK_RLVR_NO_UNEXPECTED_SKIPS") == "1" and _unexpected_skips():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    unexpected = _unexpected_skips()
    if unexpected and os.environ.get("LOWRANK_RLVR_NO_UNEXPECTED_SKIPS") == "1":
        terminalreporter.section("unexpected skips (not named in the README): the run fails", red=True)
        for nodeid, reason in unexpected:
            terminalreporter.write_line(f"{nodeid}: {reason}")


@pytest.fixture(scope="session")
def paper_data() -> Path:
    """The paper's data shipped with the package: benchmarks/ (MATH500, Minerva Math, OlympiadBench), train/."""
    from lowrank_rlvr.shipped import data_dir

    return data_dir()


@pytest.fixture(scope="session")
def benchmark_dir(paper_data: Path, tmp_path_factory) -> Path:
    """A --data-dir with all six benchmarks: the three shipped files, and for AIME24, AIME25 and AMC23 (not shipped:
    data/NOTICE.md) three-problem stand-ins in the paper's layout, written for these tests (tests/data/benchmarks/)."""
    folder = tmp_path_factory.mktemp("benchmarks")
    for path in [*(paper_data / "benchmarks").glob("*.jsonl"), *STAND_INS.glob("*.jsonl")]:
        shutil.copyfile(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """Folder of the tiny warm-started Qwen2 (built once per machine, cached)."""
    from lowrank_rlvr.builtin import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory) -> Path:
    """A LoRA adapter (r=8, all linear layers) for the tiny model with random, non-zero weights: it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)  # peft initialises B to zero, which would make the adapter a no-op
    out = tmp_path_factory.mktemp("tiny-adapter")
    peft_model.save_pretrained(out)
    return out


@pytest.fixture()
def cli() -> CliRunner:
    return CliRunner()
