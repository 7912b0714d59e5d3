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
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from llm_decoder_airflow.capacity import trains_on_executors
from llm_decoder_airflow.files import join, run_dir
from spark_jobs.common.config import RUN_ID_PATTERN, PipelineConfig, apply_overrides, validate_config
from spark_jobs.common.errors import ConfigError
from spark_jobs.common.pipeline import Step
from spark_jobs.common.redact import redact_args

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


# What the free `overrides` Param may not set, and why: where a run writes (run.*), the Spark
# properties of the deployment (spark.conf: credentials, class paths) and any *_path (a file
# the worker can read). The typed Params and the deployment config set those, validated.
# FORBIDDEN_OVERRIDE_PATTERN is the same rule for the Param's JSON schema (the REST API's 400).
FORBIDDEN_OVERRIDE_PATTERN = r"^(run[.=]|spark[.]conf[.=]|[^=]*_path[.=])"
OVERRIDE_LIMITS = {
    "run": "run.* is set by the DAG (Param root, the Airflow run id)",
    "spark.conf": "spark.conf is the deployment's (configs/*.yaml), not a trigger's",
    "_path": "paths come from the Params corpus_uri/embeddings_uri or the deployment config",
}


def refused_override(override: str) -> str | None:
    """Why the `overrides` Param may not carry `override` (KEY=VALUE), or None when it may."""
    key = override.partition("=")[0].strip()
    parts = key.split(".")
    if len(parts) < 2:
        return "an override names one field (section.key), not a whole section"
    if parts[0] == "run":
        return OVERRIDE_LIMITS["run"]
    if parts[:2] == ["spark", "conf"]:
        return OVERRIDE_LIMITS["spark.conf"]
    if any(part.endswith("_path") for part in parts):
        return OVERRIDE_LIMITS["_path"]
    return None


def check_local_root(root: str, allowed_root: str, base: Path) -> str:
    """The local DAG's `root` Param if it lies under the configured root (airflow.local_root,
    relative to `base`, the project); a ConfigError naming the Param, value and root otherwise.

    Local paths are compared with symlinks and `..` resolved, so neither can lead outside; a
    relative Param is taken relative to `base` (as the configured root is), not the worker's
    working directory. With an s3:// configured root the Param must be that root or below it."""
    if "://" in allowed_root:
        prefix = allowed_root.rstrip("/")
        inside = root.rstrip("/") == prefix or root.startswith(prefix + "/")
        if inside and ".." not in root.split("/"):  # S3 keeps `..` literally, our joins may not
            return root
        raise _outside_root(root, prefix)
    allowed = os.path.realpath(base / Path(allowed_root).expanduser())
    if "://" in root and not root.startswith("file://"):
        raise _outside_root(root, allowed)
    path = base / Path(root.removeprefix("file://")).expanduser()  # an absolute path stays itself
    resolved = Path(os.path.realpath(path))
    if resolved != Path(allowed) and Path(allowed) not in resolved.parents:
        raise _outside_root(root, allowed)
    return str(path)


def _outside_root(root: str, allowed: str) -> ConfigError:
    return ConfigError(f"Param root: {root!r} is not under {allowed} (the configured airflow.local_root)")


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
    for override in params.get("overrides") or []:
        # Also in the Param's schema; checked again here for runs the schema never saw.
        reason = refused_override(override)
        if reason:
            raise ConfigError(f"Param overrides: {override!r} is refused: {reason}")
        overrides.append(override)
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


def logged_command(args: Sequence[str]) -> str:
    """A spark-submit argument list as the line to log: secret-looking `--conf` values redacted."""
    return " ".join(redact_args(args))


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
