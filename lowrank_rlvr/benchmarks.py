"""The paper's six evaluation sets as `Problem(id, problem, answer)`: the paper's own files, a local folder, or the Hub.

By default the paper's files are read (the Qwen2.5-Math evaluation suite's, from the One-Shot RLVR repository):
MATH500, Minerva Math and OlympiadBench ship with the package (`shipped.data_dir()`, sources and licences in
`data/NOTICE.md`); AIME24, AIME25 and AMC23 do not (the problems are the MAA's, with no licence to redistribute them),
and are read from `$LOWRANK_RLVR_CACHE/benchmarks/<name>.jsonl` once the user has fetched them with the command the
error names; a fetched file is checked by its SHA-256 (`FETCHED`), so it is the paper's file or it is refused.

Local files (`data_dir`, `--data-dir DIR`) follow the same Qwen2.5-Math evaluation layout, one JSON object per line in
`DIR/<name>.jsonl`. Gold answers are taken as that suite's `parse_ground_truth` takes them:

| name          | problem text            | gold answer                                   |
|---------------|-------------------------|-----------------------------------------------|
| math500       | `problem`               | `answer`                                      |
| aime24        | `problem` (`question`)  | `answer` (leading zeros dropped: '025' -> '25')|
| aime25        | `problem` (`question`)  | `answer`                                      |
| amc23         | `problem` (`question`)  | `answer`, a float (27.0 -> '27')              |
| minerva_math  | `problem` (`question`)  | the last `\\boxed{...}` of `solution`         |
| olympiadbench | `question` (`problem`)  | `final_answer[0]` with its `$` signs removed  |

Departure from the Qwen suite: it strips only the outer `$` of OlympiadBench answers (`'$69$,$84$'` -> `'69$,$84'`);
we remove every `$` (`'69,84'`), so multi-part answers stay parsable by math-verify.

With `hub=True` (`eval --hub`) the public Hub copies below are downloaded with `datasets.load_dataset` and their rows
go through the same parser (the field names above are looked up in the same order). They are not byte for byte the
paper's files, and these ids could not be exercised in this project's offline tests.

Example:
    >>> problems = load_benchmark("minerva_math")
    >>> len(problems), problems[0].answer
    (272, '1.6')
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from lowrank_rlvr.errors import UserError
from lowrank_rlvr.rewards import answer_text
from lowrank_rlvr.files import read_jsonl
from lowrank_rlvr.shipped import cache_root, data_dir as shipped_data_dir

BENCHMARKS = ("math500", "aime24", "amc23", "minerva_math", "olympiadbench", "aime25")  # the paper's table order
# Made by the tool when asked for (`lowrank_rlvr.random_calculation`): reported beside the six, never in their mean.
RANDOM_CALCULATION = "random_calculation"
GENERATED_BENCHMARKS = (RANDOM_CALCULATION,)
# The paper's protocol: greedy decoding on these, `SAMPLED_COUNT` samples at its temperature on the small rest
# (AIME24, AIME25, AMC23; accuracy = the mean over samples, "avg@8").
GREEDY_BENCHMARKS = ("math500", "minerva_math", "olympiadbench", *GENERATED_BENCHMARKS)
SAMPLED_COUNT = 8

# The paper's files not shipped (data/NOTICE.md), name -> SHA-256: fetched by the user from the paper's repository.
FETCHED = {
    "aime24": "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac",
    "aime25": "4613b7d3b5346f007625969f4380d932d6a2618fdcc9b89e5d39c7fbddc074b8",
    "amc23": "43707e1ca784602d8479de24ee8ce36609dbebc46dd152b0b12a46611aa898a4",
}
FETCH_URL = ("https://raw.githubusercontent.com/ypwang61/One-Shot-RLVR/21ed529ec90002597c92aee957af1dd8166bb66c/"
             "Qwen2.5-Eval/evaluation/data/{name}/test.jsonl")

# name -> (Hub dataset id, config, split) used with hub=True.
HUB_DATASETS: dict[str, tuple[str, str | None, str]] = {
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": ("math-ai/aime25", None, "test"),
    "amc23": ("zwhe99/amc23", None, "test"),
    "minerva_math": ("svc-huggingface/minerva-math", None, "test"),
    "olympiadbench": ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
}

_ID_FIELDS = ("unique_id", "id", "idx")


@dataclass(frozen=True)
class Problem:
    id: str  # the dataset's own id (unique_id / id / idx) where it has one, else the row number
    problem: str  # the problem text, without template
    answer: str  # gold final answer, as math-verify will read it


def parse_benchmarks(names: str | Iterable[str] | None) -> list[str]:
    """'math500,aime24' (or a list, or None for the paper's six) -> validated names, in the given order; a generated
    benchmark (GENERATED_BENCHMARKS) only when named."""
    if names is None:
        return list(BENCHMARKS)
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in items if n not in BENCHMARKS + GENERATED_BENCHMARKS]
    if unknown or not items:
        choices = ", ".join(BENCHMARKS + GENERATED_BENCHMARKS)
        raise UserError(f"unknown benchmark {', '.join(unknown) or '(none)'}: choose from {choices}")
    return list(dict.fromkeys(items))


def paper_benchmarks(names: Iterable[str]) -> list[str]:
    """The names among `names` that count in the average: the paper's six, not the generated ones."""
    return [name for name in names if name in BENCHMARKS]


def average_accuracy(accuracies: dict[str, float]) -> float | None:
    """The mean accuracy (benchmark name -> accuracy) over the paper's benchmarks evaluated; generated ones are
    reported beside it, never in it. None when only generated benchmarks were evaluated."""
    values = [accuracies[name] for name in paper_benchmarks(accuracies)]
    return sum(values) / len(values) if values else None


def paper_file(name: str) -> Path:
    """Where the paper's file of benchmark `name` is read from: shipped, or (AIME24, AIME25, AMC23) fetched."""
    if name in FETCHED:
        return cache_root() / "benchmarks" / f"{name}.jsonl"
    return shipped_data_dir() / "benchmarks" / f"{name}.jsonl"


def benchmark_source(name: str, data_dir: str | Path | None = None, hub: bool = False) -> str:
    """What `load_benchmark` reads for these arguments: a file's path, or `hf:<dataset id>` (recorded with answers)."""
    if data_dir is not None:
        return str(Path(data_dir).expanduser() / f"{name}.jsonl")
    return f"hf:{HUB_DATASETS[name][0]}" if hub else str(paper_file(name))


def load_benchmark(name: str, data_dir: str | Path | None = None, hub: bool = False) -> list[Problem]:
    """Every problem of benchmark `name` with its gold answer: from `<data_dir>/<name>.jsonl`, from the Hub (`hub`),
    else from the paper's file (`paper_file`)."""
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}: choose from {', '.join(BENCHMARKS)}")
    if data_dir is not None and hub:
        raise UserError("give --data-dir or --hub, not both")
    if data_dir is not None:
        if Path(data_dir).expanduser().is_file():
            raise UserError(f"{data_dir}: --data-dir is a file, expected a folder of <benchmark>.jsonl files")
        path = Path(data_dir).expanduser() / f"{name}.jsonl"
        if not path.is_file():
            raise UserError(f"benchmark file not found: {path}")
        numbered, where = read_jsonl(path), str(path)
    elif hub:
        numbered, where = list(enumerate(_download(name), 1)), HUB_DATASETS[name][0]
    else:
        path = _checked_paper_file(name)
        numbered, where = read_jsonl(path), str(path)
    problems = [parse_problem(name, row, f"{where}: line {line}", n) for n, (line, row) in enumerate(numbered)]
    if not problems:
        raise UserError(f"{where}: no problems")
    if len({p.id for p in problems}) != len(problems):  # ids must be unique: results are resumed by id
        problems = [Problem(str(n), p.problem, p.answer) for n, p in enumerate(problems)]
    return problems


def parse_problem(name: str, row: dict, where: str, row_number: int) -> Problem:
    """One row of benchmark `name` -> Problem (UserError naming `where` when text or answer is missing)."""
    first = ("question", "problem") if name == "olympiadbench" else ("problem", "question")
    text = next((row[k] for k in first if isinstance(row.get(k), str) and row[k].strip()), None)
    if text is None:
        raise UserError(f"{where}: no problem text (expected 'problem' or 'question')")
    answer = _gold_answer(name, row)
    if answer is None or not answer.strip():
        raise UserError(f"{where}: no gold answer for {name}")
    row_id = next((row[k] for k in _ID_FIELDS if row.get(k) is not None), row_number)
    return Problem(str(row_id), text, answer.strip())


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces matched; None if there is none.

    Used only to read gold answers out of reference solutions (Minerva); responses are graded by `rewards`.
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_brace = text.find("{", start)
    if open_brace < 0:
        return None
    depth = 0
    for pos in range(open_brace, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : pos]
    return None


def _gold_answer(name: str, row: dict) -> str | None:
    if name == "olympiadbench":
        final = row.get("final_answer")
        if isinstance(final, str):
            final = [final]
        return str(final[0]).replace("$", "") if final is not None and len(final) else None
    if name == "minerva_math" and isinstance(row.get("solution"), str):
        return last_boxed(row["solution"])
    answer = row.get("answer")
    if answer is None:
        return None
    return _answer_text(answer)


def _answer_text(answer: Any) -> str:
    """Numbers as short strings: AMC's 27.0 -> '27', AIME's '025' -> '25'; anything else unchanged."""
    text = answer_text(answer)
    if re.fullmatch(r"-?\d+(\.0+)?", text):  # '025', '27.0', '-1.0'
        return str(int(text.split(".")[0]))
    return text


def _checked_paper_file(name: str) -> Path:
    path = paper_file(name)
    if name not in FETCHED:
        return path
    if not path.is_file():
        raise UserError(
            f"benchmark {name} is not shipped (its problems are the MAA's: {shipped_data_dir() / 'NOTICE.md'}); fetch "
            f"the paper's file once with `curl -fL --create-dirs -o {path} {FETCH_URL.format(name=name)}`, "
            "or use --hub or --data-dir"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != FETCHED[name]:
        raise UserError(f"{path}: not the paper's {name} file (SHA-256 {digest[:12]}..., expected "
                        f"{FETCHED[name][:12]}...); delete it and fetch it again, or use --data-dir for your own copy")
    return path


def _download(name: str) -> list[dict]:
    import datasets  # heavy; only for Hub copies

    dataset_id, config, split = HUB_DATASETS[name]
    try:
        rows = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as exc:  # network, a moved dataset: the user's to fix (or pass --data-dir)
        raise UserError(f"benchmark {name}: Hub dataset {dataset_id!r} could not be loaded ({exc}); "
                        "without --hub the paper's files are read") from None
    return [dict(row) for row in rows]
