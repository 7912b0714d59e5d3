"""Collecting a run's metrics into one run summary and report, on S3 or a local disk.

Reads what the steps wrote (train's metrics/summary.json, preprocess's stats.json, window's
data_distribution.json), writes `<run>/summary.json` and `<run>/report.md` beside them, logs
the headline figures as a table and returns them (the collect task's XCom). A missing or
unreadable file does not stop collection: the summary says which part is missing.

Which figures are headline ones, and their order, is the run-summary contract's
(spark_jobs.reporting.summary, pure Python: this module is imported when the DAGs are parsed).

On EMR (`pipeline["cluster"]` holds the cluster id) it also asks EMR what the cluster used and
writes the contract's cluster figures: instance_hours, cluster_hours and cost_usd_estimate
(llm_decoder_airflow.cost). A local run has no cluster: those figures are absent.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from llm_decoder_airflow.files import FileStore, join, run_dir
from llm_decoder_airflow.settings import EmrSettings
from spark_jobs.reporting.summary import CLUSTER_KEYS, HEADLINE_KEYS, format_value, label_with_unit

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
    if any(summary.get(key) is not None for key in CLUSTER_KEYS):
        lines += ["", "## Cluster and cost (estimate)", "", "| figure | value |", "|---|---|"]
        lines += [f"| {label_with_unit(key)} | {format_value(summary.get(key))} |" for key in CLUSTER_KEYS]
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


def cluster_figures(files: FileStore, cluster_id: str, emr: EmrSettings | None = None) -> dict[str, Any]:
    """The cluster figures of an EMR run (DescribeCluster, ListInstanceGroups), priced with
    emr.prices (configs/emr.yaml when `emr` is None). EMR unreachable: the figures are null and
    cost_basis says why; collection goes on (the training figures do not depend on them)."""
    from airflow.providers.amazon.aws.hooks.emr import EmrHook
    from botocore.exceptions import BotoCoreError, ClientError

    from llm_decoder_airflow.cost import cluster_cost

    if emr is None:
        from llm_decoder_airflow.settings import load_emr_config

        emr = load_emr_config()[1].emr
    client = EmrHook(aws_conn_id=files.aws_conn_id, region_name=files.region_name).conn
    try:
        return cluster_cost(client, cluster_id, emr.prices, emr.prices_taken)
    except (BotoCoreError, ClientError) as error:
        log.warning("cluster %s: its instance hours and cost are not known: %s", cluster_id, error)
        figures: dict[str, Any] = dict.fromkeys(CLUSTER_KEYS)
        figures["cost_basis"] = f"not known: cluster {cluster_id} could not be described ({error})"
        return figures


def collect_run(
    files: FileStore,
    root: str,
    run_id: str,
    pipeline: Mapping[str, Any] | None = None,
    emr: EmrSettings | None = None,
) -> dict[str, Any]:
    """Write the run's summary.json and report.md; return the summary. On EMR (`pipeline`
    names the cluster), with the cluster figures priced from `emr` (None: configs/emr.yaml)."""
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
    cluster_id = (pipeline or {}).get("cluster")
    if cluster_id:
        summary.update(cluster_figures(files, cluster_id, emr))
        log.info("cluster %s: %s", cluster_id, summary["cost_basis"])
    summary_uri = join(run, SUMMARY_FILE)
    report_uri = join(run, REPORT_FILE)
    summary["summary_uri"] = summary_uri
    summary["report_uri"] = report_uri
    log.info("run %s (%s):\n%s", run_id, summary["status"], headline_table(summary))
    # Lazy import: keeps matplotlib and pyarrow out of DAG parsing.
    from spark_jobs.reporting.html.render import build_html_report

    html = join(run, "metrics", "report.html")
    cluster = {key: summary[key] for key in CLUSTER_KEYS if key in summary}
    files.write_text(html, build_html_report(run, read=files.read_text, cluster=cluster))
    summary["html_report_uri"] = html
    log.info("summary: %s", summary_uri)
    log.info("report: %s", report_uri)
    if summary["html_report_uri"]:
        log.info("HTML report: %s", html)
    files.write_text(summary_uri, json.dumps(summary, indent=2) + "\n")
    files.write_text(report_uri, render_report(summary))
    return summary
