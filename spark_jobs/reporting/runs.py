"""Past runs under a root: their headline figures and which one is champion.

    list_runs("output")  # -> [{"run_id": "a", "val_loss": 1.9, "champion": True, ...}, ...]

A run is a folder <root>/runs/<run_id>/; its figures come from metrics/summary.json (a run
without one is listed as "incomplete", naming the first step that did not finish). The champion
is the run named by <root>/models/champion.json. Which figures, their titles and formatting come
from the run-summary contract (spark_jobs.reporting.summary).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError
from spark_jobs.common.pipeline import STEP_NAMES
from spark_jobs.reporting.html.read import champion_run_id, read_champion
from spark_jobs.reporting.summary import HEADLINE_KEYS, format_cell, label

log = logging.getLogger(__name__)

# The figures `llm-decoder runs` shows, in column order: the contract's headline figures, less
# run_id (the table's own "run" column).
COLUMNS = tuple(key for key in HEADLINE_KEYS if key != "run_id")


def _summary(uri: str) -> dict[str, Any] | None:
    if not storage.exists(uri):
        return None
    try:
        value = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as exc:
        log.warning("%s: not valid JSON (line %d): %s", uri, exc.lineno, exc.msg)
        return None
    return value if isinstance(value, dict) else None


def _status(run_uri: str, summary: dict[str, Any] | None) -> str:
    if summary is not None:
        return "complete"
    for step in STEP_NAMES:
        if not storage.is_complete(storage.join(run_uri, step)):
            return f"incomplete ({step} not finished)"
    return "trained, no summary"


def list_runs(root: str) -> list[dict[str, Any]]:
    """One dict per run under `root`, oldest first: run_id, run_uri, status, finished (epoch
    seconds of its summary, or None), champion (bool) and the COLUMNS figures (None if unknown).

    Raises InputError when `root` does not exist; returns [] when it holds no runs.
    """
    root = storage.normalize(root)
    if not storage.exists(root):
        raise InputError(f"runs root not found: {root}")
    champion = champion_run_id(read_champion(root))
    runs = []
    for run_id in storage.list_dir(storage.join(root, "runs")):
        run_uri = storage.run_dir(root, run_id)
        if not storage.is_dir(run_uri) or run_id.startswith("."):
            continue
        summary_uri = storage.join(run_uri, "metrics", "summary.json")
        summary = _summary(summary_uri)
        figures = summary or {}
        runs.append(
            {
                "run_id": run_id,
                "run_uri": run_uri,
                "status": _status(run_uri, summary),
                "finished": storage.modified_time(summary_uri) if summary is not None else None,
                "champion": run_id == champion,
                **{key: figures.get(key) for key in COLUMNS},
            }
        )
    # Finished runs by time, then the unfinished ones; ties by id.
    runs.sort(key=lambda r: (r["finished"] is None, r["finished"] or 0.0, r["run_id"]))
    return runs


def runs_table(runs: list[dict[str, Any]], root: str) -> Any:
    """A rich Table of `list_runs` output; the champion's row is marked ★ and bold."""
    from rich.table import Table

    caption = (
        "★ = champion (models/champion.json); val figures: the whole validation split; val acc: "
        "gpt = next-token top-1 at every position, mlp = top-1 by nearest neighbour at the last position"
    )
    table = Table(title=f"runs under {root}", caption=caption)
    table.add_column("", no_wrap=True)
    table.add_column("run", no_wrap=True)
    table.add_column("status")
    for key in COLUMNS:
        table.add_column(label(key), justify="right")
    for run in runs:
        cells = [format_cell(run.get(key)) for key in COLUMNS]
        style = "bold green" if run["champion"] else None
        table.add_row("★" if run["champion"] else "", run["run_id"], run["status"], *cells, style=style)
    return table
