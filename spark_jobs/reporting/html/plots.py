"""report.html's plots: matplotlib figures rendered to PNG and embedded as base64 data URIs.

matplotlib is imported inside each function (headless `Figure`, no pyplot state), so importing
this module stays cheap.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from spark_jobs.reporting.html.read import finite


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        x, y = finite(record.get("step")), finite(record.get(key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def training_curves_png(steps: list[dict[str, Any]]) -> str | None:
    """Loss, accuracy, learning rate and gradient norm against the step, as one 2x2 PNG."""
    from matplotlib.figure import Figure

    train = [r for r in steps if r.get("kind", "train") == "train"]
    evals = [r for r in steps if r.get("kind") == "eval"]
    panels = [
        ("loss", [("train", train, "loss"), ("val (sampled)", evals, "val_loss")]),
        ("accuracy", [("train", train, "accuracy"), ("val (sampled)", evals, "val_accuracy")]),
        ("learning rate", [("lr", train, "lr")]),
        ("gradient norm (before clipping)", [("grad norm", train, "grad_norm")]),
    ]
    fig = Figure(figsize=(11, 7))
    axes = fig.subplots(2, 2)
    plotted = False
    for ax, (title, lines) in zip(axes.flat, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        drawn = False
        for label, records, key in lines:
            xs, ys = _series(records, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
                drawn = True
        if drawn and title.startswith("gradient norm") and ax.get_ylim()[0] > 0:
            ax.set_yscale("log")  # spikes and the slow decay both stay readable
        if drawn:
            ax.legend(loc="best", fontsize=8)
            plotted = True
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _png(fig) if plotted else None


def step_times_png(times: list[tuple[str, float]]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.5 + 0.5 * len(times)))
    ax = fig.subplots()
    names = [name for name, _ in times]
    seconds = [s for _, s in times]
    ax.barh(names, seconds, color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    for y, s in enumerate(seconds):
        ax.text(s, y, f" {s:.1f} s", va="center", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def partition_rows_png(distribution: dict[str, Any]) -> str | None:
    """Rows per partition (min / mean / max) of each split."""
    from matplotlib.figure import Figure

    splits = [s for s in ("train", "val") if isinstance(distribution.get(s), dict)]
    stats = [distribution[s].get("rows_per_partition") or {} for s in splits]
    if not splits or not any(stats):
        return None
    fig = Figure(figsize=(6, 2.8))
    ax = fig.subplots()
    width = 0.25
    for i, key in enumerate(("min", "mean", "max")):
        values = [finite(s.get(key)) or 0.0 for s in stats]
        ax.bar([x + (i - 1) * width for x in range(len(splits))], values, width, label=key)
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylabel("windows per partition")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
