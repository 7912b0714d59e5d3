"""Collecting a run's metrics into one run summary and report, on S3 or a local disk.

Reads what the steps wrote (train's metrics/summary.json, preprocess's stats.json, window's
data_distribution.json), writes `<run>/summary.json` and `<run>/report.md` beside them, logs
the headline figures as a table and returns them (the collect task's XCom). A missing or
unreadable file does not stop collection: the summary says which part is missing.

Which figures are headline ones, and their order, is the run-summary contract's
(spark_jobs.reporting.summary, pure Python: this module is imported when the DAGs are parsed).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from llm_decoder_airflow.files import FileStore, join, run_dir
from spark_jobs.reporting.summary import HEADLINE_KEYS, format_value

log = logging.getLogger(__name__)

# What collection reads, relative to the run folder.
SOURCES = {
    "metrics": "metrics/summary.json",
    "preprocess": "preprocess/stats.json",
    "window": "window/data_distribution.json",
}
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"


def _read_json(files: FileStore, uri: str) -> tuple[dict[str, Any] | None, str | None]:
    """(content, None) or (None, why it is missing)."""
    text = files.read_text(uri)
    if text is None:
        return None, "not found"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON (line {exc.lineno}: {exc.msg})"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    return value, None


def _clean(value: Any) -> Any:
    # NaN/inf are not JSON; say so explicitly instead of writing invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_summary(
    run_id: str, run: str, sources: Mapping[str, dict | None], missing: list[str], pipeline: Mapping
) -> dict[str, Any]:
    metrics = sources.get("metrics") or {}
    summary: dict[str, Any] = {key: _clean(metrics.get(key)) for key in HEADLINE_KEYS}
    summary["run_id"] = run_id
    # what promotion compares like with like (see promote.py)
    summary["evaluation"] = metrics.get("evaluation")
    summary["val_accuracy_kind"] = metrics.get("val_accuracy_kind")
    summary["status"] = "complete" if not missing else "incomplete"
    summary["missing"] = missing
    summary["run_uri"] = run
    summary["model_uri"] = join(run, "train", "model")
    summary["metrics_report_uri"] = join(run, "metrics", "report.md")
    preprocess = sources.get("preprocess") or {}
    window = sources.get("window") or {}
    summary["data"] = {
        "documents": preprocess.get("documents"),
        "tokens": preprocess.get("tokens"),
        "vocab_size": preprocess.get("vocab_size"),
        "chars_per_token": preprocess.get("chars_per_token"),
        "embeddings_source": preprocess.get("embeddings_source"),
        "train_windows": (window.get("train") or {}).get("windows"),
        "val_windows": (window.get("val") or {}).get("windows"),
    }
    summary["pipeline"] = dict(pipeline)
    return summary


def headline_table(summary: Mapping[str, Any]) -> str:
    width = max(len(k) for k in HEADLINE_KEYS)
    return "\n".join(f"  {key:<{width}}  {format_value(summary.get(key))}" for key in HEADLINE_KEYS)


def render_report(summary: Mapping[str, Any]) -> str:
    lines = [f"# Run {summary['run_id']}", "", f"Status: **{summary['status']}**", ""]
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {key} | {format_value(summary.get(key))} |" for key in HEADLINE_KEYS]
    lines += ["", "## Data", "", "| figure | value |", "|---|---|"]
    lines += [f"| {key} | {format_value(value)} |" for key, value in summary["data"].items()]
    if summary["missing"]:
        lines += ["", "## Missing", ""]
        lines += [f"- {item}" for item in summary["missing"]]
    lines += [
        "",
        "## Where",
        "",
        f"- model: `{summary['model_uri']}`",
        f"- training report (curves, samples): `{summary['metrics_report_uri']}`",
        "",
    ]
    return "\n".join(lines)


def collect_run(
    files: FileStore, root: str, run_id: str, pipeline: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write the run's summary.json and report.md; return the summary."""
    run = run_dir(root, run_id)
    sources: dict[str, dict | None] = {}
    missing: list[str] = []
    for name, relative in SOURCES.items():
        content, why = _read_json(files, join(run, *relative.split("/")))
        sources[name] = content
        if why:
            missing.append(f"{relative}: {why}")
            log.warning("run %s: %s %s", run_id, relative, why)

    summary = build_summary(run_id, run, sources, missing, pipeline or {})
    summary_uri = join(run, SUMMARY_FILE)
    report_uri = join(run, REPORT_FILE)
    summary["summary_uri"] = summary_uri
    summary["report_uri"] = report_uri
    log.info("run %s (%s):\n%s", run_id, summary["status"], headline_table(summary))
    # Lazy import: keeps matplotlib and pyarrow out of DAG parsing.
    from spark_jobs.reporting.html.render import build_html_report

    html = join(run, "metrics", "report.html")
    files.write_text(html, build_html_report(run, read=files.read_text))
    summary["html_report_uri"] = html
    log.info("summary: %s", summary_uri)
    log.info("report: %s", report_uri)
    if summary["html_report_uri"]:
        log.info("HTML report: %s", html)
    files.write_text(summary_uri, json.dumps(summary, indent=2) + "\n")
    files.write_text(report_uri, render_report(summary))
    return summary
