"""The shared `main` of the step scripts that `spark-submit` runs.

    spark-submit spark_jobs/steps/preprocess.py --config configs/local.yaml --set run.id=a

parses the same arguments as `llm-decoder preprocess`, so a step behaves the same from the
CLI, from a local `spark-submit` and from an EMR step.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from spark_jobs.common.config import PipelineConfig, load_config
from spark_jobs.common.errors import PipelineError, memory_failures_named
from spark_jobs.common.lease import run_lease
from spark_jobs.common.logs import configure_logging
from spark_jobs.common.run_ids import with_run_id
from spark_jobs.common.spark_session import stop_spark
from spark_jobs.common.storage import run_dir

log = logging.getLogger(__name__)

StepFunction = Callable[..., Any]


def parse_step_args(step: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=step, description=f"llm-decoder {step} step")
    parser.add_argument("--config", help="YAML config file (local path or s3:// URI)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.num_epochs=2 (repeatable)",
    )
    parser.add_argument("--resume", action="store_true", help="train: continue from the latest checkpoint")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks for errors")
    return parser.parse_args(argv)


def run_step_main(step: str, step_fn: StepFunction, argv: list[str] | None = None) -> None:
    """Parse args, load config, run one step; user errors exit 2 with one line."""
    # Run as a script, the package folder is sys.path[0]; drop it so our module names
    # (config, storage, ...) cannot shadow top-level modules of other libraries.
    if sys.path and os.path.basename(sys.path[0].rstrip("/")) in ("steps", "spark_jobs"):
        sys.path.pop(0)
    args = parse_step_args(step, argv)
    try:
        overrides, note = with_run_id(args.config, args.overrides, step)
        config = load_config(args.config, overrides)
        configure_logging(config.run.id, step, config.run.log_level)
        if note:
            log.info("%s", note)
        kwargs = {"resume": True} if args.resume else {}
        with run_lease(run_dir(config.run.root, config.run.id), step), memory_failures_named(step):
            step_fn(config, **kwargs)  # one writer per run (the lease)
    except PipelineError as exc:
        if args.verbose:
            log.exception("%s failed", step)
        stop_spark()  # a failed job's cancelled tasks are logged later; the error line comes last
        print(f"error: {step}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def config_summary(config: PipelineConfig) -> str:
    return (
        f"run={config.run.id} root={config.run.root} model={config.model.kind} "
        f"strategy={config.training.strategy}"
    )
