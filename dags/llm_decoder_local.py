"""
### llm_decoder_local: the whole pipeline on this machine

The same steps as `llm_decoder_emr` (one pipeline definition), each run by the local
`spark-submit` on local storage: preprocess → window → train → collect metrics → promote.
Runs land in `<root>/runs/<run_id>/`, the champion pointer in `<root>/models/champion.json`.
The base config is `configs/local.yaml` (or `$LLM_DECODER_LOCAL_CONFIG`); the form's Params
override it per run. This is what `make run`, `make stack` and the docker-compose Airflow run;
a cron (`airflow.schedule`) or an update of the corpus Asset starts a run by itself.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, chain, task
from llm_decoder_airflow import tasks
from llm_decoder_airflow.local_step import LocalStepOperator
from llm_decoder_airflow.params import local_params
from llm_decoder_airflow.pipeline import run_config
from llm_decoder_airflow.schedule import corpus_asset, run_schedule
from llm_decoder_airflow.settings import load_local_config

from spark_jobs.common.pipeline import STEPS

PIPELINE_RAW, SETTINGS = load_local_config()
AIRFLOW = SETTINGS.airflow
# An update to the corpus (a producer DAG, the REST API, `make stack-check`) starts a retraining.
CORPUS = corpus_asset(
    "llm_decoder_local_corpus", run_config(PIPELINE_RAW, [], "configs/local.yaml").data.corpus_path
)
# Every task here is idempotent: a step rewrites its own output folder.
RETRIES = {"retries": AIRFLOW.retries, "retry_delay": timedelta(seconds=AIRFLOW.retry_delay_s)}

with DAG(
    dag_id="llm_decoder_local",
    description="Preprocess, window and train with local Spark; collect metrics; promote.",
    doc_md=__doc__,
    schedule=run_schedule(AIRFLOW, CORPUS),
    catchup=False,
    max_active_runs=1,
    params=local_params(PIPELINE_RAW, AIRFLOW),
    tags=["llm-decoder", "local", "spark", "training"],
    default_args={"owner": AIRFLOW.owner, **RETRIES},
) as dag:

    @task(multiple_outputs=True)
    def prepare(params: dict | None = None, run_id: str | None = None) -> dict:
        """Validate the run's config and write it to <root>/runs/<run_id>/code/config.yaml."""
        return tasks.prepare_local_run(PIPELINE_RAW, params, run_id, AIRFLOW.local_master, AIRFLOW.local_root)

    prepared = prepare()

    # One task per pipeline step; a step past its timeout fails and its spark-submit is ended.
    steps = [
        LocalStepOperator(
            task_id=step.name,
            doc_md=step.description,
            step_name=step.name,
            prepared=prepared,
            settings=SETTINGS,
            execution_timeout=timedelta(seconds=AIRFLOW.local_step_timeout_s),
        )
        for step in STEPS
    ]

    @task
    def collect_metrics(prepared: dict, **context) -> dict:
        """Write the run's summary.json and report.md; return the headline figures."""
        pipeline = {"dag_id": context["dag"].dag_id, "airflow_run_id": context["run_id"]}
        return tasks.collect_metrics(prepared["root"], prepared["run_id"], None, pipeline)

    @task
    def promote_model(prepared: dict, summary: dict) -> dict:
        """Point <root>/models/champion.json at this run if it beats the champion, like for like."""
        return tasks.promote_model(prepared["root"], summary, None)

    summary = collect_metrics(prepared)
    chain(*steps, summary, promote_model(prepared, summary))
