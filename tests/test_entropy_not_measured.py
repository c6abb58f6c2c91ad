"""A run whose trainer logs no entropy says so: one line, `entropy: null` in metrics.jsonl, a report that states it.

On the unsloth backend that is every run: TRL 1.14.2 logs `entropy` only from its own loss (grpo_trainer.py:3341, in
`_compute_loss`), and Unsloth 2026.10.9 replaces `compute_loss` with one that logs completion_length, kl,
sampling/* and clip_ratio/* but no entropy (unsloth/models/rl_replacements.py:4760-5184).

Unsloth cannot run here (CUDA). The STAND-IN below is TRL's own loss with the one difference that matters to our side:
its `entropy` metric is not logged, as in Unsloth's replacement. Everything else is real: the CLI, TRL, the tiny
model, the recorder, the collapse detector and the report.
"""

from __future__ import annotations

import json
from pathlib import Path

from lowrank_rlvr.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_a_run_whose_trainer_logs_no_entropy_says_so_everywhere(cli, tmp_path: Path, tiny_model: Path, monkeypatch):
    from trl import GRPOTrainer

    trl_loss = GRPOTrainer._compute_loss

    def loss_without_the_entropy_metric(self, model, inputs):  # the stand-in for Unsloth's compute_loss
        loss = trl_loss(self, model, inputs)
        self._metrics["train" if self.model.training else "eval"].pop("entropy", None)
        return loss

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", loss_without_the_entropy_metric)
    run = tmp_path / "run"
    result = cli.invoke(app, ["train", "tiny-cpu", "-o", str(run), "--set", "grpo.max_steps=6",
                              "--set", "grpo.save_steps=6"])
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if "entropy is not measured" in line]
    assert len(said) == 1 and "entropy-collapse check is off" in said[0], result.output  # once, not per step

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert all("entropy" in row and row["entropy"] is None for row in rows)  # the key is there, and says "none"
    assert all(row["train_accuracy"] is not None and row["completion_length"] is not None for row in rows)

    page = (run / "report" / "report.html").read_text()
    assert "not measured on this backend" in page and "the entropy-collapse check was off" in page
    assert (run / "report" / "entropy.png").read_bytes()[:8] == PNG_SIGNATURE  # a figure with the statement
    assert "not logged by this run" not in page  # length and reflection words were logged; entropy is explained


def test_a_run_that_logs_entropy_says_nothing_about_it(tmp_path: Path):
    """The report of a run with entropy draws it and makes no 'not measured' claim (no training needed)."""
    from lowrank_rlvr.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "train_accuracy": 0.5, "entropy": 0.4, "completion_length": 10.0,
             "reflection_per_1k_tokens": 0.0, "warnings": []} for s in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    html, summary = build_report(run)
    assert "not measured" not in html.read_text() and not summary.get("entropy_not_measured")
