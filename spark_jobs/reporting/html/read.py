"""Reading what the steps left under one run folder (local or s3://), for report.html.

    artifacts = read_run("output/runs/local")   # -> RunArtifacts; a missing part is None

What is read, relative to the run folder:

    headline figures      metrics/summary.json
    champion comparison   <root>/models/champion.json (and the champion's own summary.json)
    training curves       metrics/steps.jsonl (loss, accuracy, learning rate, gradient norm)
    epochs                metrics/epochs.csv
    sample generations    metrics/samples.json, else the samples section of metrics/report.md
    data distribution     window/data_distribution.json
    Spark                 metrics/spark.json, preprocess/spark.json, window/spark.json
    time per step         preprocess/stats.json, window/(stats|data_distribution).json, summary.json
    cluster and cost      summary.json (collect's, an EMR run's; none for a local run)
    config                code/config.yaml (the run's rendered config) or metrics/config.yaml

Every file goes through a `Reader` (URI -> text, None when missing): spark_jobs.common.storage
by default, Airflow's S3Hook-backed FileStore.read_text in the collect task. A missing or
unreadable file is recorded in `RunArtifacts.missing`, never raised.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spark_jobs.common import storage
from spark_jobs.common.errors import PipelineError
from spark_jobs.common.redact import redact_config_text
from spark_jobs.reporting.summary import CLUSTER_KEYS

log = logging.getLogger(__name__)

# Reads a file's text by URI; None when it is missing. The default goes through
# spark_jobs.common.storage; Airflow's collect task passes its S3Hook-backed reader instead.
Reader = Callable[[str], str | None]
CHAMPION_PATH = ("models", "champion.json")


@dataclass
class RunArtifacts:
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
    # An EMR run's cluster figures (reporting.summary.CLUSTER_KEYS) from collect's <run>/summary.json.
    cluster: dict[str, Any] | None = None
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


def read_run(run_uri: str, read: Reader = read_storage) -> RunArtifacts:
    """Read every file the report uses (through `read`); record which ones are missing."""
    run_uri = storage.normalize(run_uri)

    def at(*parts: str) -> str:
        return storage.join(run_uri, *parts)

    artifacts = RunArtifacts(run_uri=run_uri)
    artifacts.summary = _dict_or_none(_read_json(read, at("metrics", "summary.json")))
    artifacts.steps = _read_jsonl(read, at("metrics", "steps.jsonl"))
    artifacts.epochs = _read_csv(read, at("metrics", "epochs.csv"))
    artifacts.spark = _dict_or_none(_read_json(read, at("metrics", "spark.json")))
    for step in ("preprocess", "window"):
        step_metrics = _dict_or_none(_read_json(read, at(step, "spark.json")))
        if step_metrics is not None:
            artifacts.step_spark[step] = step_metrics
    artifacts.distribution = _dict_or_none(_read_json(read, at("window", "data_distribution.json")))
    artifacts.preprocess_stats = _dict_or_none(_read_json(read, at("preprocess", "stats.json")))
    artifacts.window_stats = _dict_or_none(_read_json(read, at("window", "stats.json")))
    artifacts.samples = parse_samples(_read_json(read, at("metrics", "samples.json")))
    if artifacts.samples is None:
        artifacts.samples = samples_from_markdown(read(at("metrics", "report.md")))
    for source in (at("code", "config.yaml"), at("metrics", "config.yaml"), at("config.yaml")):
        artifacts.config_text = read(source)
        if artifacts.config_text is not None:
            # code/config.yaml is the steps' input and keeps spark.conf's secrets: never show them.
            artifacts.config_text = redact_config_text(artifacts.config_text)
            artifacts.config_source = source
            break
    artifacts.model_config = _dict_or_none(_read_json(read, at("train", "model", "config.json")))
    collected = _dict_or_none(_read_json(read, at("summary.json"))) or {}
    artifacts.cluster = {key: collected[key] for key in CLUSTER_KEYS if key in collected}

    spark_expected: Any = artifacts.spark
    if spark_expected is None and (artifacts.summary or {}).get("strategy") == "single":
        spark_expected = artifacts.step_spark or None  # `single` trains without Spark
    expected = {
        "summary": (artifacts.summary, "metrics/summary.json"),
        "training curves": (artifacts.steps, "metrics/steps.jsonl"),
        "epochs": (artifacts.epochs, "metrics/epochs.csv"),
        "Spark metrics": (spark_expected, "metrics/spark.json"),
        "data distribution": (artifacts.distribution, "window/data_distribution.json"),
        "preprocess stats": (artifacts.preprocess_stats, "preprocess/stats.json"),
        "samples": (artifacts.samples, "metrics/samples.json (or a samples section in metrics/report.md)"),
        "config": (artifacts.config_text, "code/config.yaml or metrics/config.yaml"),
    }
    artifacts.missing = {part: path for part, (value, path) in expected.items() if value is None}
    return artifacts


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


def read_run_summary(root: str, run_id: str, read: Reader = read_storage) -> dict[str, Any] | None:
    """Another run's metrics/summary.json under the same root (the champion's), or None."""
    uri = storage.join(root, "runs", run_id, "metrics", "summary.json")
    return _dict_or_none(_read_json(read, uri))


def finite(value: Any) -> float | None:
    """`value` as a finite float, or None (missing, not a number, NaN or infinite)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
