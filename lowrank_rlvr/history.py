"""The paper's historical variance score (pure): per-example training accuracies per epoch (`history.json`, written by
`train`), checked, scored and ranked. `select` picks examples with it, `report` plots the examples that varied most.

The paper (Wang et al. 2025) ranks the examples of a pool by the variance of their training accuracy over
the epochs of a full-pool run; pi_1 is the first. We score by the population standard deviation (the same order).

Example:
    >>> rank_by_score(history_scores({0: [0.0, 1.0], 1: [0.5, 0.5]}))
    [0, 1]
"""

from __future__ import annotations

import math
import random
from typing import Any

from lowrank_rlvr.errors import UserError

METHODS = ("std", "random")


def parse_history(raw: Any, where: str) -> dict[int, list[float]]:
    """Check the paper's format: `{"<pool index>": [accuracy in [0, 1], ...]}`, non-empty lists."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object mapping pool index to a list of accuracies")
    if not raw:
        raise UserError(f"{where}: the history is empty")
    history: dict[int, list[float]] = {}
    for key, values in raw.items():
        try:
            index = int(key)
        except ValueError:
            raise UserError(f"{where}: key {key!r} is not a pool index (an integer)") from None
        if not isinstance(values, list):
            raise UserError(f"{where}: example {key}: expected a list of accuracies, got {type(values).__name__}")
        if not values:
            raise UserError(f"{where}: example {key}: empty accuracy list")
        for value in values:
            number_like = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number_like or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise UserError(f"{where}: example {key}: {value!r} is not an accuracy in [0, 1]")
        if index in history:
            raise UserError(f"{where}: pool index {index} appears twice")
        history[index] = [float(v) for v in values]
    return history


def history_scores(history: dict, method: str = "std", seed: int = 0) -> dict[int, float]:
    """Score per pool index: 'std' = population std of the accuracy list; 'random' = uniform [0, 1) (the paper's
    random-selection baseline), reproducible with `seed`."""
    if method == "std":
        return {int(index): _population_std(values) for index, values in history.items()}
    if method == "random":
        rng = random.Random(seed)
        return {int(index): rng.random() for index in sorted(int(i) for i in history)}
    raise UserError(f"unknown method {method!r} (choose {', '.join(METHODS)})")


def rank_by_score(scores: dict[int, float]) -> list[int]:
    """Pool indices, highest score first; equal scores by pool index, smallest first."""
    return sorted(scores, key=lambda index: (-scores[index], index))


def _population_std(values: list[float]) -> float:
    # fsum is exactly rounded, so a permutation of the same accuracies gets the same score and ties stay ties
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
