"""The shipped configs: where they are (a clone or an installed wheel) and what each one is (`lowrank-rlvr configs`).

One copy of each file lives in the repository's top-level `configs/`. Building the wheel maps that folder into the
package as `lowrank_rlvr/configs/` (pyproject.toml: `package-dir`), where `importlib.resources` finds it after
`pip install lowrank-rlvr`; in a clone or an editable install the repository's `configs/` is used directly. Either
way a config can be named without its path: `lowrank-rlvr train qwen2.5-math-1.5b-pi1`.

What a config is, for the listing, comes from its header comment: the first sentence after the launch command(s).

Example:
    >>> describe_header("# lowrank-rlvr train configs/x.yaml\\n#\\n# One-shot RLVR on pi_1. More text.\\nmodel:")
    'One-shot RLVR on pi_1.'
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

_CHECKOUT_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def config_dir() -> Path:
    """The installed package's `configs/` (a wheel), else the repository's top-level `configs/` (clone, editable)."""
    packaged = importlib.resources.files("lowrank_rlvr").joinpath("configs")
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return _CHECKOUT_CONFIGS


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
