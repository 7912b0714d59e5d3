"""Airflow-only settings: where the cluster runs, how long to wait, when to retrain.

They live in the `emr:` and `airflow:` sections of `configs/emr.yaml`, beside the pipeline's
own sections (`spark`, `model`, `training`, `data`, `run`). The Spark steps never see them:
`split_config` separates the two, because the steps' `PipelineConfig` forbids unknown keys.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spark_jobs.common.config import PipelineConfig, parse_yaml_mapping
from spark_jobs.common.errors import ConfigError

# The repository (or the image's copy of it): dags/, plugins/, configs/ and spark_jobs/ live here.
PROJECT_ROOT = Path(os.environ.get("LLM_DECODER_HOME") or Path(__file__).resolve().parents[2])
EMR_CONFIG_ENV = "LLM_DECODER_EMR_CONFIG"
LOCAL_CONFIG_ENV = "LLM_DECODER_LOCAL_CONFIG"


RELEASE_LABEL_PATTERN = r"^emr-7\.[0-9]+\.[0-9]+$"
KMS_KEY_ARN_PATTERN = r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/.+$"
RELEASE_LABEL_WHY = (
    "emr-7.x only: the bootstrap action installs Python 3.11 with dnf, which needs the "
    "Amazon Linux 2023 of EMR 7 (EMR 6 runs Amazon Linux 2)"
)
# Nothing of GPU training was ever run: the train step's TorchDistributor uses CPU and gloo, and
# no YARN GPU scheduling is set up. A GPU node would bill GPU prices for CPU training.
GPU_REFUSED = (
    "GPU training is not supported yet: the train step runs on CPU (TorchDistributor with gloo) and "
    "the cluster has no YARN GPU scheduling; use CPU instance types"
)
# g4dn, g5, g6e, gr6, p3, p4d, p5 ...: the EC2 GPU families.
GPU_INSTANCE_TYPE = re.compile(r"^(g|gr|p)[0-9]")
# m6g, m7g, c6gn, r6gd ...: Graviton (aarch64). The nodes install from a wheelhouse built for
# x86_64 (wheelhouse.py); an aarch64 node would find no wheel for it and fail in bootstrap.
GRAVITON_INSTANCE_TYPE = re.compile(r"^[a-z]+[0-9]+g[a-z]*\.")
GRAVITON_REFUSED = (
    "Graviton (aarch64) nodes are not supported yet: the nodes' wheelhouse (nodes.lock) is built "
    "for x86_64; use an x86_64 type such as m5, m6i, m7i, c5 or r5"
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmrSettings(_Section):
    bucket: str = "llm-decoder-artifacts"
    prefix: str = "llm-decoder"
    region: str = "us-east-1"
    # emr-7.12.0 ships Spark 3.5.6, the pyspark pinned in pyproject.toml. emr-7.x only: the
    # bootstrap installs python3.11 with dnf, which needs Amazon Linux 2023 (EMR 6.x is AL2).
    release_label: str = Field("emr-7.12.0", pattern=RELEASE_LABEL_PATTERN)
    master_instance_type: str = "m5.xlarge"
    core_instance_type: str = "m5.xlarge"
    core_instance_count: int = Field(2, ge=1)
    # Optional spot task nodes: extra executors that may be reclaimed.
    task_instance_type: str | None = None
    task_instance_count: int = Field(0, ge=0)
    task_market: str = "SPOT"
    ebs_volume_gb: int = Field(64, ge=16)
    # The instance profile (its name is still EMR_EC2_DefaultRole) and the current default
    # service role, with AmazonEMRServicePolicy_v2 (EMR_DefaultRole's v1 policy is deprecated).
    job_flow_role: str = "EMR_EC2_DefaultRole"
    service_role: str = "EMR_DefaultRole_V2"
    ec2_subnet_id: str | None = None
    ec2_key_name: str | None = None
    # None: the DAG creates (once) a security configuration from the three keys below, named by
    # a hash of its content; a name: an existing one, used as it is (security.py).
    security_configuration: str | None = None
    # SSE-KMS with this key for S3 (EMRFS and the DAG's own writes); None: SSE-S3.
    s3_kms_key_arn: str | None = Field(None, pattern=KMS_KEY_ARN_PATTERN)
    # EMR encrypts the nodes' local disks and EBS volumes with this key; None: not by EMR.
    local_disk_kms_key_arn: str | None = Field(None, pattern=KMS_KEY_ARN_PATTERN)
    # s3:// URI of a zip of PEM files: TLS between the nodes; None: no in-transit encryption.
    in_transit_certificates: str | None = Field(None, pattern=r"^s3://[^/]+/.+\.zip$")
    # s3:// URI for the cluster's logs; None: s3://<bucket>/<prefix>/emr-logs/.
    log_uri: str | None = None
    # Second guard after the teardown task: EMR ends a cluster idle this long.
    idle_timeout_s: int = Field(3600, ge=60, le=604800)
    # Refused when true (GPU_REFUSED); kept so that `gpu: false` in older configs still loads.
    gpu: bool = False
    python_version: str = "3.11"
    tags: dict[str, str] = Field(default_factory=dict)
    # USD per instance-hour of EMR on EC2 (EC2 on-demand + the EMR uplift) in emr.region, per
    # instance type: staging refuses a type without a price, logs the run's estimate, and collect
    # prices the cluster's instance groups with it. List prices taken on `prices_taken`.
    prices: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    prices_taken: date | None = None
    # The run length (cluster hours) an estimate assumes when no earlier run recorded its own.
    default_run_hours: float = Field(1.0, gt=0)

    @field_validator("gpu")
    @classmethod
    def _refuse_gpu(cls, gpu: bool) -> bool:
        if gpu:
            raise ValueError(GPU_REFUSED)
        return gpu

    @field_validator("core_instance_type", "task_instance_type")
    @classmethod
    def _refuse_gpu_nodes(cls, instance_type: str | None) -> str | None:
        if instance_type and GPU_INSTANCE_TYPE.match(instance_type):
            raise ValueError(f"{instance_type} is a GPU instance type: {GPU_REFUSED}")
        return instance_type

    @field_validator("master_instance_type", "core_instance_type", "task_instance_type")
    @classmethod
    def _refuse_graviton_nodes(cls, instance_type: str | None) -> str | None:
        if instance_type and GRAVITON_INSTANCE_TYPE.match(instance_type):
            raise ValueError(f"{instance_type} is a Graviton instance type: {GRAVITON_REFUSED}")
        return instance_type


class AirflowSettings(_Section):
    aws_conn_id: str = "aws_default"
    # None: the create operator starts from an empty request, not from an `emr_default` connection.
    emr_conn_id: str | None = None
    owner: str = "llm-decoder"
    # A cron or preset (e.g. "@weekly"); None: manual triggers and corpus updates only.
    schedule: str | None = None
    # Retries of the idempotent tasks only (stage, add steps, step sensors, collect, promote, terminate).
    retries: int = Field(2, ge=0)
    retry_delay_s: int = Field(60, ge=0)
    # Retries wait retry_delay_s, then twice as long each time, up to this.
    max_retry_delay_s: int = Field(600, ge=1)
    cluster_waiter_delay_s: int = Field(60, ge=1)
    cluster_waiter_max_attempts: int = Field(60, ge=1)
    step_poke_interval_s: int = Field(60, ge=1)
    step_timeout_s: int = Field(6 * 3600, ge=1)
    # A failed step's sensor waits this long for EMR to upload the step's logs to S3 (every few
    # minutes) to put their error lines in its failure message; the cluster waits with it.
    step_log_wait_s: int = Field(300, ge=0, le=1800)
    # Wait for the steps on the triggerer (no worker slot held for hours); false: poke on a worker.
    deferrable_sensors: bool = True
    # Also start a run when the corpus Asset is updated (a producer DAG or the REST API).
    trigger_on_corpus_update: bool = True
    # Local DAG: the spark-submit master and where runs are written.
    local_master: str = "local[2]"
    local_root: str = "output"
    # A local step still running after this fails, its spark-submit ended (execution_timeout).
    local_step_timeout_s: int = Field(4 * 3600, ge=1)


class Settings(_Section):
    emr: EmrSettings = Field(default_factory=EmrSettings)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)


AIRFLOW_SECTIONS = ("emr", "airflow")
# Keys that left the emr: section: the steps' spark: section sizes driver and executors, once.
MOVED_KEYS = {
    "emr.executor_memory": "spark.executor_memory",
    "emr.executor_cores": "spark.executor_cores",
    "emr.driver_memory": "spark.driver_memory",
}


def _refuse_moved_keys(raw: dict[str, Any], source: str) -> None:
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raise ConfigError(
                f"{source}: {old} has moved to {new} (the run's spark: section sizes the driver "
                "and executors of every step); move the value there"
            )


def split_config(raw: dict[str, Any], source: str) -> tuple[dict[str, Any], Settings]:
    """Separate the Spark steps' sections from the Airflow-only ones; validate both."""
    _refuse_moved_keys(raw, source)
    pipeline_raw = {k: v for k, v in raw.items() if k not in AIRFLOW_SECTIONS}
    unknown = sorted(set(pipeline_raw) - set(PipelineConfig.model_fields))
    if unknown:
        raise ConfigError(f"{source}: unknown section '{unknown[0]}'")
    try:
        settings = Settings.model_validate({k: raw[k] for k in AIRFLOW_SECTIONS if raw.get(k) is not None})
    except ValidationError as exc:
        raise ConfigError(describe(exc, source)) from None
    return pipeline_raw, settings


def describe(exc: ValidationError, source: str) -> str:
    """The first error of a settings validation, in one line (and why, for the release label)."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["loc"][-1] == "release_label":
        return f"{source}: {key}: {err.get('input')!r}: {RELEASE_LABEL_WHY}"
    if err["type"] == "value_error":  # our own validators' message, without pydantic's prefix
        return f"{source}: {key}: {err['ctx']['error']}"
    return f"{source}: {key}: {err['msg']}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A local config file (configs/emr.yaml, configs/local.yaml) as a dict of sections."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file is a directory: {path} (give the YAML file inside it)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return parse_yaml_mapping(path.read_bytes(), str(path))


def emr_config_path() -> Path:
    return Path(os.environ.get(EMR_CONFIG_ENV) or PROJECT_ROOT / "configs" / "emr.yaml")


def local_config_path() -> Path:
    return Path(os.environ.get(LOCAL_CONFIG_ENV) or PROJECT_ROOT / "configs" / "local.yaml")


def load_emr_config() -> tuple[dict[str, Any], Settings]:
    """configs/emr.yaml (or $LLM_DECODER_EMR_CONFIG): the steps' raw config and the settings."""
    path = emr_config_path()
    return split_config(read_yaml(path), str(path))


def load_local_config() -> tuple[dict[str, Any], Settings]:
    """configs/local.yaml (or $LLM_DECODER_LOCAL_CONFIG); it may carry an `airflow:` section too."""
    path = local_config_path()
    raw = read_yaml(path)
    # A local step that failed fails again the same way: no retries unless configured.
    if not isinstance(raw.get("airflow"), dict):
        raw["airflow"] = {}
    raw["airflow"].setdefault("retries", 0)
    return split_config(raw, str(path))
