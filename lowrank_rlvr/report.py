"""Training dynamics of one run: PNG plots and a one-page HTML (`lowrank-rlvr report RUN_DIR`: `report_command`;
the end of `train`: `build_report`, the same with the default options).

The paper's Fig. 2-style view of *post-saturation generalization* (Wang et al. 2025, arXiv 2504.20571, Sec. 3.2):
training accuracy on the one example reaches 100% early, while held-out accuracy keeps rising long after. Next to it,
the other signals the paper watches: the policy's mean token entropy, the completion length, and the frequency of
the self-reflection words "rethink", "recheck", "recalculate", "wait", "verify" per 1k completion tokens.

Reads the run folder's files (none is modified):
- `metrics.jsonl` (required): one object per logged step: `step, train_accuracy, entropy, completion_length,
  reflection_per_1k_tokens, warnings, ...`. A half-written last line (a run still going) is ignored.
- `eval_by_step.jsonl` (optional, from `lowrank-rlvr eval --run RUN`): `{"step", "benchmarks": {name: acc}, "average"}`;
  step 0 is the base model. Accuracies may be fractions or percentages (any value above 1 means percentages).
- `history.json` (optional): per-example training accuracy per epoch; plotted when an example has >= 2 epochs.
- `config.yaml` (optional): model and example, for the page's header and the paper's figures for them
  (`lowrank_rlvr.paper`), drawn as dashed lines in the accuracy plot when the model and example set match a row.

- `rollouts.jsonl` (optional): the completions of one group every `grpo.log_rollouts_steps` steps; the page shows
  the newest kept step's.

A run whose trainer logged no entropy at any step (the unsloth backend: Unsloth's GRPO loss does not report it) gets
an entropy figure that says so, and the page says the entropy-collapse check was off, instead of an empty plot.

Collapse and sampler-mismatch warnings that training printed (recorded under `warnings` in metrics.jsonl, see
`lowrank_rlvr.collapse` and `lowrank_rlvr.parity`) are marked on every plot (dotted black line) and listed on the
page. With a separate sampler (vLLM) the sampler/trainer gap gets its own plot (`sampling.png`), with the warning
level and the run's `grpo.max_sampling_logp_difference`.

Our definition of the saturation step (the paper reads it off the plot): the first step at which the trailing mean
of `train_accuracy` over `window` logged steps reaches `threshold` (defaults 10 and 0.95). The paper logs 128 x 8
rollouts per step, so its per-step accuracy is smooth; ours (often 8 rollouts a step) is noisy, hence the window.

Example:
    >>> saturation_step([1, 2, 3, 4], [0.5, 1.0, 1.0, 1.0], threshold=1.0, window=2)
    3
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from lowrank_rlvr.benchmarks import BENCHMARKS, GENERATED_BENCHMARKS, average_accuracy, paper_benchmarks
from lowrank_rlvr.defaults import SATURATION_THRESHOLD, TRAILING_WINDOW
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import writable_dir
from lowrank_rlvr.history import history_scores, parse_history, rank_by_score
from lowrank_rlvr.paper import comparable_average, reference_for_run
from lowrank_rlvr.rewards import REFLECTION_WORDS
from lowrank_rlvr.runs import RunFolder
from lowrank_rlvr.tables import MISSING, figure, percent

SERIES = {  # metrics.jsonl key -> (plot file, y label, title)
    "entropy": ("entropy.png", "mean token entropy (nats)", "Policy entropy"),
    "completion_length": ("completion_length.png", "tokens", "Mean completion length"),
    "reflection_per_1k_tokens": (
        "reflection.png",
        "occurrences per 1k tokens",
        "Self-reflection words (" + ", ".join(REFLECTION_WORDS) + ")",
    ),
}
TRAIN_COLOR, HELD_OUT_COLOR, SATURATION_COLOR, COLLAPSE_COLOR = "#1f77b4", "#d62728", "#2ca02c", "#000000"
BENCHMARK_COLORS = ("#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # none of the above


@dataclass
class RunLogs:
    run_dir: Path
    metrics: list[dict]  # one per logged step, sorted by step
    eval_by_step: list[dict] = field(default_factory=list)  # sorted by step; accuracies as fractions
    history: dict[str, list[float]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    rollouts: list[dict] = field(default_factory=list)  # rollouts.jsonl, sorted by step


# -- reading -----------------------------------------------------------------------------------------------------


def read_run(run_dir: Path) -> RunLogs:
    run = RunFolder.existing(run_dir)
    if not run.metrics_path.is_file():
        raise UserError(f"{run.path}: no metrics.jsonl (is this a run folder written by `lowrank-rlvr train`?)")
    metrics = run.read_metrics()
    if not metrics:
        raise UserError(f"{run.metrics_path}: no steps logged yet")
    eval_by_step = _normalise_eval(run.read_eval_by_step(), run.eval_by_step_path)
    try:  # informational only: a config that no longer validates still leaves the plots
        cfg = run.read_config()
    except UserError:
        cfg = None
    config = cfg.model_dump(mode="json") if cfg is not None else {}
    return RunLogs(run.path, metrics, eval_by_step, run.read_history(), config, run.read_rollouts())


def _normalise_eval(rows: list[dict], path: Path) -> list[dict]:
    """Accuracies as fractions: {"step", "benchmarks": {name: acc}, "average"} with acc in [0, 1]."""
    values = []
    for row in rows:
        if not isinstance(row.get("benchmarks"), dict):
            raise UserError(f"{path}: step {row['step']}: expected 'benchmarks': {{name: accuracy}}")
        values += [v for v in row["benchmarks"].values() if _is_number(v)]
        values += [row["average"]] if _is_number(row.get("average")) else []
    scale = 100.0 if any(v > 1.0 for v in values) else 1.0
    normalised = []
    for row in rows:
        benchmarks = {name: v / scale for name, v in row["benchmarks"].items() if _is_number(v)}
        average = row.get("average")
        if not _is_number(average):  # the paper's benchmarks only: a generated one is never in the average
            average = average_accuracy(benchmarks)
        else:
            average = average / scale
        normalised.append({"step": row["step"], "benchmarks": benchmarks, "average": average})
    return normalised


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- numbers (pure) ----------------------------------------------------------------------------------------------


def series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, skipping steps where it was not logged."""
    points = [(row["step"], float(row[key])) for row in metrics if _is_number(row.get(key))]
    return [step for step, _ in points], [value for _, value in points]


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each position (fewer at the start)."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def saturation_step(
    steps: list[int], accuracy: list[float], threshold: float = SATURATION_THRESHOLD, window: int = TRAILING_WINDOW
) -> int | None:
    """First step where the trailing mean of training accuracy over `window` logged steps (all of them, if fewer
    were logged) reaches `threshold`; None if it never does."""
    window = max(1, min(window, len(accuracy)))
    for i in range(window - 1, len(accuracy)):
        if sum(accuracy[i - window + 1 : i + 1]) / window >= threshold - 1e-12:
            return steps[i]
    return None


def summarize_run(logs: RunLogs, threshold: float = SATURATION_THRESHOLD, window: int = TRAILING_WINDOW) -> dict:
    """The headline numbers: steps, final training accuracy, saturation step, held-out accuracy before/at/after."""
    steps, accuracy = series(logs.metrics, "train_accuracy")
    saturated = saturation_step(steps, accuracy, threshold, window) if accuracy else None
    summary = {
        "steps_logged": len(logs.metrics),
        "last_step": logs.metrics[-1]["step"],
        "final_train_accuracy": trailing_mean(accuracy, window)[-1] if accuracy else None,
        "saturation_step": saturated,
        "saturation_threshold": threshold,
        "saturation_window": window,
        "logged_warnings": logged_warnings(logs.metrics),
    }
    evals = [row for row in logs.eval_by_step if row["average"] is not None]
    if evals:
        best = max(evals, key=lambda row: row["average"])
        summary |= {
            "held_out_first": evals[0]["average"],
            "held_out_first_step": evals[0]["step"],
            "held_out_last": evals[-1]["average"],
            "held_out_last_step": evals[-1]["step"],
            "held_out_best": best["average"],
            "held_out_best_step": best["step"],
        }
        if saturated is not None:
            before = [row for row in evals if row["step"] <= saturated]
            if before:  # post-saturation generalization: what held-out accuracy gained after training saturated
                summary["held_out_at_saturation"] = before[-1]["average"]
                summary["held_out_gain_after_saturation"] = evals[-1]["average"] - before[-1]["average"]
    return summary


# -- plots -------------------------------------------------------------------------------------------------------


def new_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    ax.grid(True, alpha=0.3)
    return plt, fig, ax


def save_figure(plt, fig, path: Path) -> Path:
    """Lay out, write and close a figure made by `new_figure`; returns `path`."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def logged_warnings(metrics: list[dict]) -> list[dict]:
    """The warnings training printed and recorded (`warnings` of metrics.jsonl: collapse, sampler mismatch), each
    with its step."""
    return [
        {"step": row["step"], **warning}
        for row in metrics for warning in (row.get("warnings") or []) if isinstance(warning, dict)
    ]


def _mark_collapse(ax, warnings: list[dict]) -> None:
    for warning in warnings:
        ax.axvline(warning["step"], color=COLLAPSE_COLOR, linestyle=":", linewidth=1.8,
                   label=f"{warning.get('kind', 'collapse').replace('_', ' ')} warning (step {warning['step']})")


def _mark_saturation(ax, saturated: int | None, last_step: int) -> None:
    if saturated is None:
        return
    ax.axvline(saturated, color=SATURATION_COLOR, linestyle="--", linewidth=1.5, label=f"train acc. saturated (step {saturated})")
    ax.axvspan(saturated, max(last_step, saturated), color=SATURATION_COLOR, alpha=0.06)


def plot_accuracy(logs: RunLogs, summary: dict, path: Path) -> Path:
    """Training accuracy on the example(s) (raw and trailing mean) vs held-out accuracy over steps, in percent."""
    plt, fig, ax = new_figure()
    steps, accuracy = series(logs.metrics, "train_accuracy")
    window = summary["saturation_window"]
    if steps:
        ax.plot(steps, [100 * a for a in accuracy], color=TRAIN_COLOR, alpha=0.25, linewidth=1)
        ax.plot(steps, [100 * a for a in trailing_mean(accuracy, window)], color=TRAIN_COLOR, linewidth=2,
                label=f"training accuracy (mean of {window} steps)")
    evals = logs.eval_by_step
    if evals:
        names = sorted({name for row in evals for name in row["benchmarks"]})
        if len(names) > 1:
            for number, name in enumerate(names):
                points = [(row["step"], row["benchmarks"][name]) for row in evals if name in row["benchmarks"]]
                ax.plot([s for s, _ in points], [100 * v for _, v in points], linewidth=0.9, linestyle=":", marker=".",
                        color=BENCHMARK_COLORS[number % len(BENCHMARK_COLORS)], alpha=0.8, label=name)
        points = [(row["step"], row["average"]) for row in evals if row["average"] is not None]
        counted = paper_benchmarks(names)  # what `average` is the mean of
        label = "held-out average" if len(counted) > 1 else f"held-out ({counted[0]})" if counted else "held-out"
        ax.plot([s for s, _ in points], [100 * v for _, v in points], color=HELD_OUT_COLOR, linewidth=2.2,
                marker="o", markersize=4, label=label)
    else:
        ax.text(0.99, 0.03, "no held-out accuracy yet: run `lowrank-rlvr eval --run RUN`", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8, color="gray")
    for label, value, alpha in paper_lines(logs):  # the paper's figures for this model and example, dashed
        ax.axhline(value, color=HELD_OUT_COLOR, linestyle="--", linewidth=1.2, alpha=alpha, label=label)
    _mark_saturation(ax, summary["saturation_step"], summary["last_step"])
    _mark_collapse(ax, summary["logged_warnings"])
    if summary["saturation_step"] is None and steps:
        ax.text(0.01, 0.97, f"not saturated: mean of {window} steps stayed below {100 * summary['saturation_threshold']:.0f}%",
                transform=ax.transAxes, ha="left", va="top", fontsize=8, color="gray")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Training accuracy on the example(s) vs held-out accuracy")
    ax.legend(loc="best", fontsize=7.5, framealpha=0.85)
    return save_figure(plt, fig, path)


def paper_lines(logs: RunLogs) -> list[tuple[str, float, float]]:
    """(label, accuracy in %, alpha) of the paper's base and trained figures for this run's model and example set
    (`lowrank_rlvr.paper`), over the benchmarks the held-out curve shows; none when no row matches."""
    names = sorted({name for row in logs.eval_by_step for name in row["benchmarks"]} - set(GENERATED_BENCHMARKS))
    names = names or list(BENCHMARKS)
    lines = []
    for step, alpha in ((0, 0.45), (None, 0.9)):
        row = reference_for_run(logs.config or None, step=step)
        value = comparable_average(row, names) if row is not None else None
        if value is not None:
            what = "average" if len(names) > 1 else names[0]
            lines.append((f"{row.label}: {figure(value, '%')} ({what})", value, alpha))
    return lines


def plot_series(logs: RunLogs, key: str, summary: dict, path: Path) -> Path | None:
    """One metric over steps (raw and trailing mean), saturation marked; None if the run never logged it."""
    steps, values = series(logs.metrics, key)
    if not steps:
        return None
    _, ylabel, title = SERIES[key]
    plt, fig, ax = new_figure()
    window = summary["saturation_window"]
    ax.plot(steps, values, color="#444444", alpha=0.3, linewidth=1, label="per step")
    ax.plot(steps, trailing_mean(values, window), color="#9467bd", linewidth=2, label=f"mean of {window} steps")
    _mark_saturation(ax, summary["saturation_step"], summary["last_step"])
    _mark_collapse(ax, summary["logged_warnings"])
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    low, high = min(0.0, min(values)), max(values)
    span = (high - low) or 1.0
    ax.set_ylim(low - 0.04 * span, high + 0.1 * span)  # a flat zero line stays visible above the axis
    ax.legend(loc="best", fontsize=7.5, framealpha=0.85)
    return save_figure(plt, fig, path)


ENTROPY_CAPTION = "not measured on this backend (the trainer logged no entropy: Unsloth's GRPO loss does not)"


def plot_not_measured(key: str, reason: str, path: Path) -> Path:
    """The figure of a metric the run could not measure: its title and, where the curve would be, why not."""
    _, ylabel, title = SERIES[key]
    plt, fig, ax = new_figure()
    import textwrap

    ax.text(0.5, 0.5, textwrap.fill(reason, 60), transform=ax.transAxes, ha="center", va="center", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}: not measured", fontsize=10)
    return save_figure(plt, fig, path)


def plot_sampling(logs: RunLogs, summary: dict, path: Path) -> Path | None:
    """The sampler/trainer gap per step (mean and max |logp difference|, log scale) with the warning level and the
    run's hard limit; None when the run had no separate sampler."""
    from lowrank_rlvr.parity import ParityThresholds

    steps, mean = series(logs.metrics, "sampling_logp_difference_mean")
    if not steps:
        return None
    max_steps, largest = series(logs.metrics, "sampling_logp_difference_max")
    plt, fig, ax = new_figure()
    ax.plot(steps, mean, color="#9467bd", linewidth=2, marker=".", label="mean |trainer - sampler logp|")
    if max_steps:
        ax.plot(max_steps, largest, color="#9467bd", alpha=0.4, linewidth=1, label="max over tokens")
    ax.axhline(ParityThresholds().warn_mean, color="#ff7f0e", linestyle="--", linewidth=1.2, label="warning level (mean)")
    limit = (logs.config.get("grpo") or {}).get("max_sampling_logp_difference")
    if _is_number(limit):
        ax.axhline(limit, color=HELD_OUT_COLOR, linestyle="--", linewidth=1.2, label=f"training stops (mean > {limit:g})")
    _mark_collapse(ax, summary["logged_warnings"])
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("log-probability difference (nats)")
    ax.set_title("Sampler vs trainer on the sampled tokens (does the sampler serve the trained weights?)", fontsize=10)
    ax.legend(loc="best", fontsize=7.5, framealpha=0.85)
    return save_figure(plt, fig, path)


def plot_history(history: dict[str, list[float]], where: Path, path: Path, most: int = 8) -> Path | None:
    """Per-example training accuracy per epoch (the `select` input); the `most` examples that varied most."""
    lists = {key: values for key, values in history.items() if isinstance(values, list) and len(values) >= 2}
    if not lists:
        return None
    scores = history_scores(parse_history(lists, str(where)))
    shown = rank_by_score(scores)[:most]
    plt, fig, ax = new_figure()
    for index in shown:
        values = lists[str(index)]
        ax.plot(range(1, len(values) + 1), [100 * v for v in values], marker="o", markersize=3, linewidth=1.2,
                label=f"example {index} (std {scores[index]:.2f})")
    ax.set_ylim(-2, 102)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("training accuracy (%)")
    more = f", {len(shown)} of {len(lists)} with the largest spread" if len(lists) > len(shown) else ""
    ax.set_title(f"Per-example training accuracy per epoch{more}", fontsize=10)
    ax.legend(loc="best", fontsize=7, framealpha=0.85)
    return save_figure(plt, fig, path)


# -- the page ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportOptions:
    """What `lowrank-rlvr report` takes besides the run folder, checked once."""

    output_dir: Path | None = None  # default RUN/report
    threshold: float = SATURATION_THRESHOLD
    window: int = TRAILING_WINDOW

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise UserError(f"--threshold must be in (0, 1] (got {self.threshold})")
        if self.window < 1:
            raise UserError(f"--window must be >= 1 (got {self.window})")


def report_command(run_dir: Path, options: ReportOptions = ReportOptions()) -> tuple[Path, dict]:
    """`lowrank-rlvr report RUN`: write the PNGs and `report.html` into the output folder (default RUN/report).
    Returns (html path, summary)."""
    logs = read_run(Path(run_dir))
    output_dir = options.output_dir
    output_dir = writable_dir(Path(output_dir) if output_dir else RunFolder(logs.run_dir).report_dir, "report folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize_run(logs, options.threshold, options.window)
    figures = draw_figures(logs, summary, output_dir)
    summary["figures"] = [str(path) for _, path in figures]
    html_path = output_dir / "report.html"
    html_path.write_text(_page(logs, summary, figures))
    return html_path, summary


def build_report(run_dir: Path) -> tuple[Path, dict]:
    """The report `train` writes when a run ends: `report_command` with the default options, into RUN/report."""
    return report_command(run_dir, ReportOptions())


def draw_figures(logs: RunLogs, summary: dict, output_dir: Path) -> list[tuple[str, Path]]:
    """Every plot the run's files allow, as (name, PNG); records in `summary` what the run did not log."""
    figures = [("accuracy", plot_accuracy(logs, summary, output_dir / "accuracy.png"))]
    missing = []
    for key, (filename, _, _) in SERIES.items():
        written = plot_series(logs, key, summary, output_dir / filename)
        if written is None and key == "entropy":  # a statement, not an empty plot (see the module docstring)
            written = plot_not_measured(key, ENTROPY_CAPTION, output_dir / filename)
            summary["entropy_not_measured"] = True
        if written:
            figures.append((key, written))
        else:
            missing.append(key)
    sampling_png = plot_sampling(logs, summary, output_dir / "sampling.png")
    if sampling_png:
        figures.append(("sampling", sampling_png))
    history_png = plot_history(logs.history, RunFolder(logs.run_dir).history_path, output_dir / "history.png")
    if history_png:
        figures.append(("history", history_png))
    summary["not_logged"] = missing
    return figures


def _rollouts_section(rollouts: list[dict]) -> str:
    """The newest kept group of completions (rollouts.jsonl), as a table; empty when none were kept."""
    if not rollouts:
        return ""
    latest = rollouts[-1]

    def cell(value) -> str:
        return MISSING if not _is_number(value) else f"{value:.3g}"

    rows = "\n".join(
        f"<tr><td>{cell(c.get('reward'))}</td><td>{cell(c.get('advantage'))}</td><td>{c.get('tokens', '-')}</td>"
        f"<td>{cell(c.get('logp_gap_mean'))}</td><td><pre>{html.escape(str(c.get('text', '')))}</pre></td></tr>"
        for c in latest.get("completions") or [] if isinstance(c, dict)
    )
    return f"""<h2>Latest rollouts (step {html.escape(str(latest.get('step')))}, answer {html.escape(str(latest.get('answer')))})</h2>
<p class="note">Prompt: {html.escape(str(latest.get('prompt', '')))}</p>
<table class="rollouts"><tr><th>reward</th><th>advantage</th><th>tokens</th><th>sampler gap</th><th>completion</th></tr>
{rows}
</table>"""


def _page(logs: RunLogs, summary: dict, figures: list[tuple[str, Path]]) -> str:
    """The one-page HTML: the table of what the run is and did, the plots, the definitions, the latest rollouts."""
    rows = _run_rows(logs.config, summary) + _held_out_rows(summary) + _note_rows(logs, summary)
    definition = (
        f"Saturation step: the first step at which the mean training accuracy over the last {summary['saturation_window']} "
        f"logged steps reached {100 * summary['saturation_threshold']:.0f}% (our definition; the paper reads it off "
        "the curve). Reflection words: " + ", ".join(REFLECTION_WORDS) + ", counted per 1,000 completion tokens."
    )
    body = f"""<table>
{html_rows(rows)}
</table>
<div class="grid">
{html_figures(figures)}
</div>
<p class="note">{html.escape(definition)}</p>
{_rollouts_section(logs.rollouts)}"""
    return html_page(f"lowrank-rlvr report: {logs.run_dir.name}", f"Run report: {logs.run_dir}", body)


def _run_rows(cfg: dict, summary: dict) -> list[tuple[str, object]]:
    """The page's first rows: the model, the example(s), the steps, the training accuracy and its saturation."""
    model = (cfg.get("model") or {}).get("name_or_path", "?")
    data = cfg.get("data") or {}
    if data.get("examples"):
        example = "; ".join(f"{ex.get('prompt')} (answer {ex.get('answer')})" for ex in data["examples"][:3])
    else:
        example = data.get("path") or data.get("dataset") or "?"
        if data.get("indices"):
            example += f" (indices {data['indices'][:5]})"
    saturated = summary["saturation_step"]
    return [
        ("model", model),
        ("training example(s)", example),
        ("steps logged", f"{summary['steps_logged']} (last step {summary['last_step']})"),
        (f"training accuracy (mean of last {summary['saturation_window']} steps)",
         percent(summary["final_train_accuracy"], "%")),
        ("saturation step", f"{saturated}" if saturated is not None else "not reached"),
    ]


def _held_out_rows(summary: dict) -> list[tuple[str, object]]:
    """Held-out accuracy first -> last (best), and what it gained after saturation; or how to get it."""
    if "held_out_first" not in summary:
        return [("held-out accuracy", "no eval_by_step.jsonl in the run folder (run `lowrank-rlvr eval --run RUN`)")]
    rows = [
        ("held-out accuracy", f"{percent(summary['held_out_first'], '%')} at step {summary['held_out_first_step']} -> "
         f"{percent(summary['held_out_last'], '%')} at step {summary['held_out_last_step']} "
         f"(best {percent(summary['held_out_best'], '%')} at step {summary['held_out_best_step']})"),
    ]
    if "held_out_gain_after_saturation" in summary:
        gain = 100 * summary["held_out_gain_after_saturation"]
        rows.append(("held-out change after saturation", f"{gain:+.1f} points"))
    return rows


def _note_rows(logs: RunLogs, summary: dict) -> list[tuple[str, object]]:
    """The paper's figures for this run, what was not measured or logged, and the warnings training printed."""
    rows: list[tuple[str, object]] = []
    for label, value, _ in paper_lines(logs):
        rows.append((label.split(":")[0], f"{figure(value, '%')} (dashed in the accuracy plot; Wang et al. 2025, arXiv 2504.20571)"))
    if summary.get("entropy_not_measured"):
        rows.append(("entropy", f"{ENTROPY_CAPTION}; the entropy-collapse check was off"))
    for warning in summary["logged_warnings"]:
        rows.append((f"warning at step {warning['step']}", warning.get("message", warning.get("kind", ""))))
    if summary["not_logged"]:
        rows.append(("not logged by this run", ", ".join(summary["not_logged"])))
    return rows


def html_rows(rows: list[tuple[str, object]]) -> str:
    """(label, value) pairs as the rows of a two-column table, escaped."""
    return "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)


def html_figures(figures: list[tuple[str, Path]]) -> str:
    """PNGs embedded in the page (it stays one file)."""
    return "\n".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
        f"<figcaption>{path.name}</figcaption></figure>"
        for name, path in figures
    )


def html_page(title: str, heading: str, body: str) -> str:
    """The page around `body` (HTML): the style every lowrank-rlvr page shares (`report`, `compare`)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1000px; margin: 1.5em auto; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ text-align: left; padding: 3px 10px; border-bottom: 1px solid #ddd; vertical-align: top; }}
th {{ color: #555; font-weight: 600; white-space: nowrap; }}
.grid {{ display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }}
figure {{ margin: 0; }} img {{ width: 100%; }} figcaption {{ font-size: 0.75em; color: #888; }}
p.note {{ font-size: 0.85em; color: #555; }}
table.rollouts pre {{ white-space: pre-wrap; margin: 0; font-size: 0.8em; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style></head>
<body>
<h1>{html.escape(heading)}</h1>
{body}
</body></html>
"""
