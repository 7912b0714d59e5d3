"""
### llm_decoder_emr: train the decoder on a transient EMR cluster

SETUP stage the code, config and bootstrap script to `s3://<bucket>/<prefix>/runs/<run_id>/code/`
and create the cluster under the run's EMR security configuration (IMDSv2 required, encrypted at
rest; created once, then reused) · BODY add the pipeline's steps (`command-runner.jar spark-submit …`,
`CANCEL_AND_WAIT` on failure), watch each step, collect the metrics into S3, promote the model
if it beats the champion · TEARDOWN terminate the cluster as soon as the steps are over,
whatever happened (collect and promote need only S3).

A failed step fails the run at once (its FailureDetails and the error line of its logs in S3
are in the sensor's log) and the cluster is still terminated; EMR's idle auto-termination is
the second guard. An EMR API outage does not: the step sensors (deferred to the triggerer by
default) ask again until their timeout. A cluster whose id never reached XCom is found by its
`run_id` tag and terminated. Every AWS call is made in `emr.region`. Settings (cluster, roles, waiter delays,
schedule) come from `configs/emr.yaml`; the form's Params override them per run.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, chain, task
from airflow.sdk.exceptions import AirflowFailException
from llm_decoder_airflow import emr, tasks
from llm_decoder_airflow.operators import EmrCreateClusterOperator, EmrStepWatcher, EmrTerminateRunClusters
from llm_decoder_airflow.params import emr_params
from llm_decoder_airflow.pipeline import run_config
from llm_decoder_airflow.schedule import corpus_asset, run_schedule
from llm_decoder_airflow.settings import load_emr_config

from spark_jobs.common.errors import ConfigError, InputError
from spark_jobs.common.pipeline import STEPS

PIPELINE_RAW, SETTINGS = load_emr_config()
AIRFLOW = SETTINGS.airflow
# Every AWS call of this DAG goes to the cluster's region, whatever the connection says.
REGION = SETTINGS.emr.region
# Every object the DAG writes is SSE-KMS with this key, or SSE-S3 when None (files.FileStore).
S3_KMS_KEY = SETTINGS.emr.s3_kms_key_arn
# An update to the corpus (by a producer DAG or the REST API) can start a retraining.
CORPUS = corpus_asset("llm_decoder_corpus", run_config(PIPELINE_RAW, [], "configs/emr.yaml").data.corpus_path)

# Only idempotent tasks retry: creating a cluster twice would leave one running. Waits double
# (an API outage or throttling passes), up to max_retry_delay_s.
RETRIES = {
    "retries": AIRFLOW.retries,
    "retry_delay": timedelta(seconds=AIRFLOW.retry_delay_s),
    "retry_exponential_backoff": 2.0,  # Airflow 3 takes the multiplier: each wait doubles
    "max_retry_delay": timedelta(seconds=AIRFLOW.max_retry_delay_s),
}

with DAG(
    dag_id="llm_decoder_emr",
    description="Preprocess, window and train on a transient EMR cluster; metrics to S3; promote.",
    doc_md=__doc__,
    schedule=run_schedule(AIRFLOW, CORPUS),
    catchup=False,
    max_active_runs=1,
    params=emr_params(PIPELINE_RAW, SETTINGS.emr),
    tags=["llm-decoder", "emr", "spark", "training"],
    default_args={"owner": AIRFLOW.owner, "retries": 0},
) as dag:

    @task(multiple_outputs=True, **RETRIES)
    def stage(params: dict | None = None, run_id: str | None = None) -> dict:
        """Validate the run's config, upload code + config + bootstrap script, build the requests."""
        try:
            return tasks.stage_emr_run(PIPELINE_RAW, SETTINGS, params, run_id)
        except (ConfigError, InputError) as error:
            raise AirflowFailException(str(error)) from None  # a retry cannot fix the input

    staged = stage()

    create_cluster = EmrCreateClusterOperator(
        task_id="create_cluster",
        job_flow_overrides=staged["job_flow"],
        aws_conn_id=AIRFLOW.aws_conn_id,
        region_name=REGION,
        emr_conn_id=AIRFLOW.emr_conn_id,
        wait_for_completion=True,
        waiter_delay=AIRFLOW.cluster_waiter_delay_s,
        waiter_max_attempts=AIRFLOW.cluster_waiter_max_attempts,
        deferrable=False,
    )

    @task(multiple_outputs=True, **RETRIES)
    def add_steps(job_flow_id: str, specs: list) -> dict:
        """Add the run's steps the cluster does not have yet (a retry never duplicates them)."""
        return emr.add_missing_steps(job_flow_id, specs, AIRFLOW.aws_conn_id, REGION)

    step_ids = add_steps(create_cluster.output, staged["steps"])

    # A FAILED step is final: its sensor fails at once, without retries. An unreachable or busy
    # EMR API is not: the sensor asks again until step_timeout_s (and then the task retries).
    watch_steps = [
        EmrStepWatcher(
            task_id=f"watch_{step.name}",
            doc_md=step.description,
            job_flow_id=create_cluster.output,
            step_id=step_ids[step.name],
            # A cleared watch_<step> on a new cluster adds its step there (emr.step_on_cluster).
            pipeline_step=step.name,
            step_specs=staged["steps"],
            aws_conn_id=AIRFLOW.aws_conn_id,
            region_name=REGION,
            poke_interval=AIRFLOW.step_poke_interval_s,
            timeout=AIRFLOW.step_timeout_s,
            log_wait_s=AIRFLOW.step_log_wait_s,
            mode="poke",
            deferrable=AIRFLOW.deferrable_sensors,
            **RETRIES,
        )
        for step in STEPS
    ]

    @task(**RETRIES)
    def collect_metrics(root: str, pipeline_run_id: str, job_flow_id: str, **context) -> dict:
        """Write the run's summary.json and report.md to S3; return the headline figures."""
        pipeline = {
            "dag_id": context["dag"].dag_id,
            "airflow_run_id": context["run_id"],
            "cluster": job_flow_id,
        }
        return tasks.collect_metrics(root, pipeline_run_id, AIRFLOW.aws_conn_id, pipeline, REGION, S3_KMS_KEY)

    @task(**RETRIES)
    def promote_model(root: str, summary: dict) -> dict:
        """Point <root>/models/champion.json at this run if it beats the champion, like for like."""
        return tasks.promote_model(root, summary, AIRFLOW.aws_conn_id, REGION, S3_KMS_KEY)

    summary = collect_metrics(staged["root"], staged["run_id"], create_cluster.output)
    promoted = promote_model(staged["root"], summary)

    # Without a cluster id (create_cluster died after RunJobFlow), it terminates the clusters
    # tagged with the run's id: no cluster is left without an owner.
    terminate_cluster = EmrTerminateRunClusters(
        task_id="terminate_cluster",
        job_flow_id=create_cluster.output,
        cluster_run_id=staged["run_id"],
        aws_conn_id=AIRFLOW.aws_conn_id,
        region_name=REGION,
        deferrable=False,
        **RETRIES,
    )

    chain(step_ids, *watch_steps, summary, promoted)
    # Teardown: runs once the steps are over, whatever happened. Collect and promote only need
    # S3, so the cluster does not idle while they run, and they stay leaves of the DAG: a failed
    # step or collection still fails the run, and so does a failed termination.
    watch_steps[-1] >> terminate_cluster
    # stage is a setup too: the teardown runs when create_cluster failed (at least one setup
    # succeeded), and looks for a cluster that RunJobFlow started all the same.
    terminate_cluster.as_teardown(setups=[staged.operator, create_cluster], on_failure_fail_dagrun=True)
