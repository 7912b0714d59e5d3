"""What Spark itself measured while we trained: executors, tasks, GC, shuffle, partitions.

Where the figures come from, best first (the first that answers wins; `source` says which):

1. `status_store`: the driver JVM's AppStatusStore, read through py4j and serialised by
   Jackson into exactly the JSON the REST API `/api/v1` serves. It is filled by Spark's own
   listener whether or not the web UI runs, so it works in local mode, where our session
   builder disables the UI (`spark.ui.enabled=false`). It is a `private[spark]` API: if a
   Spark version changes it, we fall through to 2 or 3.
2. `rest_api`: `GET <uiWebUrl>/api/v1/applications/<app>/...` when the UI is enabled (EMR, or
   a session started with `spark.ui.enabled=true`). Same JSON, public and stable.
3. `status_tracker`: `sc.statusTracker()` only: job/stage/task counts and failed tasks; no
   times, GC, memory or shuffle (those keys are then absent).

Executor figures (memory, GC, totals) cover the whole application; job, stage, task and
shuffle figures cover the stages of `job_group` when one is given (the trainer sets its job
group), otherwise every stage the store still retains (`spark.ui.retainedStages`).
In local mode the only executor is the driver, and peak-memory metrics stay 0 unless
`spark.executor.processTreeMetrics.enabled` is set: the trainer's own RSS metrics cover that.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Per-task durations are read for at most this many tasks (the most recent stages first).
MAX_TASKS = 20_000


# --- pure summaries of REST-shaped JSON -------------------------------------------------------


def distribution(values: Sequence[float]) -> dict[str, float]:
    """min / mean / p50 / p95 / max / total of a list of numbers (zeros when empty)."""
    if not values:
        return {"min": 0.0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0, "total": 0.0}
    array = np.asarray(values, dtype=np.float64)
    return {
        "min": float(array.min()),
        "mean": float(array.mean()),
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "max": float(array.max()),
        "total": float(array.sum()),
    }


def summarize_executors(executors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The memory, GC and task figures of each executor (REST `allexecutors` entries)."""
    rows = []
    for ex in executors:
        peak = ex.get("peakMemoryMetrics") or {}
        rows.append(
            {
                "id": ex["id"],
                "is_active": ex.get("isActive", True),
                "total_cores": ex.get("totalCores", 0),
                "storage_memory_used_bytes": ex.get("memoryUsed", 0),
                "storage_memory_max_bytes": ex.get("maxMemory", 0),
                "disk_used_bytes": ex.get("diskUsed", 0),
                "completed_tasks": ex.get("completedTasks", 0),
                "failed_tasks": ex.get("failedTasks", 0),
                "task_time_ms": ex.get("totalDuration", 0),
                "gc_time_ms": ex.get("totalGCTime", 0),
                "shuffle_read_bytes": ex.get("totalShuffleRead", 0),
                "shuffle_write_bytes": ex.get("totalShuffleWrite", 0),
                "peak_jvm_heap_bytes": peak.get("JVMHeapMemory", 0),
                "peak_python_rss_bytes": peak.get("ProcessTreePythonRSSMemory", 0),
            }
        )
    return rows


def summarize_stages(stages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over stages (REST `stages` entries): task counts, times, GC, shuffle, I/O."""

    def total(key: str) -> int:
        return int(sum(s.get(key, 0) or 0 for s in stages))

    tasks = total("numCompleteTasks") + total("numFailedTasks") + total("numKilledTasks")
    run_ms = total("executorRunTime")
    gc_ms = total("jvmGcTime")
    return {
        "stages": {
            "count": len(stages),
            "complete": sum(1 for s in stages if s.get("status") == "COMPLETE"),
            "failed": sum(1 for s in stages if s.get("status") == "FAILED"),
        },
        "tasks": {
            "count": tasks,
            "completed": total("numCompleteTasks"),
            "failed": total("numFailedTasks"),
            "killed": total("numKilledTasks"),
            "failure_rate": total("numFailedTasks") / tasks if tasks else 0.0,
            "executor_run_time_ms": run_ms,
            "executor_cpu_time_ms": total("executorCpuTime") / 1e6,  # Spark reports ns
            "deserialize_time_ms": total("executorDeserializeTime"),
            "result_serialization_time_ms": total("resultSerializationTime"),
            "gc_time_ms": gc_ms,
            "gc_fraction": gc_ms / run_ms if run_ms else 0.0,
        },
        "shuffle": {
            "read_bytes": total("shuffleReadBytes"),
            "read_records": total("shuffleReadRecords"),
            "write_bytes": total("shuffleWriteBytes"),
            "write_records": total("shuffleWriteRecords"),
            "spilled_memory_bytes": total("memoryBytesSpilled"),
            "spilled_disk_bytes": total("diskBytesSpilled"),
        },
        "io": {
            "input_bytes": total("inputBytes"),
            "input_records": total("inputRecords"),
            "output_bytes": total("outputBytes"),
            "result_bytes": total("resultSize"),
        },
    }


def summarize_tasks(tasks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Distributions over individual tasks (REST `taskList` entries)."""
    durations = [t["duration"] for t in tasks if t.get("duration") is not None]
    metrics = [t.get("taskMetrics") or {} for t in tasks]
    return {
        "sampled": len(tasks),
        "duration_ms": distribution(durations),
        "gc_time_ms": distribution([m.get("jvmGcTime", 0) for m in metrics]),
        "scheduler_delay_ms": distribution([t.get("schedulerDelay", 0) for t in tasks]),
        "per_executor": _count_by(t.get("executorId", "?") for t in tasks),
    }


def summarize_rdds(rdds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Cached RDDs (REST `storage/rdd/<id>` entries): partition counts and sizes."""
    rows = []
    for rdd in rdds:
        sizes = [p.get("memoryUsed", 0) + p.get("diskUsed", 0) for p in rdd.get("partitions") or []]
        rows.append(
            {
                "id": rdd["id"],
                "name": rdd.get("name", ""),
                "partitions": rdd.get("numPartitions", 0),
                "cached_partitions": rdd.get("numCachedPartitions", 0),
                "memory_bytes": rdd.get("memoryUsed", 0),
                "disk_bytes": rdd.get("diskUsed", 0),
                "partition_bytes": distribution(sizes),
            }
        )
    return rows


def partition_rows_summary(rows: Sequence[int]) -> dict[str, Any]:
    """Rows per partition of a dataset we partitioned ourselves: count, spread, skew."""
    dist = distribution(rows)
    return {
        "count": len(rows),
        "rows": list(rows),
        "rows_per_partition": {k: dist[k] for k in ("min", "mean", "max")},
        "skew": dist["max"] / dist["mean"] if dist["mean"] else 0.0,
    }


def _count_by(keys: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return counts


# --- where the JSON comes from ------------------------------------------------------------------


class _StatusStore:
    """The driver JVM's AppStatusStore, as REST-shaped JSON (works with the UI disabled)."""

    name = "status_store"

    def __init__(self, spark: SparkSession) -> None:
        sc = spark.sparkContext
        jvm = sc._jvm
        self._gateway = sc._gateway
        self._store = sc._jsc.sc().statusStore()
        self._mapper = jvm.com.fasterxml.jackson.databind.ObjectMapper()
        scala_module = getattr(jvm.com.fasterxml.jackson.module.scala, "DefaultScalaModule$")
        self._mapper.registerModule(scala_module.__getattr__("MODULE$"))

    def _json(self, value: Any) -> Any:
        return json.loads(self._mapper.writeValueAsString(value))

    def executors(self) -> list[dict]:
        return self._json(self._store.executorList(False))

    def stages(self) -> list[dict]:
        jvm = self._gateway.jvm
        no_quantiles = self._gateway.new_array(jvm.double, 0)
        # stageList(statuses, details, withSummaries, quantiles, taskStatus): Scala defaults
        # are invisible to py4j, so every argument is spelled out; empty lists = all.
        stages = self._store.stageList(
            jvm.java.util.ArrayList(), False, False, no_quantiles, jvm.java.util.ArrayList()
        )
        return self._json(stages)

    def tasks(self, stage_id: int, attempt: int, limit: int) -> list[dict]:
        return self._json(self._store.taskList(stage_id, attempt, limit))

    def rdds(self) -> list[dict]:
        return [self._json(self._store.rdd(r["id"])) for r in self._json(self._store.rddList(True))]


class _RestApi:
    """The Spark UI's REST API (`/api/v1`), when the UI is running."""

    name = "rest_api"

    def __init__(self, spark: SparkSession) -> None:
        sc = spark.sparkContext
        if not sc.uiWebUrl:
            raise RuntimeError("the Spark UI is disabled")
        self._base = f"{sc.uiWebUrl.rstrip('/')}/api/v1/applications/{sc.applicationId}"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self._base}/{path}", timeout=10) as response:
            return json.loads(response.read())

    def executors(self) -> list[dict]:
        return self._get("allexecutors")

    def stages(self) -> list[dict]:
        return self._get("stages")

    def tasks(self, stage_id: int, attempt: int, limit: int) -> list[dict]:
        return self._get(f"stages/{stage_id}/{attempt}/taskList?length={limit}")

    def rdds(self) -> list[dict]:
        return [self._get(f"storage/rdd/{r['id']}") for r in self._get("storage/rdd")]


def _stage_ids_of_group(spark: SparkSession, job_group: str) -> tuple[set[int], dict[str, int]]:
    tracker = spark.sparkContext.statusTracker()
    stage_ids: set[int] = set()
    job_states: dict[str, int] = {}
    for job_id in tracker.getJobIdsForGroup(job_group):
        info = tracker.getJobInfo(job_id)
        if info is None:  # forgotten (spark.ui.retainedJobs)
            continue
        stage_ids.update(int(s) for s in info.stageIds)
        job_states[str(info.status)] = job_states.get(str(info.status), 0) + 1
    return stage_ids, job_states


def _tracker_only(spark: SparkSession, stage_ids: set[int] | None) -> dict[str, Any]:
    """Counts the public status tracker still knows (its stage infos are only for live stages)."""
    tracker = spark.sparkContext.statusTracker()
    infos = [tracker.getStageInfo(s) for s in sorted(stage_ids or [])]
    infos = [i for i in infos if i is not None]
    tasks = sum(i.numTasks for i in infos)
    failed = sum(i.numFailedTasks for i in infos)
    return {
        "stages": {"count": len(infos)},
        "tasks": {
            "count": tasks,
            "completed": sum(i.numCompletedTasks for i in infos),
            "failed": failed,
            "failure_rate": failed / tasks if tasks else 0.0,
        },
    }


def collect_spark_metrics(
    spark: SparkSession,
    job_group: str | None = None,
    partition_rows: Sequence[int] | None = None,
    max_tasks: int = MAX_TASKS,
) -> dict[str, Any]:
    """Spark's view of the application (or of `job_group`'s jobs) as one JSON-able dict.

    `partition_rows`: rows per partition of the data the job trained on, when the caller knows
    it (Spark's own partition sizes are those of cached RDDs, in bytes).
    """
    sc = spark.sparkContext
    result: dict[str, Any] = {
        "app_id": sc.applicationId,
        "spark_version": sc.version,
        "master": sc.master,
        "default_parallelism": sc.defaultParallelism,
        "ui_url": sc.uiWebUrl,
        "job_group": job_group,
    }
    stage_ids: set[int] | None = None
    if job_group is not None:
        stage_ids, job_states = _stage_ids_of_group(spark, job_group)
        result["jobs"] = {"count": sum(job_states.values()), "by_status": job_states}

    source = None
    for source_class in (_StatusStore, _RestApi):
        try:
            source = source_class(spark)
            executors = source.executors()
            stages = source.stages()
            break
        except Exception as exc:  # noqa: BLE001 - an unavailable source just means "try the next"
            log.debug("spark metrics: %s unavailable: %s", source_class.name, exc)
            source = None

    if source is None:
        result["source"] = "status_tracker"
        result.update(_tracker_only(spark, stage_ids))
    else:
        result["source"] = source.name
        if stage_ids is not None:
            stages = [s for s in stages if s["stageId"] in stage_ids]
        result.update(summarize_stages(stages))
        result["executors"] = summarize_executors(executors)
        result["task_distribution"] = summarize_tasks(_recent_tasks(source, stages, max_tasks))
        result["cached_rdds"] = summarize_rdds(source.rdds())
    if partition_rows is not None:
        result["partitions"] = partition_rows_summary(partition_rows)
    return result


def _recent_tasks(
    source: _StatusStore | _RestApi, stages: Sequence[Mapping[str, Any]], limit: int
) -> list[dict]:
    tasks: list[dict] = []
    for stage in sorted(stages, key=lambda s: (s["stageId"], s["attemptId"]), reverse=True):
        if len(tasks) >= limit:
            break
        tasks.extend(source.tasks(stage["stageId"], stage["attemptId"], limit - len(tasks)))
    return tasks


def write_spark_metrics(metrics: Mapping[str, Any], metrics_dir: str) -> str:
    """Write `<metrics_dir>/spark.json` (local or s3://); returns its URI."""
    from spark_jobs.common import finite_json, storage

    uri = storage.join(metrics_dir, "spark.json")
    # Spark's own figures may hold a NaN (a ratio over nothing): null, with the reason.
    text = finite_json.dumps(
        finite_json.with_nulls(dict(metrics)), uri, indent=2, sort_keys=True, default=str
    )
    storage.write_text(uri, text)
    return uri


def spark_metrics_or_none(
    spark: SparkSession, job_group: str | None = None, partition_rows: Sequence[int] | None = None
) -> dict[str, Any] | None:
    """`collect_spark_metrics`, or None when Spark cannot say: metrics never fail a finished run."""
    try:
        return collect_spark_metrics(spark, job_group=job_group, partition_rows=partition_rows)
    except Exception as exc:  # noqa: BLE001 - metrics are a by-product
        log.warning("could not collect Spark metrics for %s: %s", job_group or "the application", exc)
        return None


def record_step_metrics(spark: SparkSession, job_group: str, out_dir: str) -> str | None:
    """Write `<out_dir>/spark.json` for one Spark step's jobs; never fails the step."""
    figures = spark_metrics_or_none(spark, job_group=job_group)
    return write_spark_metrics(figures, out_dir) if figures is not None else None
