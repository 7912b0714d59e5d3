"""How many torch threads a process trains with: the Spark task's cores inside a task."""

from __future__ import annotations

import os

import pytest
import torch

from spark_jobs.training.loop import set_threads, spark_task_cpus


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_a_spark_task_uses_its_cores_and_other_processes_the_config_or_their_share():
    assert set_threads(None, world_size=2, task_cpus=3) == 3 == torch.get_num_threads()
    assert set_threads(4, task_cpus=2) == 2  # inside a task Spark decides the cores
    assert set_threads(4, world_size=2) == 4 == torch.get_num_threads()
    assert set_threads(None, world_size=2) == max(1, (os.cpu_count() or 1) // 2)


def test_spark_task_cpus_is_the_task_cores_in_a_task_and_none_outside(spark):
    assert spark_task_cpus() is None
    task_cpus = int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))
    seen = spark.sparkContext.parallelize([0, 1], 2).map(lambda _: spark_task_cpus()).collect()
    assert seen == [task_cpus, task_cpus]
