"""The EMR side as plain data: the cluster request and the step requests of one run.

`cluster_spec` is the `run_job_flow` request (EmrCreateJobFlowOperator's job_flow_overrides);
`step_specs` are the `add_job_flow_steps` requests, one `command-runner.jar spark-submit ...`
per pipeline step. `add_missing_steps` adds only the steps the cluster does not already
have, so a retried task never queues a step twice (apache/airflow#28704).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from llm_decoder_airflow.files import join
from llm_decoder_airflow.pipeline import spark_submit_args, step_spark_options
from llm_decoder_airflow.security import configuration_name
from llm_decoder_airflow.settings import EmrSettings, describe
from llm_decoder_airflow.staging import (
    BOOTSTRAP_SCRIPT,
    CODE_ARCHIVE,
    CONFIG_FILE,
    REQUIREMENTS,
    staged_script,
    wheelhouse_uri,
)
from spark_jobs.common.config import PipelineConfig
from spark_jobs.common.errors import ConfigError
from spark_jobs.common.pipeline import STEPS, Step

log = logging.getLogger(__name__)

PROJECT_TAG = "llm-decoder"
# The bootstrap action builds this virtualenv on every node; Spark's Python comes from it.
NODE_VENV = "/opt/llm-decoder/venv"
NODE_PYTHON = f"{NODE_VENV}/bin/python"
# A failed step cancels the ones after it and leaves the cluster to the teardown task.
ACTION_ON_FAILURE = "CANCEL_AND_WAIT"
# The cluster states in which a cluster still runs (and bills); ListClusters filters on them.
ACTIVE_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
RUN_ID_TAG = "run_id"
# The service role's AmazonEMRServicePolicy_v2 acts only on resources carrying this tag; EMR
# passes the cluster's tags on to the instances, volumes and launch templates it creates.
MANAGED_POLICY_TAG = {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"}
# Where the AWS SDKs (boto3, pyarrow's S3, the AWS CLI) look for the region.
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")


def settings_for_run(emr: EmrSettings, params: Mapping[str, Any]) -> EmrSettings:
    """The configured cluster settings with the trigger form's choices applied."""
    update = {
        "core_instance_type": params.get("instance_type"),
        "core_instance_count": params.get("instance_count"),
        "release_label": params.get("release_label"),
        "bucket": params.get("bucket"),
        "prefix": params.get("prefix"),
    }
    # Validated again: a Param (the REST API, an old form) must not bypass the settings' rules.
    try:
        return EmrSettings.model_validate(
            {**emr.model_dump(), **{k: v for k, v in update.items() if v is not None}}
        )
    except ValidationError as exc:
        raise ConfigError(describe(exc, "EMR run settings (Params + configs/emr.yaml)")) from None


def run_root(emr: EmrSettings) -> str:
    prefix = emr.prefix.strip("/")
    return f"s3://{emr.bucket}/{prefix}" if prefix else f"s3://{emr.bucket}"


def log_uri(emr: EmrSettings) -> str:
    return emr.log_uri or join(run_root(emr), "emr-logs") + "/"


def step_name(step: Step, run_id: str) -> str:
    """Step names carry the run id: add_missing_steps finds a run's steps by name."""
    return f"{step.name} [{run_id}]"


def step_of(name: str) -> str:
    """The pipeline step of an EMR step name (the inverse of step_name)."""
    return name.split(" [", 1)[0]


def _instance_group(name: str, role: str, instance_type: str, count: int, ebs_gb: int) -> dict[str, Any]:
    return {
        "Name": name,
        "InstanceRole": role,
        "Market": "ON_DEMAND",
        "InstanceType": instance_type,
        "InstanceCount": count,
        "EbsConfiguration": {
            "EbsBlockDeviceConfigs": [
                {"VolumeSpecification": {"VolumeType": "gp3", "SizeInGB": ebs_gb}, "VolumesPerInstance": 1}
            ]
        },
    }


def cluster_spec(emr: EmrSettings, run_id: str, code: str) -> dict[str, Any]:
    """The run_job_flow request for one run's cluster."""
    groups = [
        _instance_group("master", "MASTER", emr.master_instance_type, 1, emr.ebs_volume_gb),
        _instance_group("core", "CORE", emr.core_instance_type, emr.core_instance_count, emr.ebs_volume_gb),
    ]
    if emr.task_instance_type and emr.task_instance_count > 0:
        task = _instance_group(
            "task", "TASK", emr.task_instance_type, emr.task_instance_count, emr.ebs_volume_gb
        )
        task["Market"] = emr.task_market
        groups.append(task)

    instances: dict[str, Any] = {
        "InstanceGroups": groups,
        # Steps are added after creation; the teardown task ends the cluster.
        "KeepJobFlowAliveWhenNoSteps": True,
        "TerminationProtected": False,
    }
    if emr.ec2_subnet_id:
        instances["Ec2SubnetId"] = emr.ec2_subnet_id
    if emr.ec2_key_name:
        instances["Ec2KeyName"] = emr.ec2_key_name

    # Executor and driver sizes are not cluster defaults: each step passes the run's spark section
    # to spark-submit (pipeline.step_spark_options). What is here holds for every step.
    spark_defaults = {
        "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
        "spark.pyspark.python": NODE_PYTHON,
        "spark.pyspark.driver.python": NODE_PYTHON,
        "spark.yarn.appMasterEnv.PYSPARK_PYTHON": NODE_PYTHON,
        "spark.executorEnv.PYSPARK_PYTHON": NODE_PYTHON,
    }
    # A YARN container has no AWS region of its own (the instance profile gives credentials, not
    # a region): the steps' S3 clients (boto3, pyarrow) would otherwise fall back to us-east-1.
    for variable in REGION_VARIABLES:
        spark_defaults[f"spark.yarn.appMasterEnv.{variable}"] = emr.region
        spark_defaults[f"spark.executorEnv.{variable}"] = emr.region
    node_env = {"PYSPARK_PYTHON": NODE_PYTHON, "PYSPARK_DRIVER_PYTHON": NODE_PYTHON}
    node_env.update(dict.fromkeys(REGION_VARIABLES, emr.region))
    spec: dict[str, Any] = {
        "Name": f"llm-decoder-{run_id}",
        "ReleaseLabel": emr.release_label,
        "LogUri": log_uri(emr),
        "Applications": [{"Name": "Hadoop"}, {"Name": "Spark"}],
        "Instances": instances,
        "BootstrapActions": [
            {
                "Name": "install-python-deps",
                "ScriptBootstrapAction": {
                    "Path": join(code, BOOTSTRAP_SCRIPT),
                    "Args": [
                        "--python",
                        emr.python_version,
                        "--venv",
                        NODE_VENV,
                        "--requirements",
                        join(code, REQUIREMENTS),
                        # The nodes install from it with --no-index: no package index is reached.
                        "--wheelhouse",
                        wheelhouse_uri(code),
                        # CPU torch only: GPU training is refused (settings.GPU_REFUSED).
                        "--torch",
                        "cpu",
                    ],
                },
            }
        ],
        "Configurations": [
            {
                "Classification": "spark-env",
                "Configurations": [
                    {
                        "Classification": "export",
                        "Properties": node_env,
                    }
                ],
            },
            {"Classification": "spark-defaults", "Properties": spark_defaults},
        ],
        "JobFlowRole": emr.job_flow_role,
        "ServiceRole": emr.service_role,
        "VisibleToAllUsers": True,
        "StepConcurrencyLevel": 1,
        # A second guard: EMR itself ends a cluster left idle (e.g. a teardown that never ran).
        "AutoTerminationPolicy": {"IdleTimeout": emr.idle_timeout_s},
        "Tags": [
            {"Key": "project", "Value": PROJECT_TAG},
            {"Key": RUN_ID_TAG, "Value": run_id},
            MANAGED_POLICY_TAG,
            *({"Key": k, "Value": v} for k, v in sorted(emr.tags.items())),
        ],
    }
    # IMDSv2 required, encryption at rest (and in transit if configured): security.py.
    spec["SecurityConfiguration"] = configuration_name(emr)
    return spec


def emr_submit_options(code: str) -> list[str]:
    # Cluster mode: the driver runs in YARN, so a lost Airflow worker does not kill the step.
    # One attempt: YARN runs a failed driver again by default (yarn.resourcemanager.am.max-attempts
    # is 2), so a failed step would run twice, writing its outputs twice, before EMR reports it.
    return [
        "--deploy-mode",
        "cluster",
        "--conf",
        "spark.yarn.maxAppAttempts=1",
        "--py-files",
        join(code, CODE_ARCHIVE),
    ]


def step_specs(run_id: str, code: str, config: PipelineConfig) -> list[dict[str, Any]]:
    """The add_job_flow_steps requests of a run (its validated config), in pipeline order."""
    specs = []
    for step in STEPS:
        args = spark_submit_args(
            script=join(code, staged_script(step)),
            config_uri=join(code, CONFIG_FILE),
            spark_options=step_spark_options(step, config, executors=True),
            submit_options=emr_submit_options(code),
        )
        specs.append(
            {
                "Name": step_name(step, run_id),
                "ActionOnFailure": ACTION_ON_FAILURE,
                "HadoopJarStep": {"Jar": "command-runner.jar", "Args": args},
            }
        )
    return specs


def add_missing_steps(
    job_flow_id: str, specs: Sequence[Mapping[str, Any]], aws_conn_id: str | None, region: str
) -> dict:
    """Add the steps the cluster lacks (matched by name); return {step name: step id} in order."""
    from airflow.providers.amazon.aws.hooks.emr import EmrHook

    hook = EmrHook(aws_conn_id=aws_conn_id, region_name=region)
    existing: dict[str, str] = {}
    for page in hook.conn.get_paginator("list_steps").paginate(ClusterId=job_flow_id):
        for summary in page["Steps"]:
            existing.setdefault(summary["Name"], summary["Id"])
    missing = [dict(spec) for spec in specs if spec["Name"] not in existing]
    found = [spec["Name"] for spec in specs if spec["Name"] in existing]
    if found:
        log.info("steps already on cluster %s (not added again): %s", job_flow_id, found)
    if missing:
        ids = hook.add_job_flow_steps(job_flow_id=job_flow_id, steps=missing, wait_for_completion=False)
        existing.update({spec["Name"]: step_id for spec, step_id in zip(missing, ids, strict=True)})
    by_step = {step_of(spec["Name"]): existing[spec["Name"]] for spec in specs}
    log.info("cluster %s steps: %s", job_flow_id, by_step)
    return by_step


def step_on_cluster(emr_client: Any, job_flow_id: str, spec: Mapping[str, Any], known_id: str | None) -> str:
    """The id of this pipeline step's EMR step on the cluster, added now if the cluster lacks it.

    `known_id` is what add_steps added. A user who clears a failed `watch_<step>` task clears its
    setups with it, so the run gets a new cluster while add_steps keeps its old ids: the step is
    then added to the new cluster, alone (the earlier steps' outputs are complete in S3, and a
    train step resumes from the run's checkpoints). Matched by name, so a retry never adds twice.
    """
    by_name: dict[str, str] = {}
    ids: set[str] = set()
    for page in emr_client.get_paginator("list_steps").paginate(ClusterId=job_flow_id):
        for summary in page["Steps"]:  # newest first
            ids.add(summary["Id"])
            by_name.setdefault(summary["Name"], summary["Id"])
    if known_id in ids:
        return known_id
    if spec["Name"] in by_name:
        return by_name[spec["Name"]]
    [step_id] = emr_client.add_job_flow_steps(JobFlowId=job_flow_id, Steps=[dict(spec)])["StepIds"]
    log.info(
        "%s was not on cluster %s (a cleared task on a new cluster): added as %s",
        spec["Name"],
        job_flow_id,
        step_id,
    )
    return step_id


def active_clusters_of_run(emr_client: Any, run_id: str) -> list[str]:
    """The ids of the still-active clusters tagged run_id=<run_id> (ListClusters + DescribeCluster).

    The owner lookup for a cluster whose id never reached XCom: create_cluster died after
    RunJobFlow returned. The `run_id` tag is on every cluster this DAG creates (cluster_spec).
    """
    owned = []
    for page in emr_client.get_paginator("list_clusters").paginate(ClusterStates=list(ACTIVE_STATES)):
        for summary in page["Clusters"]:
            cluster = emr_client.describe_cluster(ClusterId=summary["Id"])["Cluster"]
            tags = {tag["Key"]: tag["Value"] for tag in cluster.get("Tags", [])}
            if tags.get(RUN_ID_TAG) == run_id and tags.get("project") == PROJECT_TAG:
                owned.append(summary["Id"])
    return owned
