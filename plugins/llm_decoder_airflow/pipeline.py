"""THE pipeline definition: the ordered steps, what each reads and writes, how each is submitted.

The steps themselves are listed once, in `spark_jobs.steps.STEPS`. Both DAGs are generated
from that table, and both build their `spark-submit` argument lists with `spark_submit_args`,
so the local DAG, the EMR DAG and the replay test run the same command lines; only the
options in front (master, deploy mode, --py-files) and the URIs differ.

    spark-submit [options] <script> --config <root>/runs/<run_id>/code/config.yaml

The rendered config (the base config with the run's Params and overrides applied, run.root
and run.id included) is the single record every step of a run reads: nothing is passed twice.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from llm_decoder_airflow.capacity import trains_on_executors
from llm_decoder_airflow.files import join, run_dir
from spark_jobs.common.config import RUN_ID_PATTERN, PipelineConfig, apply_overrides, validate_config
from spark_jobs.common.pipeline import Step

# Trigger-form Params that map onto config keys of the Spark steps.
PARAM_TO_CONFIG = {
    "corpus_uri": "data.corpus_path",
    "embeddings_uri": "data.embeddings_path",
    "model_kind": "model.kind",
    "strategy": "training.strategy",
    "epochs": "training.num_epochs",
    "window_size": "model.window_size",
    "stride": "data.window_stride",
    "max_steps": "training.max_steps",
}


def run_id_from_airflow(airflow_run_id: str) -> str:
    """An Airflow run id (`manual__2026-11-28T12:00:00+00:00`) made safe for paths and RUN_ID_PATTERN."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", airflow_run_id).strip("-._")[:128] or "run"
    if not re.match(RUN_ID_PATTERN, safe):  # e.g. a leading '_' of a custom run id
        safe = ("r" + safe)[:128]
    return safe


def code_uri(root: str, run_id: str) -> str:
    """Where a run's code, rendered config and bootstrap script are staged."""
    return join(run_dir(root, run_id), "code")


def _yaml_value(value: Any) -> str:
    """A `--set` value that reads back as the same YAML value (URIs stay strings, None is null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if isinstance(value, str):
        try:
            same = yaml.safe_load(text) == value
        except yaml.YAMLError:
            same = False
        if not same:
            return json.dumps(value)  # JSON is YAML: a quoted string reads back unchanged
    return text


def config_overrides(params: Mapping[str, Any], root: str, run_id: str) -> list[str]:
    """The `--set key=value` overrides of one run: its root and id, the Params, extra overrides."""
    overrides = [f"run.root={root}", f"run.id={run_id}"]
    for param, key in PARAM_TO_CONFIG.items():
        if param not in params:
            continue
        value = params[param]
        if param == "embeddings_uri" and not value:
            value = None  # the form's empty string: train embeddings with Word2Vec
        overrides.append(f"{key}={_yaml_value(value)}")
    overrides.extend(params.get("overrides") or [])
    return overrides


def run_config(pipeline_raw: Mapping[str, Any], overrides: Sequence[str], source: str) -> PipelineConfig:
    """The run's config, validated as the steps will validate it (bad input fails here, early)."""
    return validate_config(apply_overrides(dict(pipeline_raw), list(overrides)), source=source)


def step_spark_options(step: Step, config: PipelineConfig, *, executors: bool) -> list[str]:
    """The resources and Spark properties of one step of this run, from the run's `spark` section.

    `executors`: the master runs executors (EMR's YARN, a standalone master), so size them; under
    local[N] there are none. The train step of a strategy that trains on executors asks for one
    executor per worker, and gives each barrier task all of its executor's cores (so a task is an
    executor, and torch's threads are its cores); dynamic allocation is off for it (STEPS).
    """
    spark = config.spark
    options = ["--driver-memory", spark.driver_memory]
    conf = dict(step.spark_conf)
    if executors:
        instances = spark.num_executors
        if step.name == "train" and trains_on_executors(config):
            instances = config.training.num_workers
            conf["spark.task.cpus"] = str(spark.executor_cores)
        options += [
            "--executor-memory",
            spark.executor_memory,
            "--executor-cores",
            str(spark.executor_cores),
            "--num-executors",
            str(instances),
        ]
    for key, value in conf.items():
        options += ["--conf", f"{key}={value}"]
    return options


def spark_submit_args(
    *,
    script: str,
    config_uri: str,
    spark_options: Sequence[str] = (),
    submit_options: Sequence[str] = (),
    spark_submit: str = "spark-submit",
) -> list[str]:
    """The full argument list of one step's `spark-submit`: the step reads everything else from its config."""
    return [spark_submit, *submit_options, *spark_options, script, "--config", config_uri]


def spark_submit_binary() -> str:
    """The venv's spark-submit (pyspark's wheel ships one beside the interpreter)."""
    candidate = Path(sys.executable).parent / "spark-submit"
    return str(candidate) if candidate.exists() else "spark-submit"


def package_dir() -> Path:
    """The spark_jobs package's folder (found via a module: an editable install may make the
    package itself look like a namespace package, with no __file__)."""
    spec = importlib.util.find_spec("spark_jobs.cli")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def local_script(step: Step) -> str:
    """The entry script inside the installed spark_jobs package."""
    return str(package_dir() / step.script)


def has_executors(master: str) -> bool:
    """Whether executor options apply: yarn, spark://, k8s:// masters; not local[N] (no executors)
    nor local-cluster[N,cores,memory] (its master string sizes them)."""
    return not master.startswith("local")


def local_submit_options(master: str) -> list[str]:
    # Pin loopback: this machine's hostname may resolve to an interface Spark cannot use.
    return [
        "--master",
        master,
        "--conf",
        "spark.driver.host=127.0.0.1",
        "--conf",
        "spark.driver.bindAddress=127.0.0.1",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.log.level=WARN",  # Spark's INFO lines would bury the step's own log
    ]
