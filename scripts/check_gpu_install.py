"""Does `pip install ".[gpu]"` still resolve? pip's resolver only, against the public index, for Python 3.11, 3.12 and 3.13.

    python scripts/check_gpu_install.py            # exit 0: all resolve; 1: one does not (pip's error is printed)
    python scripts/check_gpu_install.py --write    # also record the resolved set in benchmarks/results/

No GPU and no CUDA download: `pip install --dry-run --report` with `--only-binary=:all:` reads each wheel's metadata
(the index's PEP 658 file, or with `--use-feature=fast-deps` the few KB of the wheel that hold it, by HTTP range
request, where an index or proxy does not list the metadata files), never the multi-GB CUDA wheels themselves; the
check fails if pip downloads any file of MAX_DOWNLOAD_MB or more (setuptools, to read our own metadata, is ~1 MB). `--isolated` ignores this machine's pip configuration (local wheel folders, constraint
files), so what resolves is what a user gets from the index; a `PIP_CERT` in the environment is kept.
The platform is this machine's (Linux x86_64 glibc, what Colab and Kaggle run); `--python-version` picks the
interpreter the wheels are chosen for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHONS = ("3.11", "3.12", "3.13")  # 3.13: Colab's GPU runtime since 2026-08 (googlecolab/backend-info)
MAX_DOWNLOAD_MB = 20
RESULT = ROOT / "benchmarks" / "results" / "gpu-install-resolve.json"
# The pins the GPU path was read against (pyproject.toml); the check says if the resolver picked anything else.
PINNED = {
    "torch": "2.13.0", "transformers": "5.17.0", "trl": "1.14.2", "peft": "0.21.2", "accelerate": "1.15.0",
    "bitsandbytes": "0.50.2", "unsloth": "2026.10.9", "unsloth-zoo": "2026.10.9", "vllm": "0.30.0",
    "vllm-bnb-plugin": "0.0.3",
}


def resolve(python: str, workdir: Path) -> tuple[dict[str, str] | None, str, float, float]:
    """({name: version} or None when it does not resolve, pip's output, seconds, MB of whole files downloaded) for
    one Python version."""
    report = workdir / f"py{python}.json"
    command = [
        sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--report",
        str(report), "--python-version", python, "--only-binary=:all:", "--progress-bar", "off", "--use-feature=fast-deps",
    ]
    if os.environ.get("PIP_CERT"):
        command += ["--cert", os.environ["PIP_CERT"]]
    started = time.monotonic()
    out = subprocess.run([*command, f"{ROOT}[gpu]"], capture_output=True, text=True)
    seconds = time.monotonic() - started
    log = out.stdout + out.stderr
    if out.returncode != 0 or not report.is_file():
        return None, log, seconds, 0.0
    downloads = re.findall(r"Downloading (\S+) \(([\d.]+) (kB|MB|GB)\)", log)
    heavy = [f"{name} ({size} {unit})" for name, size, unit in downloads
             if float(size) * {"kB": 1e-3, "MB": 1, "GB": 1e3}[unit] >= MAX_DOWNLOAD_MB]
    if heavy:
        raise SystemExit(f"python {python}: pip downloaded more than metadata: {heavy[:3]}")
    downloaded_mb = sum(float(size) * {"kB": 1e-3, "MB": 1, "GB": 1e3}[unit] for _, size, unit in downloads)
    installed = json.loads(report.read_text())["install"]
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in installed}
    return resolved, log, seconds, downloaded_mb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"record the resolved sets in {RESULT.relative_to(ROOT)}")
    parser.add_argument("--python", action="append", choices=PYTHONS, help="only this Python version (repeatable)")
    args = parser.parse_args()
    pythons = tuple(args.python or PYTHONS)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(len(pythons)) as pool:
        results = dict(zip(pythons, pool.map(lambda python: resolve(python, Path(tmp)), pythons)))
    failed = False
    for python, (resolved, log, seconds, downloaded_mb) in results.items():
        if resolved is None:
            errors = [line for line in log.splitlines() if line.startswith("ERROR")] or log.splitlines()[-5:]
            print(f"python {python}: does not resolve ({seconds:.0f} s)\n  " + "\n  ".join(errors))
            failed = True
            continue
        off = {name: resolved.get(name) for name, version in PINNED.items() if resolved.get(name) != version}
        print(
            f"python {python}: resolves, {len(resolved)} packages ({seconds:.0f} s, {downloaded_mb:.1f} MB of whole "
            "files besides metadata)" + (f"; not the pins: {off}" if off else "")
        )
        failed |= bool(off)
    if args.write and not failed and pythons == PYTHONS:
        pip_version = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout
        record = {
            "what": 'pip install --dry-run --report ".[gpu]" (resolver only, --only-binary=:all:, --isolated)',
            "command": "python scripts/check_gpu_install.py --write",
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "platform": f"{platform.system()} {platform.machine()}, glibc {platform.libc_ver()[1]}",
            "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (times are wall-clock)",
            "pip": pip_version.split(" from ")[0],
            "seconds": {python: round(results[python][2]) for python in PYTHONS},
            "resolved": {python: dict(sorted(results[python][0].items())) for python in PYTHONS},
        }
        RESULT.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {RESULT.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
