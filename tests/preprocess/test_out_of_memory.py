"""A worker that runs out of memory: one line naming the step and the partition, exit code 3,
nothing marked complete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spark_jobs.common import storage
from spark_jobs.common.errors import OutOfMemory, names_partition, out_of_memory

# How Spark reports each kind of memory failure to the driver (abridged from real failures).
LOST = "Job aborted due to stage failure: Task 3 in stage 7.0 failed 4 times, most recent failure: Lost task 3.3 in stage 7.0 (TID 41) (10.0.0.5 executor 2): "
FAILURES = {
    "jvm heap": (LOST + "java.lang.OutOfMemoryError: Java heap space", "the JVM ran out of heap"),
    "python worker crashed": (LOST + "org.apache.spark.SparkException: Python worker exited unexpectedly (crashed)",
                              "a Python worker crashed"),
    "oom killer": (LOST + "ExecutorLostFailure (executor 2 exited caused by one of the running tasks) Reason: "
                   "Remote RPC client disassociated. exit code 137", "a worker was killed (exit code 137"),
    "yarn": (LOST + "ExecutorLostFailure Reason: Container killed by YARN for exceeding memory limits. 5.6 GB of "
             "5.5 GB physical memory used.", "YARN killed a container"),
}  # fmt: skip


@pytest.mark.parametrize("kind", FAILURES)
def test_spark_memory_failures_name_the_step_and_the_partition(kind):
    message, cause = FAILURES[kind]
    error = out_of_memory("window", RuntimeError(message))
    assert isinstance(error, OutOfMemory) and error.exit_code == 3
    assert str(error).startswith(f"out of memory in window, partition 3 of stage 7: {cause}")
    assert "spark.executor_memory" in str(error)  # what to change


def test_other_failures_are_left_alone():
    assert out_of_memory("window", RuntimeError(LOST + "java.io.FileNotFoundException: s3://b/k")) is None


def test_a_python_memory_error_in_a_task_names_its_partition():
    def allocate(items):
        yield from items
        raise MemoryError("Unable to allocate 381. MiB")

    with pytest.raises(MemoryError, match=r"^out of memory in preprocess, a partition: Unable to allocate"):
        list(names_partition("preprocess", allocate)(iter([1, 2])))  # outside Spark: no task context
    # the driver reads it back out of Spark's PythonException text
    worker_said = "Traceback ...\nMemoryError: out of memory in preprocess, partition 1 of stage 6: Unable to allocate\n"
    assert str(out_of_memory("preprocess", RuntimeError(worker_said))).startswith(
        "out of memory in preprocess, partition 1 of stage 6: Unable to allocate"
    )


def test_a_line_too_long_for_the_workers_memory_fails_preprocess_in_one_line(tmp_path: Path, repo: Path):
    """A real one: a corpus without line breaks is one segment, which the tokenizer encodes in one
    go; under a Python worker memory limit (spark.executor.pyspark.memory) the worker dies."""
    text = (repo / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8").replace("\n", " ")
    corpus = tmp_path / "one_line.txt"
    corpus.write_text((text * 4)[:4_000_000] + "\n", encoding="utf-8")
    config = {
        "spark": {"master": "local[2]", "conf": {"spark.executor.pyspark.memory": "300m"}},
        "data": {"corpus_path": str(corpus), "tokenizer_sample_chars": 100_000},
        "run": {"root": str(tmp_path / "out"), "id": "oom"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "llm-decoder"), "preprocess", "--config", str(tmp_path / "config.yaml")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: out of memory in preprocess, partition "), last
    assert "a Python worker crashed" in last and "spark.executor.pyspark.memory" in last
    assert not storage.is_complete(storage.step_dir(str(tmp_path / "out"), "oom", "preprocess"))
