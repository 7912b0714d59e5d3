"""Errors a user can fix. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any


class PipelineError(Exception):
    """Bad input or state that the user can fix; the message names the culprit."""

    exit_code = 2


class ConfigError(PipelineError):
    """The configuration file or a --set override is invalid."""


class InputError(PipelineError):
    """An input (corpus, tokenizer, embeddings, a previous step's output) is missing or invalid."""


class TrainingError(PipelineError):
    """Training cannot continue (e.g. the loss became NaN)."""


class OutOfMemory(PipelineError):
    """A Spark task ran out of memory; the message names the step and the partition."""

    exit_code = 3


# What a Spark failure says when a task ran out of memory: a Python worker's MemoryError named
# by `names_partition` below, the JVM's own, or a worker process killed or crashed (the Rust
# tokenizer aborts on a failed allocation, the kernel's OOM killer sends SIGKILL, YARN kills a
# container over its limit).
_NAMED_IN_WORKER = re.compile(r"MemoryError: (out of memory in .+)")
_LOST_TASK = re.compile(r"Lost task (\d+)\.\d+ in stage (\d+)\.\d+")
_MEMORY_SIGNS = {
    "java.lang.OutOfMemoryError": "the JVM ran out of heap",
    "MemoryError": "Python ran out of memory",
    "Python worker exited unexpectedly (crashed)": "a Python worker crashed (most often: out of memory)",
    "exit code 137": "a worker was killed (exit code 137: most often the kernel's out-of-memory killer)",
    "exceeding memory limits": "YARN killed a container over its memory limit",
}
MEMORY_ADVICE = (
    "give the workers more memory (spark.executor_memory, spark.driver_memory in local mode, "
    "spark.conf spark.executor.pyspark.memory) or make partitions smaller "
    "(spark.target_partition_size, data.read_block_bytes; a corpus without line breaks cannot be cut)"
)


def out_of_memory(step: str, failure: BaseException) -> OutOfMemory | None:
    """The one-line OutOfMemory for a Spark failure caused by memory, naming the step and the
    partition (the lost task's index in its stage); None for any other failure."""
    text = str(failure)
    named = _NAMED_IN_WORKER.search(text)
    if named:
        return OutOfMemory(f"{named.group(1)}; {MEMORY_ADVICE}")
    cause = next((why for sign, why in _MEMORY_SIGNS.items() if sign in text), None)
    if cause is None:
        return None
    lost = _LOST_TASK.search(text)
    where = f"partition {lost.group(1)} of stage {lost.group(2)}" if lost else "a Spark task"
    return OutOfMemory(f"out of memory in {step}, {where}: {cause}; {MEMORY_ADVICE}")


@contextlib.contextmanager
def memory_failures_named(step: str) -> Iterator[None]:
    """Turn a Spark failure caused by memory into OutOfMemory (one line, exit code 3)."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        named = out_of_memory(step, exc)
        if named is None:
            raise
        raise named from exc


def names_partition(
    step: str, fn: Callable[[Iterator[Any]], Iterator[Any]]
) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """`fn` over one partition (mapInArrow, mapPartitions) whose MemoryError names the step and
    the partition, for the driver's `out_of_memory`."""

    def guarded(items: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from fn(items)
        except MemoryError as exc:
            from pyspark import TaskContext

            task = TaskContext.get()
            where = f"partition {task.partitionId()} of stage {task.stageId()}" if task else "a partition"
            raise MemoryError(f"out of memory in {step}, {where}: {exc or 'an allocation failed'}") from None

    return guarded
