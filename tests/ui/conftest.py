"""Fake but realistic runs for the report and `runs` tests, written with the project's own writers
(MetricsWriter, the Spark metrics summaries, the window partition stats), so the files have
exactly the shape the pipeline writes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from spark_jobs.common import storage
from spark_jobs.data.windows import partition_stats
from spark_jobs.reporting.spark_metrics import (
    summarize_executors,
    summarize_stages,
    summarize_tasks,
    write_spark_metrics,
)
from spark_jobs.reporting.train_metrics import MetricsWriter, write_run_summary

SAMPLE_TEXT = "ROMEO:\nWhat light through yonder window breaks?"


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def make_run(root: Path, run_id: str, val_loss: float, *, spark: bool = True, steps: int = 40) -> Path:
    """A finished run under <root>/runs/<run_id> with every file the report reads."""
    run = root / "runs" / run_id
    for step in ("preprocess", "window", "train"):
        (run / step).mkdir(parents=True, exist_ok=True)
        (run / step / storage.SUCCESS_MARKER).write_text("")
    _write_json(
        run / "preprocess" / "stats.json",
        {"documents": 1, "chars": 40_000, "tokens": 12_345, "vocab_size": 512, "chars_per_token": 3.24,
         "embeddings_source": "word2vec", "oov_rate": 0.0, "seconds": 12.5},
    )  # fmt: skip
    _write_json(
        run / "window" / "data_distribution.json",
        {"window_size": 32, "stride": 4, "split_by": "document", "valid_split": 0.1, "chars_per_token": 3.24,
         "train": {"windows": 2770, "tokens": 11_110, **partition_stats([1000, 1000, 770])},
         "val": {"windows": 300, "tokens": 1235, **partition_stats([300])}},
    )  # fmt: skip

    metrics = MetricsWriter(str(run / "metrics"))
    first_val = val_loss + 2.0
    for step in range(1, steps + 1):
        loss = val_loss + 2.5 * math.exp(-step / 10)
        metrics.log_step(
            {"kind": "train", "step": step, "epoch": 0, "loss": loss, "accuracy": 0.5 - loss / 20,
             "lr": 1e-3 * min(1.0, step / 10), "grad_norm": 2.0 / step, "step_s": 0.05, "tokens_per_s": 9000.0}
        )  # fmt: skip
        if step % 20 == 0 or step == 1:
            eval_loss = first_val if step == 1 else val_loss + 2.0 * math.exp(-step / 10)
            metrics.log_step(
                {"kind": "eval", "step": step, "epoch": 0, "val_loss": eval_loss, "val_accuracy": 0.3}
            )
    metrics.log_epoch(
        {"epoch": 0, "step": steps, "train_loss": val_loss + 0.1, "train_accuracy": 0.33, "val_loss": val_loss,
         "val_accuracy": 0.31, "val_perplexity": math.exp(val_loss), "val_bits_per_char": 0.9, "epoch_s": 2.0}
    )  # fmt: skip
    metrics.flush()
    write_run_summary(
        str(run / "metrics"),
        {"run_id": run_id, "model_kind": "gpt", "strategy": "ddp", "num_workers": 2, "steps": steps,
         "epochs": 1, "train_loss": val_loss + 0.1, "val_loss": val_loss, "first_val_loss": first_val,
         "val_accuracy": 0.3125, "val_bits_per_char": 0.875, "tokens_per_s": 9123.4, "wall_s": 61.5,
         "parameters": 123_456}
    )  # fmt: skip
    _write_json(run / "metrics" / "samples.json", [{"prompt": "ROMEO:", "text": SAMPLE_TEXT, "seed": 1337}])
    if spark:
        executors = [{"id": "driver", "totalCores": 2, "completedTasks": 17, "failedTasks": 1, "totalDuration": 4321,
                      "totalGCTime": 55, "memoryUsed": 1024, "maxMemory": 2**30}]  # fmt: skip
        stages = [{"stageId": 0, "attemptId": 0, "status": "COMPLETE", "numCompleteTasks": 17,
                   "numFailedTasks": 1, "executorRunTime": 4000, "jvmGcTime": 55}]  # fmt: skip
        tasks = [
            {"duration": d, "executorId": "driver", "taskMetrics": {"jvmGcTime": 3}} for d in (100, 200, 300)
        ]
        write_spark_metrics(
            {"source": "status_store", "spark_version": "3.5.6", "master": "local[2]",
             "executors": summarize_executors(executors), **summarize_stages(stages),
             "task_distribution": summarize_tasks(tasks)},
            str(run / "metrics"),
        )  # fmt: skip
    (run / "code").mkdir(exist_ok=True)
    (run / "code" / "config.yaml").write_text(
        f"run:\n  id: {run_id}\nmodel:\n  kind: gpt\n", encoding="utf-8"
    )
    return run


@pytest.fixture()
def make_fake_run() -> Callable[..., Path]:
    return make_run


@pytest.fixture()
def fake_run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "root", "run-a", val_loss=1.875)


@pytest.fixture()
def moto_s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A moto S3 server on 127.0.0.1 with one bucket; s3://bucket/prefix."""
    import boto3

    monkeypatch.setenv("AWS_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="reports")
    return "s3://reports/prefix"
