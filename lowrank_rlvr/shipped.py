"""What ships with the package, and where it is (a clone or an installed wheel): the configs (`lowrank-rlvr configs`),
the paper's data, and the cache folder for what is built or fetched on first use.

One copy of each file lives in the repository: the configs in the top-level `configs/`, the paper's benchmark and
training files in the top-level `data/` (sources and licences: `data/NOTICE.md`). Building the wheel maps those
folders into the package as `lowrank_rlvr/configs/` and `lowrank_rlvr/paper_data/` (pyproject.toml: `package-dir`),
where `importlib.resources` finds them after `pip install lowrank-rlvr`; in a clone or an editable install the
repository's folders are used directly. Either way a config can be named without its path (`lowrank-rlvr train
qwen2.5-math-1.5b-pi1`), and so can a shipped training file (`select --pool dsr_sub`).

What a config is, for the listing, comes from its header comment: the first sentence after the launch command(s).

Example:
    >>> describe_header("# lowrank-rlvr train configs/x.yaml\\n#\\n# One-shot RLVR on pi_1. More text.\\nmodel:")
    'One-shot RLVR on pi_1.'
"""

from __future__ import annotations

import importlib.resources
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

_CHECKOUT = Path(__file__).resolve().parent.parent


def _shipped_folder(packaged_name: str, checkout_name: str) -> Path:
    packaged = importlib.resources.files("lowrank_rlvr").joinpath(packaged_name)
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return _CHECKOUT / checkout_name


def config_dir() -> Path:
    """The installed package's `configs/` (a wheel), else the repository's top-level `configs/` (clone, editable)."""
    return _shipped_folder("configs", "configs")


def data_dir() -> Path:
    """The paper's data: `benchmarks/<name>.jsonl` and `train/<name>.parquet` (the wheel's `paper_data/`, else the
    repository's top-level `data/`)."""
    return _shipped_folder("paper_data", "data")


def shipped_train_files() -> list[str]:
    """Names of the shipped training files (the pool `dsr_sub`, the one-shot sets `pi1_r128`, ...)."""
    return sorted(path.stem for path in (data_dir() / "train").glob("*.parquet"))


def shipped_train_file(name: str | Path) -> Path | None:
    """The shipped training file called `name` (`dsr_sub` or `dsr_sub.parquet`), None if there is no such file."""
    stem = str(name).removesuffix(".parquet")
    return data_dir() / "train" / f"{stem}.parquet" if stem in shipped_train_files() else None


def cache_root() -> Path:
    """`$LOWRANK_RLVR_CACHE` (default ~/.cache/lowrank_rlvr): the built-in models, the fetched benchmark files."""
    return Path(os.environ.get("LOWRANK_RLVR_CACHE", Path.home() / ".cache" / "lowrank_rlvr"))


@dataclass(frozen=True)
class ShippedConfig:
    name: str  # what `train NAME` / `plan NAME` take
    path: Path
    model: str
    description: str


def shipped_configs(folder: Path | None = None) -> list[ShippedConfig]:
    """Every run config (not the accelerate launcher configs), by name."""
    folder = folder or config_dir()
    found = []
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text()
        raw = yaml.safe_load(text) or {}
        model = (raw.get("model") or {}).get("name_or_path", "?") if isinstance(raw, dict) else "?"
        found.append(ShippedConfig(path.stem, path, model, describe_header(text)))
    return found


def describe_header(text: str) -> str:
    """The first sentence of a config's header comment, after the launch command(s) and the blank `#` line."""
    comments = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comments.append(line.removeprefix("#").strip())
    if "" in comments:
        comments = comments[comments.index("") + 1 :]
    paragraph = []
    for line in comments:
        if not line:
            break
        paragraph.append(line)
    words = " ".join(paragraph)
    match = re.search(r"^(.+?[.!?])(\s|$)", words)
    return match.group(1) if match else words


def listing(configs: list[ShippedConfig]) -> str:
    """The text `lowrank-rlvr configs` prints: name, model, what it is."""
    name_width = max(len("name"), *(len(c.name) for c in configs))
    model_width = max(len("model"), *(len(c.model) for c in configs))
    lines = [f"{'name':<{name_width}}  {'model':<{model_width}}  what it is"]
    lines += [f"{c.name:<{name_width}}  {c.model:<{model_width}}  {c.description}" for c in configs]
    return "\n".join(lines)


def configs_command() -> str:
    """`lowrank-rlvr configs`: the shipped configs, a line each, and the folder they are in."""
    return listing(shipped_configs()) + f"\n\n(in {config_dir()})"
