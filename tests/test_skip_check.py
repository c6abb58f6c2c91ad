"""A skip the README does not name fails the run (`make test` sets LOWRANK_RLVR_NO_UNEXPECTED_SKIPS=1): shown by
planting one in a throwaway test folder next to this suite's conftest.py and running pytest on it in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
PLANTED = '''
import pytest

def test_named():
    pytest.skip("no vLLM venv at .venv-vllm/bin/lowrank-rlvr: run `make test-vllm`")

def test_planted():
    pytest.skip("shared data not found at ../shared/data")

def test_runs():
    assert True
'''


def _pytest(folder: Path, require: bool) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "LOWRANK_RLVR_NO_UNEXPECTED_SKIPS"}
    if require:
        env["LOWRANK_RLVR_NO_UNEXPECTED_SKIPS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)], cwd=folder,
                          env=env, capture_output=True, text=True)


def test_an_unexpected_skip_fails_the_run_and_a_named_one_does_not(tmp_path):
    shutil.copyfile(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_planted.py").write_text(PLANTED)
    strict = _pytest(tmp_path, require=True)
    assert strict.returncode == 1, strict.stdout
    assert "1 passed, 2 skipped" in strict.stdout
    assert "unexpected skips (not named in the README): the run fails" in strict.stdout
    assert "test_planted.py::test_planted: shared data not found at ../shared/data" in strict.stdout
    assert "test_named" not in strict.stdout.split("unexpected skips")[1]  # the named vLLM skip is allowed
    assert _pytest(tmp_path, require=False).returncode == 0  # without the variable: skips are reported, not failed

    (tmp_path / "test_planted.py").write_text(PLANTED.split("def test_planted")[0])  # the named skip alone
    named_only = _pytest(tmp_path, require=True)
    assert named_only.returncode == 0, named_only.stdout
    assert "unexpected skips" not in named_only.stdout
