"""The one error type for bad input from the person at the keyboard, and the narrow net for bad input that escapes.

Anything raised as `UserError` reaches the CLI, which prints `error: <message>` on one line and exits with code 2.
Inputs are checked where they enter (`lowrank_rlvr.files`), so most bad input is a `UserError` naming the file.
What still escapes from a library is translated by `input_error` only when the exception itself says the input is
at fault: an `OSError` that carries a file name (a folder where a file goes, a path under a regular file, a
read-only disk, a full disk), or a parser's complaint about a file (safetensors, pyarrow, JSON, YAML, UTF-8).
Everything else is a bug and keeps its traceback, and `--debug` (or `LOWRANK_RLVR_DEBUG=1`) shows the traceback
even for a `UserError`.
"""

from __future__ import annotations

import json
import sys

DEBUG_HINT = "rerun with --debug for the traceback"


class UserError(Exception):
    """Bad input (a config, a file, a flag): say what and where in one line."""


def input_error(exc: BaseException) -> str | None:
    """The one-line message for an exception that is the input's fault, else None (a bug: keep the traceback).

    Library modules are looked up in `sys.modules`, never imported: an exception cannot come from a library that
    was not loaded, and the error path stays fast.
    """
    if isinstance(exc, OSError) and exc.filename is not None:
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
        return f"{where}: {exc.strerror or type(exc).__name__}"
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None and isinstance(exc, safetensors.SafetensorError):
        return f"a safetensors file is truncated or corrupted ({first_line(exc)}; {DEBUG_HINT})"
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None and isinstance(exc, pyarrow.ArrowInvalid):
        return f"{first_line(exc)} ({DEBUG_HINT})"  # pyarrow names the file: "Could not open Parquet input source '...'"
    if isinstance(exc, json.JSONDecodeError):
        return f"a JSON file is not valid JSON: line {exc.lineno}: {exc.msg} ({DEBUG_HINT})"
    if isinstance(exc, UnicodeDecodeError):
        return f"a file read as text is not UTF-8 ({exc.reason}; {DEBUG_HINT})"
    yaml = sys.modules.get("yaml")
    if yaml is not None and isinstance(exc, yaml.YAMLError):
        return f"a YAML file is not valid YAML ({first_line(exc)}; {DEBUG_HINT})"
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
