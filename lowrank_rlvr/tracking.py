"""Experiment tracking (`grpo.report_to`): checked before any model loads, set up to work offline.

TRL's GRPOTrainer sends every logged step to the trackers named in `grpo.report_to`, through the transformers
integrations, under `train/`: TRL's own metrics (`reward`, `rewards/accuracy/mean`, which is our training accuracy,
`kl`, `entropy`, `completions/mean_length`, ...) and ours, which the reward function hands to TRL with its
`log_metric` (`reflection_per_1k_tokens`, `grader_timeouts`). One stream: the tracker shows what `metrics.jsonl`
holds. A new metric reaches the trackers the same way (`log_metric` in a reward function, or `trainer.log`); a
callback's `on_log` is too late, the trackers' callbacks have already written the step.

Where each tracker writes:
- `tensorboard`: `<output_dir>/tensorboard/` (unless TENSORBOARD_LOGGING_DIR is set); `tensorboard --logdir runs/`
  shows every run folder under runs/ side by side.
- `wandb`: online when it has an API key (WANDB_API_KEY, or `wandb login`), otherwise offline (WANDB_MODE=offline),
  into `<output_dir>/wandb/` (unless WANDB_DIR is set); upload later with `wandb sync <output_dir>/wandb/offline-run-*`.
  WANDB_PROJECT names the project (default "huggingface").
- `trackio`: a local database (under ~/.cache/huggingface/trackio); `trackio show` opens the dashboard.
The run's name is `grpo.run_name`, by default the run folder's name.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lowrank_rlvr.errors import UserError
from lowrank_rlvr.runs import RunFolder

# tracker -> the packages that provide it (any one will do) and the pip line that installs it
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "trackio": ("trackio",),
}
INSTALL_HINT = "pip install 'lowrank-rlvr[tracking]'"


def trackers(report_to: str | list[str]) -> list[str]:
    """`grpo.report_to` as a list of trackers ('none' -> [])."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    return [name for name in dict.fromkeys(names) if name != "none"]


def check_trackers(report_to: str | list[str]) -> None:
    """One line, before any model loads, when a named tracker's package is not installed."""
    for name in trackers(report_to):
        if not any(importlib.util.find_spec(package) for package in TRACKER_PACKAGES[name]):
            raise UserError(f"grpo.report_to: '{name}' needs the {TRACKER_PACKAGES[name][0]} package ({INSTALL_HINT})")


def prepare_tracking(report_to: str | list[str], run: RunFolder) -> list[str]:
    """Check the packages and point each tracker at the run folder; returns one line per tracker to print.

    Settings the user already made in the environment win (setdefault).
    """
    check_trackers(report_to)
    lines = []
    for name in trackers(report_to):
        if name == "tensorboard":
            folder = os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run.tensorboard_dir))
            lines.append(f"tracking: tensorboard event files in {folder}")
        elif name == "wandb":
            os.environ.setdefault("WANDB_DIR", str(run.path))  # wandb adds its own wandb/ folder
            if "WANDB_MODE" not in os.environ and not _wandb_has_key():
                os.environ["WANDB_MODE"] = "offline"
            mode = os.environ.get("WANDB_MODE", "online")
            lines.append(f"tracking: wandb ({mode}) in {Path(os.environ['WANDB_DIR']) / 'wandb'}")
        elif name == "trackio":
            lines.append("tracking: trackio (local; `trackio show` opens it)")
    return lines


def _wandb_has_key() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False
