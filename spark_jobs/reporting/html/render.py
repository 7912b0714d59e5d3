"""One self-contained `report.html` per run: what a person reads to judge a training run.

    write_html_report("output/runs/local")   # -> output/runs/local/metrics/report.html

It renders what `read.read_run` found under the run folder (local or s3://) as a single HTML
file with every plot embedded as a base64 PNG (`plots`), so it can be mailed, attached to a
ticket or opened from S3 without the files around it. Sections: headline figures, champion
comparison, training curves and epochs, sample generations, data distribution, Spark, time per
pipeline step, config. The headline figures and those compared with the champion come from the
run-summary contract (spark_jobs.reporting.summary).

A missing or unreadable file never stops the report: its section says which file is missing.
"""

from __future__ import annotations

import html
import json
import logging
import math
import posixpath
from datetime import UTC, datetime
from typing import Any

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError
from spark_jobs.reporting.html.plots import partition_rows_png, step_times_png, training_curves_png
from spark_jobs.reporting.html.read import (
    Reader,
    RunArtifacts,
    champion_run_id,
    finite,
    read_champion,
    read_run,
    read_run_summary,
    read_storage,
    root_of,
)
from spark_jobs.reporting.summary import CLUSTER_KEYS, COMPARED, display_order, label_with_unit

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e7 or abs(value) < 1e-3):
            return f"{value:.3e}"
        decimals = 1 if abs(value) >= 100 else 2 if abs(value) >= 10 else 4
        return f"{value:,.{decimals}f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _esc(value: Any) -> str:
    return html.escape(_fmt(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(pairs: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_esc(v)}</td></tr>" for k, v in pairs)
    return f"<table class='kv'><tbody>{rows}</tbody></table>"


def _missing(what: str, path: str) -> str:
    return f"<p class='missing'>Missing: {html.escape(what)} — <code>{html.escape(path)}</code> was not found.</p>"


def _img(data_uri: str, alt: str) -> str:
    return f"<img src='{data_uri}' alt='{html.escape(alt)}'>"


def _section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{body}</section>"


def _scalars(mapping: dict[str, Any]) -> list[tuple[str, Any]]:
    """The scalar entries: the contract's headline figures, its other figures, then the rest by name."""
    return [
        (k, mapping[k])
        for k in display_order(mapping)
        if mapping[k] is None or isinstance(mapping[k], str | int | float | bool)
    ]


def summary_section(run: RunArtifacts) -> str:
    if run.summary is None:
        body = _missing("the run summary", "metrics/summary.json")
    else:
        body = _kv_table(_scalars(run.summary))
    cluster = run.cluster or {}
    if any(cluster.get(key) is not None for key in CLUSTER_KEYS):  # an EMR run
        body += "<h3>Cluster and cost (estimate)</h3>"
        body += _kv_table([(label_with_unit(key), cluster.get(key)) for key in CLUSTER_KEYS])
    return _section("summary", "Headline figures", body)


def champion_section(run: RunArtifacts, champion: dict[str, Any] | None) -> str:
    title = "Champion comparison"
    if champion is None:
        return _section(
            "champion",
            title,
            "<p>No champion yet (<code>models/champion.json</code> not found): "
            "this run becomes the champion when it is promoted.</p>",
        )
    summary = run.summary or {}
    champ_id = champion_run_id(champion)
    this_id = str(summary.get("run_id") or posixpath.basename(run.run_uri))
    # The pointer may hold only the val loss: fill the other figures from the champion's summary.
    figures = {**(run.champion_summary or {}), **champion} if champ_id != this_id else dict(champion)
    if champ_id == this_id:
        verdict = "This run is the champion."
    else:
        ours, theirs = finite(summary.get("val_loss")), finite(figures.get("val_loss"))
        if ours is None or theirs is None:
            verdict = "Cannot compare: a val loss is missing."
        elif ours < theirs:
            verdict = f"This run beats the champion ({champ_id}) on val loss by {theirs - ours:.4f}."
        else:
            verdict = f"The champion ({champ_id}) stays ahead on val loss by {ours - theirs:.4f}."
    rows = []
    for key, lower_is_better in COMPARED.items():
        ours, theirs = summary.get(key), figures.get(key)
        if ours is None and theirs is None:
            continue
        a, b = finite(ours), finite(theirs)
        better = "–"
        if a is not None and b is not None and a != b:
            better = "this run" if (a < b) == lower_is_better else "champion"
        rows.append([key, ours, theirs, better])
    body = f"<p class='verdict'>{html.escape(verdict)}</p>"
    body += _table(["figure", f"this run ({this_id})", f"champion ({champ_id or '?'})", "better"], rows)
    extra = [(k, v) for k, v in champion.items() if k not in COMPARED and isinstance(v, str | int | float)]
    if extra:
        body += "<h3>Champion pointer</h3>" + _kv_table(extra)
    return _section("champion", title, body)


def curves_section(run: RunArtifacts) -> str:
    title = "Training curves"
    if run.steps is None:
        return _section("curves", title, _missing("the per-step metrics", "metrics/steps.jsonl"))
    png = training_curves_png(run.steps)
    body = (
        _img(png, "loss, accuracy, learning rate and gradient norm")
        if png
        else "<p>No steps were logged.</p>"
    )
    if run.epochs:
        columns = list(run.epochs[0].keys())
        rows = [[_number_or_text(row.get(c)) for c in columns] for row in run.epochs]
        body += "<h3>Per epoch</h3>" + _table(columns, rows)
    elif run.epochs is None:
        body += _missing("the per-epoch metrics", "metrics/epochs.csv")
    return _section("curves", title, body)


def _number_or_text(text: str | None) -> Any:
    if text in (None, ""):
        return None
    try:
        return int(text)
    except ValueError:
        number = finite(text)
        return number if number is not None else text


def samples_section(run: RunArtifacts) -> str:
    title = "Sample generations"
    if run.samples is None:
        return _section("samples", title, _missing("sample generations", "metrics/samples.json"))
    blocks = []
    for sample in run.samples:
        prompt = html.escape(sample["prompt"])
        text = html.escape(sample["text"])
        blocks.append(f"<div class='sample'><div class='prompt'>{prompt}</div><pre>{text}</pre></div>")
    return _section("samples", title, "".join(blocks) or "<p>No samples.</p>")


def distribution_section(run: RunArtifacts) -> str:
    title = "Data distribution"
    dist = run.distribution
    if dist is None:
        return _section("data", title, _missing("the data distribution", "window/data_distribution.json"))
    top = [(k, v) for k, v in dist.items() if not isinstance(v, dict | list)]
    rows = []
    for split in ("train", "val"):
        part = dist.get(split)
        if isinstance(part, dict):
            rpp = part.get("rows_per_partition") or {}
            rows.append(
                [split, part.get("windows"), part.get("tokens"), part.get("partitions"),
                 rpp.get("min"), rpp.get("mean"), rpp.get("max"), part.get("skew")]
            )  # fmt: skip
    body = _kv_table(top)
    body += _table(
        ["split", "windows", "tokens", "partitions", "rows/partition min", "mean", "max", "skew (max/mean)"],
        rows,
    )
    png = partition_rows_png(dist)
    if png:
        body += _img(png, "windows per partition")
    if run.preprocess_stats:
        keys = (
            "documents",
            "chars",
            "tokens",
            "vocab_size",
            "chars_per_token",
            "embeddings_source",
            "oov_rate",
        )
        body += "<h3>Corpus (preprocess)</h3>"
        body += _kv_table([(k, run.preprocess_stats[k]) for k in keys if k in run.preprocess_stats])
    return _section("data", title, body)


def spark_section(run: RunArtifacts) -> str:
    title = "Spark executors and tasks"
    parts = [(f"{step} step", metrics) for step, metrics in run.step_spark.items()]
    if run.spark is not None:
        parts.append(("train step", run.spark))
    body = ""
    if run.spark is None:
        body += _missing("the Spark metrics of training", "metrics/spark.json")
        if (run.summary or {}).get("strategy") == "single":
            body += "<p>Expected: the <code>single</code> strategy trains in one process, without Spark.</p>"
    for name, metrics in parts:
        body += f"<h3>{_esc(name)}</h3>" + spark_metrics_html(metrics)
    return _section("spark", title, body)


def spark_metrics_html(spark: dict[str, Any]) -> str:
    """One step's spark.json as tables: executors, stage/task/shuffle figures, task distribution."""
    head = [(k, spark.get(k)) for k in ("source", "spark_version", "master", "app_id", "default_parallelism")]
    body = _kv_table([(k, v) for k, v in head if v is not None])
    executors = spark.get("executors") or []
    if executors:
        columns = [
            ("id", "id"),
            ("cores", "total_cores"),
            ("completed tasks", "completed_tasks"),
            ("failed tasks", "failed_tasks"),
            ("task time ms", "task_time_ms"),
            ("GC ms", "gc_time_ms"),
            ("shuffle read B", "shuffle_read_bytes"),
            ("shuffle write B", "shuffle_write_bytes"),
            ("storage mem used B", "storage_memory_used_bytes"),
            ("peak JVM heap B", "peak_jvm_heap_bytes"),
        ]
        body += "<h4>Executors</h4>"
        body += _table([c for c, _ in columns], [[ex.get(k) for _, k in columns] for ex in executors])
    groups = [(name, spark.get(name)) for name in ("jobs", "stages", "tasks", "shuffle", "io")]
    groups = [(name, g) for name, g in groups if isinstance(g, dict)]
    if groups:
        rows = [
            [name, key, value]
            for name, g in groups
            for key, value in g.items()
            if not isinstance(value, dict)
        ]
        body += "<h4>Stages, tasks, shuffle</h4>" + _table(["group", "figure", "value"], rows)
    dist = spark.get("task_distribution")
    if isinstance(dist, dict):
        rows = []
        for name in ("duration_ms", "gc_time_ms", "scheduler_delay_ms"):
            d = dist.get(name)
            if isinstance(d, dict):
                rows.append([name] + [d.get(k) for k in ("min", "mean", "p50", "p95", "max")])
        if rows:
            body += f"<h4>Task distribution ({_esc(dist.get('sampled'))} tasks)</h4>"
            body += _table(["figure", "min", "mean", "p50", "p95", "max"], rows)
    return body


def pipeline_step_times(run: RunArtifacts) -> list[tuple[str, float | None, str]]:
    """(step, seconds or None, where the figure comes from) for preprocess, window and train."""
    summary = run.summary or {}
    window_seconds = None
    for source in (run.window_stats, run.distribution):
        if source and finite(source.get("seconds")) is not None:
            window_seconds = finite(source["seconds"])
            break
    train_seconds = finite(summary.get("wall_s"))
    if train_seconds is None:
        train_seconds = finite(summary.get("train_s"))
    return [
        (
            "preprocess",
            finite((run.preprocess_stats or {}).get("seconds")),
            "preprocess/stats.json seconds",
        ),
        ("window", window_seconds, "window/stats.json or data_distribution.json seconds"),
        ("train", train_seconds, "metrics/summary.json wall_s"),
    ]


def timing_section(run: RunArtifacts) -> str:
    title = "Time per pipeline step"
    times = pipeline_step_times(run)
    known = [(name, s) for name, s, _ in times if s is not None]
    rows = [[name, s, "" if s is not None else f"not recorded ({src})"] for name, s, src in times]
    if known:
        rows.append(["total (known steps)", sum(s for _, s in known), ""])
    body = _table(["step", "seconds", "note"], rows)
    if known:
        body = _img(step_times_png(known), "seconds per pipeline step") + body
    return _section("timing", title, body)


def config_section(run: RunArtifacts) -> str:
    title = "Config used"
    body = ""
    if run.config_text is not None:
        source = posixpath.relpath(run.config_source or "", run.run_uri) if run.config_source else ""
        body += f"<p>From <code>{html.escape(source)}</code>:</p><pre>{html.escape(run.config_text)}</pre>"
    else:
        body += _missing("the run's config", "code/config.yaml or metrics/config.yaml")
    if run.model_config is not None:
        body += "<h3>Model (train/model/config.json)</h3>"
        body += f"<pre>{html.escape(json.dumps(run.model_config, indent=2, sort_keys=True))}</pre>"
    return _section("config", title, body)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } table.kv th { text-align: left; } td:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.6em 0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; white-space: pre-wrap; }
.missing { color: #a33; background: #fff3f3; padding: 0.5em; border-left: 4px solid #c44; }
.sample .prompt { font-weight: bold; margin-top: 0.8em; } .verdict { font-weight: bold; }
nav a { margin-right: 1em; }
"""


def render_html(run: RunArtifacts, champion: dict[str, Any] | None) -> str:
    """The whole report as one HTML string (no external resources)."""
    run_id = (run.summary or {}).get("run_id") or posixpath.basename(run.run_uri)
    sections = [
        summary_section(run),
        champion_section(run, champion),
        curves_section(run),
        samples_section(run),
        distribution_section(run),
        spark_section(run),
        timing_section(run),
        config_section(run),
    ]
    nav = "".join(
        f"<a href='#{a}'>{t}</a>"
        for a, t in [("summary", "Summary"), ("champion", "Champion"), ("curves", "Curves"), ("samples", "Samples"),
                     ("data", "Data"), ("spark", "Spark"), ("timing", "Timing"), ("config", "Config")]
    )  # fmt: skip
    if run.missing:
        items = "".join(
            f"<li>{html.escape(part)}: <code>{html.escape(path)}</code></li>"
            for part, path in run.missing.items()
        )
        missing = f"<div class='missing'><b>Missing parts</b><ul>{items}</ul></div>"
    else:
        missing = ""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>llm-decoder run {html.escape(str(run_id))}</title><style>{_CSS}</style></head><body>"
        f"<h1>Run {html.escape(str(run_id))}</h1>"
        f"<p><code>{html.escape(run.run_uri)}</code> · generated {generated}</p>"
        f"<nav>{nav}</nav>{missing}{''.join(sections)}</body></html>\n"
    )


def build_html_report(
    run_uri: str,
    champion: dict[str, Any] | None = None,
    read: Reader = read_storage,
    cluster: dict[str, Any] | None = None,
) -> str:
    """The report of one run as an HTML string; `champion` None reads <root>/models/champion.json.

    `cluster`: the run's cluster figures (collect passes them before it writes <run>/summary.json);
    None reads them from <run>/summary.json."""
    run = read_run(run_uri, read)
    if cluster is not None:
        run.cluster = dict(cluster)
    if champion is None:
        champion = read_champion(root_of(run.run_uri), read)
    champ_id = champion_run_id(champion)
    if champ_id and champ_id != posixpath.basename(run.run_uri):
        run.champion_summary = read_run_summary(root_of(run.run_uri), champ_id, read)
    if run.missing:
        log.warning("report of %s: missing %s", run.run_uri, ", ".join(run.missing))
    return render_html(run, champion)


def write_html_report(
    run_uri: str, out_uri: str | None = None, champion: dict[str, Any] | None = None
) -> str:
    """Write <run>/metrics/report.html (or `out_uri`); returns where it was written.

    `champion`: the champion pointer to compare with; None reads <root>/models/champion.json.
    """
    run_uri = storage.normalize(run_uri)
    if not storage.is_dir(run_uri):
        raise InputError(f"run folder not found: {run_uri}")
    out_uri = storage.normalize(out_uri) if out_uri else storage.join(run_uri, "metrics", REPORT_NAME)
    storage.write_text(out_uri, build_html_report(run_uri, champion))
    log.info("report written: %s", out_uri)
    return out_uri
