"""What the DAGs' Python tasks do; the DAG files only wire these together.

Each function takes plain values (the run's Params, the Airflow run id, the settings) and
returns JSON-serialisable dicts, so it is usable and testable outside a running task.
"""

from __future__ import annotations

import ctypes
import fnmatch
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import ClientError

from llm_decoder_airflow import emr, security
from llm_decoder_airflow.capacity import check_training_fits
from llm_decoder_airflow.collect import collect_run
from llm_decoder_airflow.files import FileStore, is_s3, join, split_s3
from llm_decoder_airflow.pipeline import (
    check_local_root,
    code_uri,
    config_overrides,
    has_executors,
    local_script,
    local_submit_options,
    logged_command,
    run_config,
    run_id_from_airflow,
    spark_submit_args,
    spark_submit_binary,
    step_spark_options,
)
from llm_decoder_airflow.promote import promote
from llm_decoder_airflow.settings import PROJECT_ROOT, Settings, load_local_config
from llm_decoder_airflow.staging import CONFIG_FILE, stage_code
from spark_jobs.common.config import PipelineConfig, dump_config
from spark_jobs.common.errors import ConfigError, InputError
from spark_jobs.common.pipeline import STEPS, step_by_name

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies
# Loaded here, not in the forked child: the child may only make the prctl call before exec.
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux: the finally of run_local_step and on_kill still end the group
    _LIBC = None


def check_aws(aws_conn_id: str | None, bucket: str, region: str | None = None) -> None:
    """Fail early, with one clear line, when the AWS connection or the bucket is missing."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk import BaseHook

    if aws_conn_id:
        try:
            BaseHook.get_connection(aws_conn_id)
        except Exception:
            raise ConfigError(
                f"AWS connection '{aws_conn_id}' is not defined: create it in the UI or set "
                f"AIRFLOW_CONN_{aws_conn_id.upper()} (configs/emr.yaml airflow.aws_conn_id)"
            ) from None
    if not S3Hook(aws_conn_id=aws_conn_id, region_name=region).check_for_bucket(bucket):
        raise InputError(
            f"S3 bucket '{bucket}' does not exist or is not readable with connection '{aws_conn_id}' "
            "(Param bucket / configs/emr.yaml emr.bucket)"
        )


def s3_input_exists(s3_hook: Any, uri: str) -> bool:
    """Whether an s3:// input names something: an object, a prefix with objects, or a glob that
    matches (like the steps: a key that exists as-is is literal, only a missing one is a glob)."""
    bucket, key = split_s3(uri)
    if key and s3_hook.check_for_key(key, bucket_name=bucket):
        return True
    wildcard = next((i for i, char in enumerate(key) if char in "*?["), None)
    if wildcard is not None:
        keys = s3_hook.list_keys(bucket_name=bucket, prefix=key[:wildcard]) or []
        return any(fnmatch.fnmatchcase(found, key) for found in keys)
    folder = key.rstrip("/") + "/" if key else ""
    return bool(s3_hook.list_keys(bucket_name=bucket, prefix=folder, max_items=1))


def check_inputs(config: PipelineConfig, aws_conn_id: str | None, region: str | None) -> None:
    """Before any cluster is created: the corpus (and the embeddings, if set) must exist in S3."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=aws_conn_id, region_name=region)
    inputs = {
        "corpus": (config.data.corpus_path, "Param corpus_uri / data.corpus_path"),
        "embeddings": (config.data.embeddings_path, "Param embeddings_uri / data.embeddings_path"),
    }
    for name, (uri, where) in inputs.items():
        if not uri or not is_s3(uri):
            continue  # none set (embeddings), or not S3: the steps say what is wrong
        try:
            found = s3_input_exists(hook, uri)
        except ClientError as error:
            raise InputError(f"{name} {uri} cannot be read: {error} ({where})") from None
        if not found:
            raise InputError(f"{name} not found: {uri} (no object, prefix or glob match in S3; {where})")


def plan_emr_run(
    pipeline_raw: Mapping[str, Any], settings: Settings, params: Mapping[str, Any], airflow_run_id: str
) -> tuple[PipelineConfig, dict[str, Any]]:
    """The run's validated config and the requests the DAG will send for it; no AWS call
    (`stage` runs this, and so does `make emr-plan`)."""
    cluster = emr.settings_for_run(settings.emr, params)
    run_id = run_id_from_airflow(airflow_run_id)
    root = emr.run_root(cluster)
    overrides = config_overrides(params, root, run_id)
    config = run_config(pipeline_raw, overrides, source="EMR run config (Params + configs/emr.yaml)")
    # Before anything is uploaded or started: a barrier stage the cluster cannot place would
    # wait, billed, until the step sensor's timeout.
    check_training_fits(config, cluster)
    # Nor one whose cost cannot be told: an instance type without a price in emr.prices.
    from llm_decoder_airflow import cost

    cost.check_priced(cluster)
    code = code_uri(root, run_id)
    return config, {
        "run_id": run_id,
        "root": root,
        "code": code,
        "job_flow": emr.cluster_spec(cluster, run_id, code),
        "steps": emr.step_specs(run_id, code, config),
        # `stage` replaces it with one from the earlier runs' hours (no AWS call here).
        "estimate": cost.estimate(cluster),
    }


def stage_emr_run(
    pipeline_raw: Mapping[str, Any], settings: Settings, params: Mapping[str, Any], airflow_run_id: str
) -> dict[str, Any]:
    """Validate the run's config, check the bucket and inputs, upload code + config + bootstrap;
    return the cluster and step requests."""
    config, plan = plan_emr_run(pipeline_raw, settings, params, airflow_run_id)
    region = settings.emr.region
    bucket, _ = split_s3(plan["root"])  # the run's bucket (Param bucket or emr.bucket)
    check_aws(settings.airflow.aws_conn_id, bucket, region)
    check_inputs(config, settings.airflow.aws_conn_id, region)
    security.ensure_security_configuration(settings.emr, settings.airflow.aws_conn_id)
    # The steps' input keeps spark.conf's secrets (spark_jobs.common.redact): unredacted.
    step_config = dump_config(config, redact=False)
    files = FileStore(settings.airflow.aws_conn_id, region, settings.emr.s3_kms_key_arn)
    stage_code(files, plan["code"], step_config)
    # What the run will cost at the listed prices, if it runs as long as the earlier runs did.
    from llm_decoder_airflow import cost

    store = FileStore(settings.airflow.aws_conn_id, region)
    earlier = cost.earlier_cluster_hours(store, plan["root"], plan["run_id"])
    plan["estimate"] = cost.estimate(emr.settings_for_run(settings.emr, params), earlier)
    estimate = plan["estimate"]
    log.info("run %s: about %s USD, %s", plan["run_id"], estimate["estimate_usd"], estimate["estimate_basis"])
    return plan


def prepare_local_run(
    pipeline_raw: Mapping[str, Any],
    params: Mapping[str, Any],
    airflow_run_id: str,
    master: str,
    local_root: str | None = None,
) -> dict[str, Any]:
    """Validate and write the run's config under <root>/runs/<run_id>/code/; each step's Spark options.

    `local_root`: the configured root (airflow.local_root) the Param root must lie under; None:
    read from the local config, as the DAG file reads it."""
    run_id = run_id_from_airflow(airflow_run_id)
    if local_root is None:
        local_root = load_local_config()[1].airflow.local_root
    root = check_local_root(params["root"], local_root, PROJECT_ROOT)
    overrides = config_overrides(params, root, run_id)
    config = run_config(pipeline_raw, overrides, source="local run config (Params + config)")
    config_uri = join(code_uri(root, run_id), CONFIG_FILE)
    FileStore(aws_conn_id=None).write_text(config_uri, dump_config(config, redact=False))  # the steps' input
    executors = has_executors(master)
    return {
        "run_id": run_id,
        "root": root,
        "config_uri": config_uri,
        "spark_options": {step.name: step_spark_options(step, config, executors=executors) for step in STEPS},
    }


def local_step_args(step_name: str, prepared: Mapping[str, Any], settings: Settings) -> list[str]:
    step = step_by_name(step_name)
    return spark_submit_args(
        script=local_script(step),
        config_uri=prepared["config_uri"],
        spark_options=prepared["spark_options"][step_name],
        submit_options=local_submit_options(settings.airflow.local_master),
        spark_submit=spark_submit_binary(),
    )


def run_local_step(
    step_name: str,
    prepared: Mapping[str, Any],
    settings: Settings,
    started: Callable[[subprocess.Popen], None] | None = None,
) -> None:
    """Run one step with the local spark-submit; its output goes to the task log.

    spark-submit runs in its own process group, ended with the task however the task ends (a
    failure, the execution timeout, a kill): its JVM and Python workers never outlive the
    attempt. `started` gets the process (the operator's on_kill ends it from there)."""
    args = local_step_args(step_name, prepared, settings)
    log.info("running: %s", logged_command(args))
    env = {
        **os.environ,
        # Spark's Python workers must use this interpreter (the venv's), and loopback.
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
    }
    tail: deque[str] = deque(maxlen=20)
    process = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
        preexec_fn=_terminate_with_parent,
    )
    if started is not None:
        started(process)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            log.info("%s", line)
        process.wait()
    finally:
        end_process_group(process)
    if process.returncode != 0:
        errors = [line for line in tail if line.startswith("error:")]
        reason = errors[-1] if errors else (tail[-1] if tail else "no output")
        raise RuntimeError(f"{step_name} step failed (exit {process.returncode}): {reason}")


def _terminate_with_parent() -> None:
    """In the child, before exec: SIGTERM when the task process dies, even by SIGKILL (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def end_process_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End every process of a step's group: SIGTERM, then SIGKILL after `grace_s`."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # the group is gone: nothing left running
    deadline = time.monotonic() + grace_s
    while _group_alive(process) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(process):
        log.warning("%s did not stop on SIGTERM within %.0f s: SIGKILL", process.args[0], grace_s)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _group_alive(process: subprocess.Popen) -> bool:
    process.poll()  # reap the leader: a zombie still counts as a member of its group
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def collect_metrics(
    root: str,
    run_id: str,
    aws_conn_id: str | None,
    pipeline: Mapping[str, Any],
    region: str | None = None,
    kms_key_arn: str | None = None,
) -> dict[str, Any]:
    return collect_run(FileStore(aws_conn_id, region, kms_key_arn), root, run_id, pipeline)


def promote_model(
    root: str,
    summary: Mapping[str, Any],
    aws_conn_id: str | None,
    region: str | None = None,
    kms_key_arn: str | None = None,
) -> dict[str, Any]:
    return promote(FileStore(aws_conn_id, region, kms_key_arn), root, summary)
