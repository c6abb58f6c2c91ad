"""The one way a table and a percentage are written (pure): markdown tables for the terminal, the model card, the
reports; accuracies as percent with one decimal, '-' where there is no number (`number`: what counts as none).

Example:
    >>> print(markdown_table(["benchmark", "accuracy"], [["math500", percent(0.728)]]))
    | benchmark | accuracy |
    |---|---:|
    | math500 | 72.8 |
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

MISSING = "-"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], left: int = 1) -> str:
    """A markdown table: the first `left` columns aligned left (names), the others right (numbers); an empty cell is
    one space wide (`| **average** | 45.1 | | |`)."""
    rule = "|" + "".join("---|" if column < left else "---:|" for column in range(len(header)))
    return "\n".join([_row(header), rule, *(_row(row) for row in rows)])


def _row(cells: Sequence[object]) -> str:
    return "|" + "".join(f" {cell} |" if str(cell) else " |" for cell in cells)


def percent(fraction: float | None, suffix: str = "") -> str:
    """0.728 -> '72.8' (+ `suffix`, e.g. '%'); '-' for None or NaN."""
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return MISSING
    return f"{100 * float(fraction):.1f}{suffix}"


def figure(value: float | None, suffix: str = "") -> str:
    """A number already in percent (the paper's figures): 72.8 -> '72.8'; '-' for None."""
    return MISSING if value is None else f"{value:.1f}{suffix}"


def number(value: object) -> float | None:
    """A logged value as a float; None where there is none (None, NaN, a bool): metrics.jsonl's missing values."""
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return None if math.isnan(value) else value
