"""Defaults that more than one command shares, each stated once (training, `eval`, `select --estimate`, `grade`).

The paper's sampling settings are training's defaults (`grpo.temperature`, `grpo.max_completion_length`) and the
evaluation protocol's; the report's saturation test and smoothing are `report`'s and `compare`'s; the grading defaults are training's (`reward.timeout_seconds`, `reward.workers`) and those of
`eval` and `grade`. This module imports nothing: every layer may read it.
"""

PAPER_TEMPERATURE = 0.6  # rollouts, and the sampled benchmarks (AIME24, AIME25, AMC23)
PAPER_MAX_COMPLETION_LENGTH = 3072  # response tokens, in training and evaluation
GRADER_TIMEOUT_SECONDS = 5.0  # hard time limit for grading one completion
GRADER_WORKERS = 2  # grading worker processes
SATURATION_THRESHOLD = 0.95  # training accuracy that counts as saturated (`report --threshold`)
TRAILING_WINDOW = 10  # logged steps in a trailing mean: the saturation test and every smoothed curve (`--window`)
