"""The run-summary contract: which figures a run's summary holds, in which order, and where each is shown.

The train step writes every figure below to <run>/metrics/summary.json (`summary_record`);
everything that shows a run reads its keys, labels and order from here:

    view       shown by
    headline   Airflow's collect (<run>/summary.json, <run>/report.md, the logged table),
               the columns of `llm-decoder runs`, the first rows of report.html
    report     the figures table of <run>/metrics/report.md
    cluster    an EMR run's cluster and its cost (CLUSTER_FIGURES): added to <run>/summary.json by
               Airflow's collect, shown in <run>/report.md and report.html; a run without a
               cluster (the local DAG) has them absent or null

`lower_is_better` marks the figures report.html compares with the champion's.
Pure Python on purpose: the Airflow DAG files import collect.py, and so this module, at parse
time, where numpy, pyarrow and torch must not be loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

HEADLINE = "headline"
REPORT = "report"
_BOTH = frozenset({HEADLINE, REPORT})
_REPORT_ONLY = frozenset({REPORT})


@dataclass(frozen=True)
class Figure:
    """One summary figure: its summary.json key, a short label for tables and columns, its unit
    (None when it has none or depends on the model kind), whether a lower value is better (None:
    not compared with the champion) and the views that show it."""

    key: str
    label: str
    unit: str | None = None
    lower_is_better: bool | None = None
    views: frozenset[str] = _REPORT_ONLY


# The figures in display order. Losses have no unit here: cross-entropy (nats) for gpt,
# MSE/cosine for mlp.
FIGURES: tuple[Figure, ...] = (
    Figure("run_id", "run", views=frozenset({HEADLINE})),  # report.md names it in its title
    Figure("model_kind", "model", views=_BOTH),
    Figure("strategy", "strategy", views=_BOTH),
    Figure("num_workers", "workers", views=_BOTH),
    Figure("parameters", "parameters"),
    Figure("steps", "steps", views=_BOTH),
    Figure("epochs", "epochs"),
    Figure("train_loss", "train loss", lower_is_better=True, views=_BOTH),
    Figure("first_val_loss", "first val loss (sampled)", views=_BOTH),
    Figure("val_loss", "val loss", lower_is_better=True, views=_BOTH),
    Figure("val_accuracy", "val acc", "fraction", lower_is_better=False, views=_BOTH),
    Figure("val_perplexity", "val perplexity", lower_is_better=True),
    Figure("val_bits_per_char", "bits/char", "bits/char", lower_is_better=True, views=_BOTH),
    Figure("tokens_per_s", "tokens/s", "tokens/s", lower_is_better=False, views=_BOTH),
    Figure("samples_per_s", "samples/s", "samples/s"),
    Figure("train_s", "train s", "s"),
    Figure("wall_s", "wall s", "s", lower_is_better=True, views=_BOTH),
    Figure("stopped_early", "stopped early"),
)

CLUSTER = "cluster"
# Not the train step's figures: collect reads them from EMR (llm_decoder_airflow.cost). Estimates
# from list prices; cost_basis says how each was made.
CLUSTER_FIGURES: tuple[Figure, ...] = (
    Figure("cost_usd_estimate", "cost (estimate)", "USD", views=frozenset({CLUSTER})),
    Figure("cluster_hours", "cluster hours", "h", views=frozenset({CLUSTER})),
    Figure("instance_hours", "normalized instance hours", "h", views=frozenset({CLUSTER})),
    Figure("cost_basis", "how the cost was estimated", views=frozenset({CLUSTER})),
)

BY_KEY: dict[str, Figure] = {f.key: f for f in FIGURES + CLUSTER_FIGURES}
# Every figure of metrics/summary.json, in order.
SUMMARY_KEYS: tuple[str, ...] = tuple(f.key for f in FIGURES)
# The cluster figures of <run>/summary.json, in order.
CLUSTER_KEYS: tuple[str, ...] = tuple(f.key for f in CLUSTER_FIGURES)
# The headline figures, in order.
HEADLINE_KEYS: tuple[str, ...] = tuple(f.key for f in FIGURES if HEADLINE in f.views)
# The rows of metrics/report.md, in order.
REPORT_KEYS: tuple[str, ...] = tuple(f.key for f in FIGURES if REPORT in f.views)
# Figures compared with the champion -> whether lower is better.
COMPARED: dict[str, bool] = {f.key: f.lower_is_better for f in FIGURES if f.lower_is_better is not None}


def label(key: str) -> str:
    """The figure's short label; an unknown key with its underscores as spaces."""
    figure = BY_KEY.get(key)
    return figure.label if figure else key.replace("_", " ")


def label_with_unit(key: str) -> str:
    """The label and, when the figure has one, its unit: "cost (estimate), USD"."""
    figure = BY_KEY.get(key)
    return f"{figure.label}, {figure.unit}" if figure and figure.unit else label(key)


def display_order(keys: Iterable[str]) -> list[str]:
    """`keys` ordered for display: headline figures, the other figures, then the rest sorted."""
    present = set(keys)
    known = [k for k in HEADLINE_KEYS if k in present]
    known += [k for k in SUMMARY_KEYS + CLUSTER_KEYS if k in present and k not in HEADLINE_KEYS]
    return known + sorted(present - set(SUMMARY_KEYS) - set(CLUSTER_KEYS))


def summary_record(figures: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A run summary: every contract figure from `figures` in order, then `extra`.

    Raises ValueError when `figures` lacks a figure or holds a key the contract does not know
    (a new figure belongs in FIGURES first), or when `extra` reuses a figure's key.
    """
    missing = [k for k in SUMMARY_KEYS if k not in figures]
    unknown = [k for k in figures if k not in SUMMARY_KEYS]
    clashing = [k for k in extra or {} if k in BY_KEY]
    if missing or unknown or clashing:
        raise ValueError(
            f"run summary does not match the contract: missing {missing}, unknown {unknown}, "
            f"figures passed as extras {clashing}"
        )
    return {**{k: figures[k] for k in SUMMARY_KEYS}, **(extra or {})}


def format_value(value: Any) -> str:
    """A figure in a Markdown table or a log line: floats to 4 significant digits, None as —."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_cell(value: Any) -> str:
    """A figure in a terminal table column: fixed decimals by magnitude, thousands separated."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return (
            f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.4f}"
        )
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
