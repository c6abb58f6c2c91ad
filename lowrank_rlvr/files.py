"""Files at a command's edge: every path the user hands us is checked, and every file parsed, where it enters.

Why at the edge and not only at the CLI boundary: an exception from deep inside a library (safetensors, pyarrow,
json, transformers) rarely says which file it was reading, and it often comes after the expensive part (a model
loaded, a benchmark generated, a pool sampled). Checked here, a bad input fails in one line that names the file,
before any work. `errors.input_error` at the CLI boundary is the safety net for whatever escapes these checks.

- paths of the wrong kind: `expect_file`, `expect_dir`;
- outputs that cannot be written (a path under a regular file, a read-only folder, a folder where a file goes and
  back): `writable_file`, `writable_dir`, called before the work, not discovered after it;
- files that are not what they claim (truncated, corrupted, binary, the wrong JSON shape): `read_text`, `read_json`,
  `read_parquet`, `check_safetensors`, `check_model`, `check_checkpoint` (adapters: `adapters.py`);
- JSONL with line numbers: `read_jsonl`;
- nothing half-written: `atomic_output` (a staging file beside the target, renamed over it only once complete),
  `appended_log` (a resumable log that a failed first attempt does not leave behind empty).

Example:
    >>> read_json(Path("history.json"), "history")   # '{"0": [0.5,' : cut off mid-write
    Traceback (most recent call last):
    lowrank_rlvr.errors.UserError: history.json: line 1: history is not valid JSON (Expecting value)
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TextIO

from lowrank_rlvr.errors import UserError, first_line

# -- paths of the right kind ---------------------------------------------------------------------------------------


def expect_file(path: str | Path, what: str) -> Path:
    """`path` as a Path if it is a file; UserError naming it when it is missing or a folder."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"{path}: {what} is a folder, expected a file")
    raise UserError(f"{path}: {what} not found")


def expect_dir(path: str | Path, what: str) -> Path:
    """`path` as a Path if it is a folder; UserError naming it when it is missing or a file."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{path}: {what} is a file, expected a folder")
    raise UserError(f"{path}: {what} not found")


def writable_file(path: str | Path, what: str) -> Path:
    """An output file we are about to (re)write: not a folder, and creatable where it is.

    Root ignores permission bits, so the checks that matter in practice are the kind of each path component (a
    regular file cannot hold `out.jsonl`) and a read-only file system, which `os.access` reports even to root.
    The folder that holds the file must be writable even when the file exists: `atomic_output` writes beside it.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{path}: {what} is a folder, expected a file")
    _check_creatable(path.parent if path.exists() else path, what)
    return path


def writable_dir(path: str | Path, what: str) -> Path:
    """An output folder we are about to create or write into: not a file, and creatable where it is (a folder
    that is replaced whole, like merge's, also needs its parent: check that with `writable_dir(path.parent)`)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: {what} is a file, expected a folder")
    _check_creatable(path, what)
    return path


def _check_creatable(path: Path, what: str) -> None:
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UserError(f"{path}: {what} is not writable")
        return
    ancestor = next(parent for parent in path.absolute().parents if parent.exists())
    if not ancestor.is_dir():
        raise UserError(f"{path}: {what} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{path}: {what} cannot be created: {ancestor} is not writable")


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a staging path beside `path`; once the block succeeds it replaces `path` in one rename, and if the block
    fails it is removed. A reader (or a resumed command) sees the old file or the complete new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield staging
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


@contextmanager
def appended_log(path: str | Path) -> Iterator[TextIO]:
    """`path` opened for appending: a log of finished work that a rerun resumes from (eval's responses). A file
    this call created and that is still empty when the block fails is removed: a command that fails before its
    first record leaves nothing behind."""
    path = Path(path)
    created = not path.exists()
    with path.open("a", encoding="utf-8") as handle:
        try:
            yield handle
        except BaseException:
            handle.flush()
            if created and path.stat().st_size == 0:
                path.unlink(missing_ok=True)
            raise


# -- files that are what they claim --------------------------------------------------------------------------------


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of a file (UserError when it is missing, a folder, or binary)."""
    path = expect_file(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: {what} is not UTF-8 text (a binary or corrupted file?)") from None


def read_json(path: str | Path, what: str) -> Any:
    """A parsed JSON file; UserError naming the file and line when it is not JSON (e.g. truncated)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {exc.lineno}: {what} is not valid JSON ({exc.msg})") from None


def read_json_object(path: str | Path, what: str) -> dict:
    """A JSON file that must hold one object (`{...}`)."""
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise UserError(f"{path}: {what} must be a JSON object, found {type(value).__name__}")
    return value


def read_jsonl(path: Path, torn_tail_ok: bool = False) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; UserError naming the line otherwise.

    `torn_tail_ok`: a last line without its newline that is not valid JSON is skipped (a job writing the file was
    killed mid-line, or is writing it right now). Everywhere else a broken line is the user's to fix.
    """
    lines = read_text(path, "JSONL file").split("\n")  # "\n" only: splitlines would split inside JSON strings
    rows = []
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn_tail_ok and line_number == len(lines):  # the last piece of a file that does not end in "\n"
                break
            raise UserError(f"{path}: line {line_number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {line_number}: expected a JSON object")
        rows.append((line_number, row))
    return rows


def read_parquet(path: str | Path, what: str) -> list[dict]:
    """Rows of a parquet file as dicts; UserError when it is truncated, empty or not parquet at all."""
    path = expect_file(path, what)
    import pandas as pd
    import pyarrow

    try:
        return pd.read_parquet(path).to_dict(orient="records")
    except pyarrow.ArrowException as exc:  # ArrowInvalid: no footer (truncated), 0 bytes, not parquet
        raise UserError(f"{path}: {what} is not a readable parquet file ({first_line(exc)})") from None


def check_safetensors(path: str | Path, what: str) -> Path:
    """The header of a safetensors file parses and covers the whole file (catches truncation and most corruption;
    reads only the header, so it costs milliseconds even for gigabytes of weights)."""
    path = expect_file(path, what)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            handle.keys()
    except SafetensorError as exc:
        raise UserError(f"{path}: {what} is not a readable safetensors file, truncated or corrupted ({exc})") from None
    return path


def looks_local(name_or_path: str) -> bool:
    """A path that exists, or one spelled as a path (absolute, ./, ../, ~); anything else may be a Hub id."""
    return Path(name_or_path).expanduser().exists() or name_or_path.startswith(("/", ".", "~"))


def check_model(name_or_path: str, what: str = "model", shown: str | None = None) -> None:
    """A base model that can be loaded, checked before it is: a local folder must hold a parsable config.json,
    readable safetensors weights and parsable tokenizer/generation JSON files; a Hub id must have a config.json that
    transformers can fetch (cached or online). `shown` is the name to print (e.g. 'builtin:tiny-qwen2')."""
    shown = shown or name_or_path
    if not looks_local(name_or_path):
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:  # offline and not cached, no such repo, gated, unknown model type
            raise UserError(f"{what} {shown!r} could not be loaded ({first_line(exc)})") from None
        return
    folder = expect_dir(name_or_path, f"{what} folder")
    read_json_object(folder / "config.json", f"{what} config")
    for name in ("generation_config.json", "tokenizer_config.json", "tokenizer.json", "model.safetensors.index.json"):
        if (folder / name).exists():
            read_json_object(folder / name, f"{what} {name}")
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights, f"{what} weights")


def check_checkpoint(folder: Path) -> None:
    """Every file a resume reads from a training checkpoint parses: safetensors headers, JSON files, and torch's
    archives (optimizer, scheduler, RNG state, training arguments: `torch.save` writes a zip whose directory sits at
    the end, so a truncated one has none). A damaged file names the checkpoint to delete to resume from the one
    before it."""
    import zipfile

    hint = f"delete {folder} to resume from the checkpoint before it"
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".safetensors":
                check_safetensors(path, "checkpoint weights")
            elif path.suffix == ".json":
                read_json(path, "checkpoint file")
            elif path.suffix in (".pt", ".pth", ".bin"):
                try:
                    with zipfile.ZipFile(path):
                        pass
                except (zipfile.BadZipFile, OSError):
                    raise UserError(f"{path}: checkpoint file is truncated or corrupted (not a torch archive)") from None
        except UserError as exc:
            raise UserError(f"{exc}; {hint}") from None
