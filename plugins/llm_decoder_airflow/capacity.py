"""Can the cluster run the training step's barrier stage? Checked when a run is staged.

A strategy that trains on executors (ddp with `ddp_local_mode: false`, parameter_averaging)
starts `training.num_workers` tasks at once, one executor each. When YARN cannot place that
many executors, the barrier stage waits for them until the step sensor's timeout: hours of a
billed cluster for nothing. So `stage` refuses the run up front, with one line that names the
fields to change.

Slots = for each node group (core, and task nodes if any): nodes × executors per node, where
executors per node = min(vCPUs // spark.executor_cores, YARN memory // executor container).
"""

from __future__ import annotations

import logging
import math
import re

from llm_decoder_airflow.settings import EmrSettings
from spark_jobs.common.config import PipelineConfig
from spark_jobs.common.errors import ConfigError
from spark_jobs.common.instances import INSTANCE_TYPES, Instance

log = logging.getLogger(__name__)


_UNITS_MIB = {"b": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2, "p": 1024**3}
# Spark adds max(384 MiB, 10 %) of overhead (off-heap, the Python workers) to each executor.
_OVERHEAD_FACTOR, _OVERHEAD_MIN_MIB = 0.10, 384


def trains_on_executors(config: PipelineConfig) -> bool:
    """True when the train step's workers are barrier tasks on executors, not processes on the driver."""
    training = config.training
    return training.strategy == "parameter_averaging" or (
        training.strategy == "ddp" and not training.ddp_local_mode
    )


def memory_mib(size: str) -> int:
    """A Spark memory size ("512m", "8g", "1024"; a bare number is MiB) in MiB."""
    number, unit = re.match(r"^([0-9]+)([a-z]?)", size.lower()).groups()
    return math.ceil(int(number) * _UNITS_MIB[unit or "m"])


def yarn_memory_mib(instance: Instance) -> int:
    """About what EMR gives YARN on a node (yarn.nodemanager.resource.memory-mb): 3/4 of a small
    node's memory (12288 MiB of an m5.xlarge's 16 GiB), all but 8 GiB of a large one's."""
    total = instance.memory_gib * 1024
    return total * 3 // 4 if instance.memory_gib <= 32 else total - 8 * 1024


def executors_per_node(instance: Instance, executor_cores: int, executor_memory: str) -> int:
    heap = memory_mib(executor_memory)
    container = heap + max(_OVERHEAD_MIN_MIB, math.ceil(heap * _OVERHEAD_FACTOR))
    return min(instance.vcpus // executor_cores, yarn_memory_mib(instance) // container)


def check_training_fits(config: PipelineConfig, cluster: EmrSettings) -> None:
    """Refuse a run whose training workers the cluster cannot all run at once (ConfigError)."""
    if not trains_on_executors(config):
        return  # single, or ddp with torchrun on the driver: no barrier stage on executors
    groups = [("core", cluster.core_instance_count, cluster.core_instance_type)]
    if cluster.task_instance_type and cluster.task_instance_count > 0:
        groups.append(("task", cluster.task_instance_count, cluster.task_instance_type))
    unknown = [itype for _, _, itype in groups if itype not in INSTANCE_TYPES]
    if unknown:
        log.warning(
            "instance type %s is not in the capacity table: not checking that the cluster can run "
            "training.num_workers=%d executors at once",
            unknown[0],
            config.training.num_workers,
        )
        return

    spark, workers = config.spark, config.training.num_workers
    slots, described = 0, []
    for role, count, itype in groups:
        instance = INSTANCE_TYPES[itype]
        per_node = executors_per_node(instance, spark.executor_cores, spark.executor_memory)
        slots += count * per_node
        described.append(
            f"emr {role} nodes ({count} × {itype}, {instance.vcpus} vCPUs, {instance.memory_gib} GiB: "
            f"{per_node} executor{'' if per_node == 1 else 's'} each)"
        )
    if slots < workers:
        raise ConfigError(
            f"training.num_workers={workers} needs {workers} executors with "
            f"spark.executor_cores={spark.executor_cores} and spark.executor_memory={spark.executor_memory}, "
            f"but {' and '.join(described)} give {slots}: use fewer workers, smaller executors, or "
            "more or larger nodes (emr.core_instance_count / emr.core_instance_type, or the Params "
            "instance_count / instance_type)"
        )
    log.info("training: %d executors needed, the cluster has room for %d", workers, slots)
