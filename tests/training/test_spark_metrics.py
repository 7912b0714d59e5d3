"""Spark metrics: the pure summaries of REST-shaped JSON, then real jobs on the local session."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from spark_jobs.reporting import spark_metrics
from spark_jobs.reporting.spark_metrics import collect_spark_metrics, write_spark_metrics


def test_stage_totals_rates_and_units() -> None:
    stages = [
        {"status": "COMPLETE", "numCompleteTasks": 4, "numFailedTasks": 0, "numKilledTasks": 0,
         "executorRunTime": 800, "executorCpuTime": 500_000_000, "jvmGcTime": 40,
         "shuffleReadBytes": 0, "shuffleWriteBytes": 4016},
        {"status": "FAILED", "numCompleteTasks": 2, "numFailedTasks": 2, "numKilledTasks": 0,
         "executorRunTime": 200, "executorCpuTime": 100_000_000, "jvmGcTime": 10,
         "shuffleReadBytes": 4016, "shuffleWriteBytes": 0},
    ]  # fmt: skip
    summary = spark_metrics.summarize_stages(stages)
    assert summary["stages"] == {"count": 2, "complete": 1, "failed": 1}
    assert summary["tasks"]["count"] == 8 and summary["tasks"]["failed"] == 2
    assert summary["tasks"]["failure_rate"] == pytest.approx(0.25)
    assert summary["tasks"]["executor_cpu_time_ms"] == pytest.approx(600.0)  # from nanoseconds
    assert summary["tasks"]["gc_fraction"] == pytest.approx(50 / 1000)
    assert summary["shuffle"]["read_bytes"] == summary["shuffle"]["write_bytes"] == 4016
    assert spark_metrics.summarize_stages([])["tasks"]["failure_rate"] == 0.0


def test_distributions_partitions_and_executors() -> None:
    dist = spark_metrics.distribution([1, 2, 3, 10])
    assert (dist["min"], dist["max"], dist["mean"], dist["total"], dist["p50"]) == (1, 10, 4, 16, 2.5)
    assert spark_metrics.distribution([])["max"] == 0.0

    parts = spark_metrics.partition_rows_summary([100, 100, 200])
    assert parts["count"] == 3 and parts["rows_per_partition"]["max"] == 200
    assert parts["skew"] == pytest.approx(200 / (400 / 3))

    (row,) = spark_metrics.summarize_executors(
        [{"id": "1", "memoryUsed": 10, "maxMemory": 100, "totalGCTime": 7, "failedTasks": 1,
          "peakMemoryMetrics": {"JVMHeapMemory": 5000}}]
    )  # fmt: skip
    assert row["storage_memory_max_bytes"] == 100 and row["gc_time_ms"] == 7 and row["failed_tasks"] == 1
    assert row["peak_jvm_heap_bytes"] == 5000 and row["shuffle_read_bytes"] == 0


def test_a_shuffle_and_a_cached_rdd_are_measured(spark, tmp_path: Path) -> None:
    sc = spark.sparkContext
    group = f"metrics-{uuid.uuid4().hex[:6]}"
    sc.setJobGroup(group, "spark metrics test")
    try:
        pairs = sc.parallelize(range(4000), 4).map(lambda x: (x % 13, x)).setName("pairs").cache()
        assert pairs.count() == 4000
        assert pairs.groupByKey().mapValues(len).count() == 13
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)

    figures = collect_spark_metrics(spark, job_group=group, partition_rows=[1000] * 4)
    assert figures["source"] == "status_store"  # works with the UI disabled
    assert figures["jobs"] == {"count": 2, "by_status": {"SUCCEEDED": 2}}
    # count: 4 tasks; groupByKey: 4 map-side tasks, then the reduce side
    assert figures["tasks"]["count"] == figures["task_distribution"]["sampled"] >= 8
    assert figures["tasks"]["failed"] == 0 and figures["tasks"]["executor_run_time_ms"] > 0
    assert figures["shuffle"]["write_bytes"] == figures["shuffle"]["read_bytes"] > 0
    assert figures["shuffle"]["write_records"] == figures["shuffle"]["read_records"] > 0
    assert figures["task_distribution"]["duration_ms"]["max"] > 0
    assert figures["executors"] and figures["executors"][0]["storage_memory_max_bytes"] > 0
    (cached,) = [r for r in figures["cached_rdds"] if r["name"] == "pairs"]
    assert cached["partitions"] == cached["cached_partitions"] == 4
    assert cached["partition_bytes"]["total"] == cached["memory_bytes"] > 0
    assert figures["partitions"]["skew"] == 1.0
    pairs.unpersist()

    uri = write_spark_metrics(figures, str(tmp_path / "metrics"))
    assert json.loads(Path(uri).read_text())["tasks"]["count"] == figures["tasks"]["count"]


def test_failed_tasks_are_counted(spark) -> None:
    sc = spark.sparkContext
    group = f"failing-{uuid.uuid4().hex[:6]}"

    def explode(x: int) -> int:
        if x == 3:
            raise ValueError("boom")
        return x

    sc.setJobGroup(group, "a job that fails")
    try:
        with pytest.raises(Exception, match="boom"):
            sc.parallelize(range(4), 2).map(explode).collect()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)

    figures = collect_spark_metrics(spark, job_group=group)
    assert figures["jobs"]["by_status"] == {"FAILED": 1}
    assert figures["tasks"]["failed"] >= 1 and figures["tasks"]["failure_rate"] > 0
    assert figures["stages"]["failed"] == 1


def test_status_tracker_fallback_counts_tasks(spark) -> None:
    sc = spark.sparkContext
    group = f"tracker-{uuid.uuid4().hex[:6]}"
    sc.setJobGroup(group, "tracker")
    try:
        sc.parallelize(range(10), 3).count()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    stage_ids, _ = spark_metrics._stage_ids_of_group(spark, group)
    counts = spark_metrics._tracker_only(spark, stage_ids)
    assert counts["tasks"] == {"count": 3, "completed": 3, "failed": 0, "failure_rate": 0.0}
