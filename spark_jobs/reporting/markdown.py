"""metrics/report.md: the run's figures, PNG plots of the training curves, sample generations
(`spark_jobs.models.generate.sample_generations` makes them; this module renders them).

Its figures table has the rows of the run-summary contract's report view (reporting.summary).
"""

from __future__ import annotations

import io
import logging
from typing import Any

from spark_jobs.common import storage
from spark_jobs.reporting.summary import REPORT_KEYS, format_value
from spark_jobs.reporting.train_metrics import read_steps

log = logging.getLogger(__name__)


def _plot(
    series: dict[str, tuple[list[float], list[float]]], title: str, ylabel: str, log_y: bool = False
) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def write_plots(metrics_dir: str) -> list[str]:
    """plots/{loss,accuracy,lr,grad_norm}.png from steps.jsonl; returns the written names."""
    steps = read_steps(metrics_dir)
    train = [r for r in steps if r.get("kind") == "train"]
    evals = [r for r in steps if r.get("kind") == "eval"]
    plots = {
        "loss.png": (
            {"train": _series(train, "loss"), "val (sampled)": _series(evals, "val_loss")},
            "Loss",
            "loss",
            False,
        ),
        "accuracy.png": (
            {"train": _series(train, "accuracy"), "val (sampled)": _series(evals, "val_accuracy")},
            "Top-1 accuracy",
            "accuracy",
            False,
        ),
        "lr.png": ({"lr": _series(train, "lr")}, "Learning rate", "lr", False),
        "grad_norm.png": (
            {"grad norm": _series(train, "grad_norm")},
            "Gradient norm (before clipping)",
            "norm",
            True,
        ),
    }
    written = []
    for name, (series, title, ylabel, log_y) in plots.items():
        series = {k: v for k, v in series.items() if v[0]}
        if not series:
            continue
        storage.write_bytes(storage.join(metrics_dir, "plots", name), _plot(series, title, ylabel, log_y))
        written.append(name)
    return written


def write_report(metrics_dir: str, summary: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    """Write metrics/report.md (and its plots); returns its URI."""
    plots = write_plots(metrics_dir)
    lines = [f"# Training report: run `{summary.get('run_id')}`", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {format_value(summary[key])} |" for key in REPORT_KEYS if key in summary]
    if summary.get("val_targets_scored"):
        lines += [
            "",
            f"Validation figures are full-split: {summary['val_targets_scored']} targets, each scored once, "
            f"{summary.get('val_chars_scored')} characters; val_accuracy is {summary.get('val_accuracy_kind')}. "
            "The curves' validation points are the periodic evaluations on a fixed sample.",
        ]
    if summary.get("ema_decay"):
        lines += [
            "",
            f"The model is the moving average of the weights (training.ema_decay={summary['ema_decay']}); "
            "the curves' points score the weights being trained.",
        ]
    if summary.get("val_bits_per_char_note"):
        lines += ["", f"Note: {summary['val_bits_per_char_note']}."]
    lines += ["", "## Curves", ""]
    lines += [f"![{name[:-4]}](plots/{name})" for name in plots]
    lines += ["", "## Sample generations", ""]
    for sample in samples:
        lines += [
            f"Prompt `{sample['prompt']!r}` (temperature {sample['temperature']}, seed {sample['seed']}):",
            "",
            "```text",
            sample["text"],
            "```",
            "",
        ]
    uri = storage.join(metrics_dir, "report.md")
    storage.write_text(uri, "\n".join(lines) + "\n")
    return uri
