"""One self-contained `report.html` per run: what a person reads to judge a training run.

    write_html_report("output/runs/local")   # -> output/runs/local/metrics/report.html

It gathers what the steps left under the run folder (local or s3://) and renders it as a single
HTML file with every plot embedded as a base64 PNG, so it can be mailed, attached to a ticket or
opened from S3 without the files around it:

    headline figures      metrics/summary.json
    champion comparison   <root>/models/champion.json (and the champion's own summary.json)
    training curves       metrics/steps.jsonl (loss, accuracy, learning rate, gradient norm)
    epochs                metrics/epochs.csv
    sample generations    metrics/samples.json, else the samples section of metrics/report.md
    data distribution     window/data_distribution.json
    Spark                 metrics/spark.json (executors, stages, tasks, shuffle)
    time per step         preprocess/stats.json, window/(stats|data_distribution).json, summary.json
    config                code/config.yaml (the run's rendered config) or metrics/config.yaml

A missing or unreadable file never stops the report: its section says which file is missing.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from spark_jobs import storage
from spark_jobs.errors import InputError, PipelineError

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
# Reads a file's text by URI; None when it is missing. The default goes through
# spark_jobs.storage; Airflow's collect task passes its S3Hook-backed reader instead.
Reader = Callable[[str], str | None]
CHAMPION_PATH = ("models", "champion.json")

# The summary figures shown first, in this order; any other scalar keys follow.
HEADLINE_KEYS = [
    "run_id",
    "model_kind",
    "strategy",
    "num_workers",
    "steps",
    "epochs",
    "train_loss",
    "first_val_loss",
    "val_loss",
    "val_accuracy",
    "val_perplexity",
    "val_bits_per_char",
    "tokens_per_s",
    "parameters",
    "wall_s",
]
# Figures compared with the champion, and whether lower is better.
COMPARED = {
    "val_loss": True,
    "val_bits_per_char": True,
    "val_perplexity": True,
    "val_accuracy": False,
    "train_loss": True,
    "tokens_per_s": False,
    "wall_s": True,
}


# --- reading the run's files ----------------------------------------------------------------------


@dataclass
class RunFiles:
    """What was found under one run folder; a part is None when its file is missing."""

    run_uri: str
    summary: dict[str, Any] | None = None
    steps: list[dict[str, Any]] | None = None
    epochs: list[dict[str, str]] | None = None
    spark: dict[str, Any] | None = None
    # The data steps' own Spark metrics: step name -> <run>/<step>/spark.json.
    step_spark: dict[str, dict[str, Any]] = field(default_factory=dict)
    distribution: dict[str, Any] | None = None
    preprocess_stats: dict[str, Any] | None = None
    window_stats: dict[str, Any] | None = None
    samples: list[dict[str, str]] | None = None
    config_text: str | None = None
    config_source: str | None = None
    model_config: dict[str, Any] | None = None
    # The champion's own metrics/summary.json, when the champion is another run.
    champion_summary: dict[str, Any] | None = None
    # part name -> the file(s) we looked for, for the "missing" notes.
    missing: dict[str, str] = field(default_factory=dict)


def root_of(run_uri: str) -> str:
    """<root> of a run folder <root>/runs/<run_id>."""
    return posixpath.dirname(posixpath.dirname(storage.normalize(run_uri)))


def read_storage(uri: str) -> str | None:
    """A file's text, or None when it is missing or unreadable (logged, never raised)."""
    try:
        if not storage.exists(uri):
            return None
        return storage.read_text(uri)
    except (OSError, PipelineError) as exc:
        log.warning("report: cannot read %s: %s", uri, exc)
        return None


def _read_json(read: Reader, uri: str) -> Any:
    text = read(uri)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        log.warning("report: %s is not valid JSON (line %d): %s", uri, exc.lineno, exc.msg)
        return None


def _read_jsonl(read: Reader, uri: str) -> list[dict[str, Any]] | None:
    text = read(uri)
    if text is None:
        return None
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _read_csv(read: Reader, uri: str) -> list[dict[str, str]] | None:
    text = read(uri)
    return None if text is None else list(csv.DictReader(io.StringIO(text)))


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def read_run(run_uri: str, read: Reader = read_storage) -> RunFiles:
    """Read every file the report uses (through `read`); record which ones are missing."""
    run_uri = storage.normalize(run_uri)

    def at(*parts: str) -> str:
        return storage.join(run_uri, *parts)

    files = RunFiles(run_uri=run_uri)
    files.summary = _dict_or_none(_read_json(read, at("metrics", "summary.json")))
    files.steps = _read_jsonl(read, at("metrics", "steps.jsonl"))
    files.epochs = _read_csv(read, at("metrics", "epochs.csv"))
    files.spark = _dict_or_none(_read_json(read, at("metrics", "spark.json")))
    for step in ("preprocess", "window"):
        step_metrics = _dict_or_none(_read_json(read, at(step, "spark.json")))
        if step_metrics is not None:
            files.step_spark[step] = step_metrics
    files.distribution = _dict_or_none(_read_json(read, at("window", "data_distribution.json")))
    files.preprocess_stats = _dict_or_none(_read_json(read, at("preprocess", "stats.json")))
    files.window_stats = _dict_or_none(_read_json(read, at("window", "stats.json")))
    files.samples = parse_samples(_read_json(read, at("metrics", "samples.json")))
    if files.samples is None:
        files.samples = samples_from_markdown(read(at("metrics", "report.md")))
    for source in (at("code", "config.yaml"), at("metrics", "config.yaml"), at("config.yaml")):
        files.config_text = read(source)
        if files.config_text is not None:
            files.config_source = source
            break
    files.model_config = _dict_or_none(_read_json(read, at("train", "model", "config.json")))

    spark_expected: Any = files.spark
    if spark_expected is None and (files.summary or {}).get("strategy") == "single":
        spark_expected = files.step_spark or None  # `single` trains without Spark
    expected = {
        "summary": (files.summary, "metrics/summary.json"),
        "training curves": (files.steps, "metrics/steps.jsonl"),
        "epochs": (files.epochs, "metrics/epochs.csv"),
        "Spark metrics": (spark_expected, "metrics/spark.json"),
        "data distribution": (files.distribution, "window/data_distribution.json"),
        "preprocess stats": (files.preprocess_stats, "preprocess/stats.json"),
        "samples": (files.samples, "metrics/samples.json (or a samples section in metrics/report.md)"),
        "config": (files.config_text, "code/config.yaml or metrics/config.yaml"),
    }
    files.missing = {part: path for part, (value, path) in expected.items() if value is None}
    return files


def parse_samples(raw: Any) -> list[dict[str, str]] | None:
    """Samples as [{prompt, text}] from the shapes samples.json may take."""
    if raw is None:
        return None
    if isinstance(raw, dict):
        if isinstance(raw.get("samples"), list):
            raw = raw["samples"]
        else:  # {prompt: text}
            return [{"prompt": str(k), "text": str(v)} for k, v in raw.items()]
    if not isinstance(raw, list):
        return None
    samples = []
    for item in raw:
        if isinstance(item, str):
            samples.append({"prompt": "", "text": item})
        elif isinstance(item, dict):
            text = next(
                (item[k] for k in ("text", "generated", "completion", "sample", "output") if k in item), ""
            )
            samples.append({"prompt": str(item.get("prompt", "")), "text": str(text)})
    return samples


def samples_from_markdown(markdown: str | None) -> list[dict[str, str]] | None:
    """The body of report.md's samples section (a heading containing 'sample'), as one sample."""
    if not markdown:
        return None
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#") and "sample" in line.lower():
            level = len(line) - len(line.lstrip("#"))
            body = []
            for following in lines[i + 1 :]:
                stripped = following.lstrip("#")
                if following.startswith("#") and len(following) - len(stripped) <= level:
                    break
                body.append(following)
            text = "\n".join(body).strip()
            return [{"prompt": "(from report.md)", "text": text}] if text else None
    return None


def read_champion(root: str, read: Reader = read_storage) -> dict[str, Any] | None:
    """The champion pointer <root>/models/champion.json, or None when no run was promoted yet."""
    return _dict_or_none(_read_json(read, storage.join(root, *CHAMPION_PATH)))


def champion_run_id(champion: dict[str, Any] | None) -> str | None:
    """The champion's run id, from `run_id` or from a `.../runs/<id>/...` URI in the pointer."""
    if not champion:
        return None
    if champion.get("run_id"):
        return str(champion["run_id"])
    for key in ("run_uri", "model_uri", "model_dir", "uri"):
        parts = str(champion.get(key, "")).rstrip("/").split("/")
        if "runs" in parts and parts.index("runs") + 1 < len(parts):
            return parts[parts.index("runs") + 1]
    return None


# --- plots (matplotlib, embedded as data URIs) ------------------------------------------------------


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        x, y = _finite(record.get("step")), _finite(record.get(key))
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
        ("loss", [("train", train, "loss"), ("val", evals, "val_loss")]),
        ("accuracy", [("train", train, "accuracy"), ("val", evals, "val_accuracy")]),
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
        values = [_finite(s.get(key)) or 0.0 for s in stats]
        ax.bar([x + (i - 1) * width for x in range(len(splits))], values, width, label=key)
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylabel("windows per partition")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


# --- HTML pieces --------------------------------------------------------------------------------------


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
    first = [(k, mapping[k]) for k in HEADLINE_KEYS if k in mapping]
    rest = [
        (k, v)
        for k, v in sorted(mapping.items())
        if k not in HEADLINE_KEYS and (v is None or isinstance(v, str | int | float | bool))
    ]
    return first + rest


def summary_section(files: RunFiles) -> str:
    if files.summary is None:
        return _section("summary", "Headline figures", _missing("the run summary", "metrics/summary.json"))
    return _section("summary", "Headline figures", _kv_table(_scalars(files.summary)))


def champion_section(files: RunFiles, champion: dict[str, Any] | None) -> str:
    title = "Champion comparison"
    if champion is None:
        return _section(
            "champion",
            title,
            "<p>No champion yet (<code>models/champion.json</code> not found): "
            "this run becomes the champion when it is promoted.</p>",
        )
    summary = files.summary or {}
    champ_id = champion_run_id(champion)
    this_id = str(summary.get("run_id") or posixpath.basename(files.run_uri))
    # The pointer may hold only the val loss: fill the other figures from the champion's summary.
    figures = {**(files.champion_summary or {}), **champion} if champ_id != this_id else dict(champion)
    if champ_id == this_id:
        verdict = "This run is the champion."
    else:
        ours, theirs = _finite(summary.get("val_loss")), _finite(figures.get("val_loss"))
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
        a, b = _finite(ours), _finite(theirs)
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


def curves_section(files: RunFiles) -> str:
    title = "Training curves"
    if files.steps is None:
        return _section("curves", title, _missing("the per-step metrics", "metrics/steps.jsonl"))
    png = training_curves_png(files.steps)
    body = (
        _img(png, "loss, accuracy, learning rate and gradient norm")
        if png
        else "<p>No steps were logged.</p>"
    )
    if files.epochs:
        columns = list(files.epochs[0].keys())
        rows = [[_number_or_text(row.get(c)) for c in columns] for row in files.epochs]
        body += "<h3>Per epoch</h3>" + _table(columns, rows)
    elif files.epochs is None:
        body += _missing("the per-epoch metrics", "metrics/epochs.csv")
    return _section("curves", title, body)


def _number_or_text(text: str | None) -> Any:
    if text in (None, ""):
        return None
    try:
        return int(text)
    except ValueError:
        number = _finite(text)
        return number if number is not None else text


def samples_section(files: RunFiles) -> str:
    title = "Sample generations"
    if files.samples is None:
        return _section("samples", title, _missing("sample generations", "metrics/samples.json"))
    blocks = []
    for sample in files.samples:
        prompt = html.escape(sample["prompt"])
        text = html.escape(sample["text"])
        blocks.append(f"<div class='sample'><div class='prompt'>{prompt}</div><pre>{text}</pre></div>")
    return _section("samples", title, "".join(blocks) or "<p>No samples.</p>")


def distribution_section(files: RunFiles) -> str:
    title = "Data distribution"
    dist = files.distribution
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
    if files.preprocess_stats:
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
        body += _kv_table([(k, files.preprocess_stats[k]) for k in keys if k in files.preprocess_stats])
    return _section("data", title, body)


def spark_section(files: RunFiles) -> str:
    title = "Spark executors and tasks"
    parts = [(f"{step} step", metrics) for step, metrics in files.step_spark.items()]
    if files.spark is not None:
        parts.append(("train step", files.spark))
    body = ""
    if files.spark is None:
        body += _missing("the Spark metrics of training", "metrics/spark.json")
        if (files.summary or {}).get("strategy") == "single":
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


def pipeline_step_times(files: RunFiles) -> list[tuple[str, float | None, str]]:
    """(step, seconds or None, where the figure comes from) for preprocess, window and train."""
    summary = files.summary or {}
    window_seconds = None
    for source in (files.window_stats, files.distribution):
        if source and _finite(source.get("seconds")) is not None:
            window_seconds = _finite(source["seconds"])
            break
    train_seconds = _finite(summary.get("wall_s"))
    if train_seconds is None:
        train_seconds = _finite(summary.get("train_s"))
    return [
        (
            "preprocess",
            _finite((files.preprocess_stats or {}).get("seconds")),
            "preprocess/stats.json seconds",
        ),
        ("window", window_seconds, "window/stats.json or data_distribution.json seconds"),
        ("train", train_seconds, "metrics/summary.json wall_s"),
    ]


def timing_section(files: RunFiles) -> str:
    title = "Time per pipeline step"
    times = pipeline_step_times(files)
    known = [(name, s) for name, s, _ in times if s is not None]
    rows = [[name, s, "" if s is not None else f"not recorded ({src})"] for name, s, src in times]
    if known:
        rows.append(["total (known steps)", sum(s for _, s in known), ""])
    body = _table(["step", "seconds", "note"], rows)
    if known:
        body = _img(step_times_png(known), "seconds per pipeline step") + body
    return _section("timing", title, body)


def config_section(files: RunFiles) -> str:
    title = "Config used"
    body = ""
    if files.config_text is not None:
        source = posixpath.relpath(files.config_source or "", files.run_uri) if files.config_source else ""
        body += f"<p>From <code>{html.escape(source)}</code>:</p><pre>{html.escape(files.config_text)}</pre>"
    else:
        body += _missing("the run's config", "code/config.yaml or metrics/config.yaml")
    if files.model_config is not None:
        body += "<h3>Model (train/model/config.json)</h3>"
        body += f"<pre>{html.escape(json.dumps(files.model_config, indent=2, sort_keys=True))}</pre>"
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


def render_html(files: RunFiles, champion: dict[str, Any] | None) -> str:
    """The whole report as one HTML string (no external resources)."""
    run_id = (files.summary or {}).get("run_id") or posixpath.basename(files.run_uri)
    sections = [
        summary_section(files),
        champion_section(files, champion),
        curves_section(files),
        samples_section(files),
        distribution_section(files),
        spark_section(files),
        timing_section(files),
        config_section(files),
    ]
    nav = "".join(
        f"<a href='#{a}'>{t}</a>"
        for a, t in [("summary", "Summary"), ("champion", "Champion"), ("curves", "Curves"), ("samples", "Samples"),
                     ("data", "Data"), ("spark", "Spark"), ("timing", "Timing"), ("config", "Config")]
    )  # fmt: skip
    if files.missing:
        items = "".join(
            f"<li>{html.escape(part)}: <code>{html.escape(path)}</code></li>"
            for part, path in files.missing.items()
        )
        missing = f"<div class='missing'><b>Missing parts</b><ul>{items}</ul></div>"
    else:
        missing = ""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>llm-decoder run {html.escape(str(run_id))}</title><style>{_CSS}</style></head><body>"
        f"<h1>Run {html.escape(str(run_id))}</h1>"
        f"<p><code>{html.escape(files.run_uri)}</code> · generated {generated}</p>"
        f"<nav>{nav}</nav>{missing}{''.join(sections)}</body></html>\n"
    )


def build_html_report(
    run_uri: str, champion: dict[str, Any] | None = None, read: Reader = read_storage
) -> str:
    """The report of one run as an HTML string; `champion` None reads <root>/models/champion.json."""
    files = read_run(run_uri, read)
    if champion is None:
        champion = read_champion(root_of(files.run_uri), read)
    champ_id = champion_run_id(champion)
    if champ_id and champ_id != posixpath.basename(files.run_uri):
        summary_uri = storage.join(root_of(files.run_uri), "runs", champ_id, "metrics", "summary.json")
        files.champion_summary = _dict_or_none(_read_json(read, summary_uri))
    if files.missing:
        log.warning("report of %s: missing %s", files.run_uri, ", ".join(files.missing))
    return render_html(files, champion)


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
