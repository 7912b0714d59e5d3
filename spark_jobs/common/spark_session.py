"""Building the SparkSession the same way for every step.

Under `spark-submit` (EMR or local) the master and resources come from the command line
and win over the config; run from the CLI, the `spark` section of the config decides.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from spark_jobs.common.config import PipelineConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def _launched_by_spark_submit() -> bool:
    # spark-submit starts the driver with these set; a plain `python` has neither.
    return "SPARK_SUBMIT_OPTS" in os.environ or "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(config: PipelineConfig, step: str) -> SparkSession:
    """Get or create the SparkSession for a step."""
    from pyspark.sql import SparkSession

    # Workers must use this interpreter (the venv's), or they miss the packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(f"{config.spark.app_name}-{step}-{config.run.id}")
    is_local = config.spark.master.startswith("local")
    if not _launched_by_spark_submit():
        builder = builder.master(config.spark.master).config(
            "spark.driver.memory", config.spark.driver_memory
        )
        if is_local:
            # This machine's hostname may resolve to an unreachable interface: pin loopback.
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            builder = builder.config("spark.driver.host", "127.0.0.1").config(
                "spark.driver.bindAddress", "127.0.0.1"
            )
    builder = (
        builder.config("spark.serializer", "org.apache.spark.serializer.KryoSerializer")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
    )
    if is_local:
        builder = builder.config("spark.ui.enabled", "false").config(
            "spark.sql.shuffle.partitions", str(max(2, os.cpu_count() or 2))
        )
    for key, value in config.spark.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("spark %s master=%s", spark.version, spark.sparkContext.master)
    return spark


def stop_spark() -> None:
    """Stop this process's Spark, if it started one, before printing a failure: tasks that
    Spark cancels after a failed job are logged by its JVM a moment later, and would otherwise
    print after the error line that is meant to be the last."""
    if "pyspark" not in sys.modules:
        return
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    if context is not None:
        context.stop()
    jvm = getattr(SparkContext._gateway, "proc", None)  # None under spark-submit: the JVM is our parent
    if jvm is not None:
        SparkContext._gateway.shutdown()
        jvm.terminate()
        jvm.wait(timeout=30)
        SparkContext._gateway = None
        SparkContext._jvm = None
    sys.stderr.flush()
