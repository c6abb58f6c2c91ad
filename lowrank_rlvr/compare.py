"""`lowrank-rlvr compare RUN OTHER...`: is the gain real? A run (the treatment) against its controls, side by side.

For each run (read through `lowrank_rlvr.report.read_run`, i.e. `RunFolder`): the training reward and training
accuracy per step (overlaid), and the held-out accuracy per benchmark at two checkpoints:
- *final*: the last step of `eval_by_step.jsonl` (`eval --run RUN`), else the final adapter's `eval_report.json`
  (`eval --adapter RUN/adapter`);
- *best*: the step of `eval_by_step.jsonl` after step 0 with the best average (over the paper's benchmarks evaluated;
  when only generated ones were, over those). Choosing it on the same problems it is scored on flatters it: compare
  final with final where you can.
Every run after the first is set against the first: difference = this run - the treatment, in points.

Uncertainty (ours, deliberately simple): the binomial standard error over problems, `sqrt(p (1 - p) / n)` with `n`
the number of problems (`num_problems` of the eval report; with several samples per problem, as AIME's avg@8, the
samples are not independent, so problems and not responses are counted) and `p` shrunk towards 1/2 as `(k + 1) /
(n + 2)` so that 0% and 100% do not claim a zero error. A difference's error is `sqrt(se_a^2 + se_b^2)`: the runs
are treated as independent although they answered the same problems, which overstates it (a paired test would be
tighter). A difference beyond two of its standard errors is marked `*`. A 2-point gap on AIME's 30 problems is
about a quarter of one standard error.

The paper's rows (`lowrank_rlvr.paper`) are listed where a run's base model and example set match one: the base row,
and the trained row of a treatment (controls have none). Generated benchmarks (`random_calculation`) are shown in
their own column and never averaged in.

Runs must share one base model (compared by `pretrained.model_key`, so a 4-bit mirror is the same model); anything else
stops with one line, as do fewer than two runs and a run with no held-out evaluation.

Outputs, into `--output-dir` (default: the treatment's `comparison/`): one PNG per plot, `comparison.html` (the
page, PNGs embedded) and `comparison.md` (the tables `compare` prints).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from lowrank_rlvr.benchmarks import BENCHMARKS, GENERATED_BENCHMARKS, paper_benchmarks
from lowrank_rlvr.defaults import TRAILING_WINDOW
from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import atomic_output, writable_dir
from lowrank_rlvr.paper import SOURCE, reference_cells, reference_for_run
from lowrank_rlvr.pretrained import model_key
from lowrank_rlvr.report import (
    RunLogs, html_figures, html_page, new_figure, read_run, save_figure, series, trailing_mean,
)
from lowrank_rlvr.runs import RunFolder
from lowrank_rlvr.tables import MISSING, markdown_table, percent

SIGNIFICANT_SE = 2.0  # a difference beyond this many standard errors is marked


@dataclass(frozen=True)
class HeldOut:
    """Held-out accuracy of one run at one checkpoint."""

    step: int
    accuracy: dict[str, float]  # benchmark -> fraction correct
    problems: dict[str, int]  # benchmark -> problems behind it (0: unknown)

    def counted(self) -> list[str]:
        """The benchmarks an average is taken over: the paper's ones, or the generated ones when there are none."""
        return paper_benchmarks(self.accuracy) or list(self.accuracy)

    @property
    def average(self) -> float:
        names = self.counted()
        return sum(self.accuracy[name] for name in names) / len(names)

    def standard_error(self, name: str) -> float | None:
        return binomial_standard_error(self.accuracy[name], self.problems.get(name, 0))

    def average_standard_error(self) -> float | None:
        errors = [self.standard_error(name) for name in self.counted()]
        if any(e is None for e in errors):
            return None
        return math.sqrt(sum(e * e for e in errors)) / len(errors)


@dataclass
class ComparedRun:
    label: str
    logs: RunLogs
    final: HeldOut
    best: HeldOut
    base: HeldOut | None = None  # step 0 of eval_by_step.jsonl, when the sweep evaluated it
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        return (self.logs.config.get("model") or {}).get("name_or_path", "")

    @property
    def reward_kind(self) -> str:
        return (self.logs.config.get("reward") or {}).get("kind", "?")


def binomial_standard_error(accuracy: float, problems: int) -> float | None:
    """sqrt(p (1 - p) / n), p shrunk towards 1/2 as (k + 1) / (n + 2); None when n is not known.

    Example:
        >>> round(binomial_standard_error(0.5, 100), 4), round(binomial_standard_error(0.0, 30), 4)
        (0.05, 0.0318)
    """
    if not problems:
        return None
    shrunk = (accuracy * problems + 1) / (problems + 2)
    return math.sqrt(shrunk * (1 - shrunk) / problems)


def difference_standard_error(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else math.sqrt(a * a + b * b)


# -- reading -----------------------------------------------------------------------------------------------------


def load_runs(run_dirs: list[Path]) -> list[ComparedRun]:
    """Every run read and checked (two or more, one base model, each with a held-out evaluation), before any plot."""
    if len(run_dirs) < 2:
        raise UserError("compare needs two runs or more: the treatment first, then its controls")
    runs = [_read(Path(run_dir)) for run_dir in run_dirs]
    models = {model_key(run.model) for run in runs}
    if len(models) > 1:
        listed = ", ".join(f"{run.label}: {run.model}" for run in runs)
        raise UserError(f"runs have different base models ({listed}): compare runs of one base model")
    labels = [run.label for run in runs]
    if len(set(labels)) < len(labels):  # folders of the same name in different places
        for run in runs:
            run.label = str(run.logs.run_dir)
    return runs


def _read(run_dir: Path) -> ComparedRun:
    logs = read_run(run_dir)  # one line for a missing folder, a file, no metrics.jsonl
    run = RunFolder(logs.run_dir)
    if not (logs.config.get("model") or {}).get("name_or_path"):
        raise UserError(f"{run.path}: cannot tell the base model (no readable config.yaml)")
    label = run.path.name
    sweep = [row for row in logs.eval_by_step if row["benchmarks"]]
    if sweep:
        by_step = {row["step"]: _held_out(run, row["step"], row["benchmarks"]) for row in sweep}
        trained = [held for step, held in by_step.items() if step > 0] or list(by_step.values())
        final = max(trained, key=lambda held: held.step)
        best = max(trained, key=lambda held: (held.average, -held.step))  # ties: the earlier step
        return ComparedRun(label, logs, final, best, by_step.get(0))
    report = run.read_eval_report()
    if report is None:
        raise UserError(
            f"{run.path}: no held-out evaluation (run `lowrank-rlvr eval --run {run.path}`, or eval --adapter into "
            "its eval_report.json)"
        )
    cfg_steps = (logs.config.get("grpo") or {}).get("max_steps") or logs.metrics[-1]["step"]
    final = _from_report(report, cfg_steps)
    return ComparedRun(label, logs, final, final, notes=["final adapter only (eval_report.json): best = final"])


def _held_out(run: RunFolder, step: int, accuracy: dict[str, float]) -> HeldOut:
    report = run.read_eval_report(step)
    problems = {}
    if report is not None:
        problems = {name: int(result.get("num_problems") or 0) for name, result in report["benchmarks"].items()}
    return HeldOut(step, dict(accuracy), problems)


def _from_report(report: dict, step: int) -> HeldOut:
    accuracy, problems = {}, {}
    for name, result in report["benchmarks"].items():
        if isinstance(result, dict) and isinstance(result.get("accuracy"), (int, float)):
            accuracy[name] = float(result["accuracy"])
            problems[name] = int(result.get("num_problems") or 0)
    if not accuracy:
        raise UserError(f"{report.get('settings', {}).get('report', 'eval report')}: no benchmark accuracies")
    return HeldOut(step, accuracy, problems)


# -- tables ------------------------------------------------------------------------------------------------------


def benchmark_names(runs: list[ComparedRun]) -> list[str]:
    """Every benchmark any run was evaluated on: the paper's order, then the generated ones."""
    seen = {name for run in runs for held in (run.final, run.best) for name in held.accuracy}
    return [n for n in BENCHMARKS if n in seen] + [n for n in GENERATED_BENCHMARKS if n in seen] + sorted(
        seen - set(BENCHMARKS) - set(GENERATED_BENCHMARKS)
    )


def _cell(value: float | None, error: float | None, treatment: tuple[float | None, float | None] | None) -> str:
    if value is None:
        return MISSING
    text = percent(value) + (f" ± {percent(error)}" if error is not None else "")
    if treatment is not None and treatment[0] is not None:
        delta = value - treatment[0]
        delta_error = difference_standard_error(error, treatment[1])
        mark = " *" if delta_error is not None and abs(delta) > SIGNIFICANT_SE * delta_error else ""
        spread = f" ± {percent(delta_error)}" if delta_error is not None else ""
        text += f" ({100 * delta:+.1f}{spread}{mark})"
    return text


def held_out_table(runs: list[ComparedRun], which: str) -> str:
    """Markdown: one row per run at its `which` ('final' or 'best') checkpoint, differences from the first run."""
    names = benchmark_names(runs)
    counted = paper_benchmarks(names) or names
    header = ["run", "reward", "step", *names, f"average ({', '.join(counted)})" if len(counted) < 6 else "average"]
    rows = []
    base = runs[0].base
    if base is not None:
        cells = [_cell(base.accuracy.get(n), base.standard_error(n) if n in base.accuracy else None, None) for n in names]
        rows.append([f"base (step 0 of {runs[0].label})", "-", 0, *cells,
                     _cell(base.average, base.average_standard_error(), None)])
    treatment = getattr(runs[0], which)
    for number, run in enumerate(runs):
        label = f"{run.label} (treatment)" if number == 0 else run.label
        held = getattr(run, which)
        rows.append([label, run.reward_kind, held.step, *_held_out_cells(held, names, treatment if number else None)])
    rows += _paper_rows(runs, names, counted)
    return markdown_table(header, rows, left=2)


def _held_out_cells(held: HeldOut, names: list[str], treatment: HeldOut | None) -> list[str]:
    """One run's cells: each benchmark and the average, with its difference from `treatment` when given."""
    cells = []
    for name in names:
        if name not in held.accuracy:
            cells.append(MISSING)
            continue
        reference = None
        if treatment is not None and name in treatment.accuracy:
            reference = (treatment.accuracy[name], treatment.standard_error(name))
        cells.append(_cell(held.accuracy[name], held.standard_error(name), reference))
    average_reference = (treatment.average, treatment.average_standard_error()) if treatment is not None else None
    return cells + [_cell(held.average, held.average_standard_error(), average_reference)]


def _paper_rows(runs: list[ComparedRun], names: list[str], counted: list[str]) -> list[list[str]]:
    rows, seen = [], set()
    for run in runs:
        for step in (0, None):
            paper = reference_for_run(run.logs.config or None, step=step)
            if paper is None or paper.label in seen:
                continue
            seen.add(paper.label)
            rows.append([paper.label, "", "", *reference_cells(paper, names, counted)])
    return rows


def training_table(runs: list[ComparedRun]) -> str:
    """Markdown: steps logged and the trailing means of training reward and accuracy at the end, per run."""
    rows = []
    for run in runs:
        cells = []
        for key in ("reward_mean", "train_accuracy"):
            _, values = series(run.logs.metrics, key)
            cells.append(f"{trailing_mean(values, TRAILING_WINDOW)[-1]:.3f}" if values else MISSING)
        rows.append([run.label, run.reward_kind, run.logs.metrics[-1]["step"], *cells])
    return markdown_table(["run", "reward", "steps", "training reward", "training accuracy"], rows, left=2)


def markdown(runs: list[ComparedRun]) -> str:
    """Everything `compare` prints: the held-out tables (final, best), the training table, how to read them."""
    notes = [f"- {run.label}: {note}" for run in runs for note in run.notes]
    parts = [
        "held-out accuracy (%) at each run's final checkpoint; ± one binomial standard error over problems; "
        f"(difference from the treatment ± its error, * beyond {SIGNIFICANT_SE:g} errors)",
        held_out_table(runs, "final"),
        "held-out accuracy (%) at each run's best checkpoint (chosen on these same problems: optimistic)",
        held_out_table(runs, "best"),
        f"training, mean of the last {TRAILING_WINDOW} logged steps",
        training_table(runs),
    ]
    if any(reference_for_run(run.logs.config or None, step=0) for run in runs):
        parts.append(f"paper rows: {SOURCE} (where our evaluation differs: lowrank_rlvr/paper.py)")
    if notes:
        parts.append("\n".join(notes))
    return "\n\n".join(parts)


# -- plots -------------------------------------------------------------------------------------------------------


def plot_training(runs: list[ComparedRun], key: str, ylabel: str, path: Path) -> Path | None:
    """One training metric per step for every run: faint per step, bold the trailing mean."""
    plt, fig, ax = new_figure()
    drawn = False
    for number, run in enumerate(runs):
        steps, values = series(run.logs.metrics, key)
        if not steps:
            continue
        drawn = True
        color = f"C{number % 10}"
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
        ax.plot(steps, trailing_mean(values, TRAILING_WINDOW), color=color, linewidth=2,
                label=f"{run.label} ({run.reward_kind})")
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} (mean of {TRAILING_WINDOW} steps bold)", fontsize=10)
    ax.legend(loc="best", fontsize=7.5, framealpha=0.85)
    return save_figure(plt, fig, path)


def plot_held_out_by_step(runs: list[ComparedRun], name: str, path: Path) -> Path | None:
    """One benchmark's accuracy at every evaluated step (`eval --run`), one line per run."""
    plt, fig, ax = new_figure()
    drawn = False
    for number, run in enumerate(runs):
        points = [(row["step"], row["benchmarks"][name]) for row in run.logs.eval_by_step if name in row["benchmarks"]]
        if len(points) < 2:
            continue
        drawn = True
        ax.plot([s for s, _ in points], [100 * v for _, v in points], color=f"C{number % 10}", marker="o",
                markersize=4, linewidth=1.8, label=run.label)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_ylim(-2, 102)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Held-out accuracy by step: {name}", fontsize=10)
    ax.legend(loc="best", fontsize=7.5, framealpha=0.85)
    return save_figure(plt, fig, path)


def plot_final(runs: list[ComparedRun], path: Path) -> Path:
    """Final held-out accuracy per benchmark, one bar per run, error bars one standard error."""
    plt, fig, ax = new_figure()
    names = benchmark_names(runs)
    width = 0.8 / len(runs)
    for number, run in enumerate(runs):
        xs, heights, errors = [], [], []
        for index, name in enumerate(names):
            if name in run.final.accuracy:
                xs.append(index + (number - (len(runs) - 1) / 2) * width)
                heights.append(100 * run.final.accuracy[name])
                errors.append(100 * (run.final.standard_error(name) or 0.0))
        ax.bar(xs, heights, width=width, yerr=errors, capsize=3, color=f"C{number % 10}",
               label=f"{run.label} (step {run.final.step})")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(0, 102)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Held-out accuracy at the final checkpoint (± one standard error)", fontsize=10)
    ax.legend(loc="best", fontsize=7.5, framealpha=0.85)
    return save_figure(plt, fig, path)


# -- the command -------------------------------------------------------------------------------------------------


def compare_command(run_dirs: list[Path], output_dir: Path | None = None) -> tuple[str, Path]:
    """`lowrank-rlvr compare`: read and check every run, draw, write the page and the table; (markdown, page)."""
    runs = load_runs(run_dirs)
    out = writable_dir(Path(output_dir) if output_dir else RunFolder(runs[0].logs.run_dir).comparison_dir,
                       "comparison folder (--output-dir)")
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for key, ylabel, filename in (("reward_mean", "training reward", "training_reward.png"),
                                  ("train_accuracy", "training accuracy", "training_accuracy.png")):
        drawn = plot_training(runs, key, ylabel, out / filename)
        if drawn:
            figures.append((key, drawn))
    figures.append(("final", plot_final(runs, out / "held_out_final.png")))
    for name in benchmark_names(runs):
        drawn = plot_held_out_by_step(runs, name, out / f"held_out_{name}.png")
        if drawn:
            figures.append((name, drawn))
    text = markdown(runs)
    page_path, table_path = RunFolder.comparison_files(out)
    body = (
        "<p>" + " &nbsp;vs&nbsp; ".join(html.escape(f"{run.label} ({run.reward_kind})") for run in runs) + "</p>\n"
        f"<pre>{html.escape(text)}</pre>\n<div class=\"grid\">\n{html_figures(figures)}\n</div>\n"
        f"<p class=\"note\">{html.escape(_how_to_read())}</p>"
    )
    with atomic_output(page_path) as staging:
        staging.write_text(html_page(f"lowrank-rlvr compare: {runs[0].label}", f"Compared with {runs[0].label}", body))
    with atomic_output(table_path) as staging:
        staging.write_text(text + "\n")
    return text, page_path


def _how_to_read() -> str:
    return (
        "Differences are this run minus the treatment (the first run), in points, with the binomial standard error "
        "over problems of each run combined as if the runs were independent; * marks a difference beyond "
        f"{SIGNIFICANT_SE:g} of those errors. random_calculation (generated problems) is never in the average."
    )
