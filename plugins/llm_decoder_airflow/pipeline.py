"""THE pipeline definition: the ordered steps, what each reads and writes, how each is submitted.

Both DAGs are generated from `STEPS`, and both build their `spark-submit` argument lists with
`spark_submit_args`, so the local DAG, the EMR DAG and the replay test run the same command
lines; only the options in front (master, deploy mode, --py-files) and the URIs differ.

    spark-submit [options] <script> --config <run>/code/config.yaml --set run.root=... --set run.id=...
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm_decoder_airflow.files import join, run_dir
from spark_jobs.config import RUN_ID_PATTERN, PipelineConfig, apply_overrides, validate_config


@dataclass(frozen=True)
class Step:
    name: str
    # The entry script, relative to the spark_jobs package (runs unchanged under spark-submit).
    script: str
    description: str
    # Run-relative folders read and written (`corpus` is the configured corpus, outside the run).
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    # Spark properties this step needs wherever it runs.
    spark_conf: Mapping[str, str] = field(default_factory=dict)


STEPS: tuple[Step, ...] = (
    Step(
        name="preprocess",
        script="preprocess.py",
        description="Tokenize the corpus (byte-level BPE) and build token embeddings.",
        inputs=("corpus",),
        outputs=("preprocess",),
    ),
    Step(
        name="window",
        script="window.py",
        description="Cut the token stream into train/val sliding windows.",
        inputs=("preprocess",),
        outputs=("window",),
    ),
    Step(
        name="train",
        script="train.py",
        description="Train the decoder; write the model, checkpoints and metrics.",
        inputs=("preprocess", "window"),
        outputs=("train", "checkpoints", "metrics"),
        # TorchDistributor's barrier stage fails when executors come and go (EMR enables
        # dynamic allocation by default).
        spark_conf={"spark.dynamicAllocation.enabled": "false"},
    ),
)
STEP_NAMES = tuple(step.name for step in STEPS)

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


def step_by_name(name: str) -> Step:
    for step in STEPS:
        if step.name == name:
            return step
    raise KeyError(name)


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


def spark_submit_args(
    step: Step,
    *,
    script: str,
    config_uri: str,
    overrides: Sequence[str],
    submit_options: Sequence[str] = (),
    spark_submit: str = "spark-submit",
) -> list[str]:
    """The full argument list of one step's `spark-submit`."""
    args = [spark_submit, *submit_options]
    for key, value in step.spark_conf.items():
        args += ["--conf", f"{key}={value}"]
    args += [script, "--config", config_uri]
    for override in overrides:
        args += ["--set", override]
    return args


def spark_submit_binary() -> str:
    """The venv's spark-submit (pyspark's wheel ships one beside the interpreter)."""
    candidate = Path(sys.executable).parent / "spark-submit"
    return str(candidate) if candidate.exists() else "spark-submit"


def package_dir() -> Path:
    """The spark_jobs package's folder (found via a module: an editable install may make the
    package itself look like a namespace package, with no __file__)."""
    spec = importlib.util.find_spec("spark_jobs.config")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def local_script(step: Step) -> str:
    """The entry script inside the installed spark_jobs package."""
    return str(package_dir() / step.script)


def local_submit_options(master: str, driver_memory: str) -> list[str]:
    # Pin loopback: this machine's hostname may resolve to an interface Spark cannot use.
    return [
        "--master",
        master,
        "--driver-memory",
        driver_memory,
        "--conf",
        "spark.driver.host=127.0.0.1",
        "--conf",
        "spark.driver.bindAddress=127.0.0.1",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.log.level=WARN",  # Spark's INFO lines would bury the step's own log
    ]
