"""Every DAG parses, is documented and owned, and its trigger form accepts its own defaults."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
from airflow_testing import REPO

DAG_IDS = {"llm_decoder_emr", "llm_decoder_local"}
HEAVY = ("torch", "pyspark", "pandas", "numpy")


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_IDS <= set(dagbag.dag_ids)


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_tags_owner_doc_and_params(dagbag, dag_id):
    dag = dagbag.get_dag(dag_id)
    assert "llm-decoder" in dag.tags
    assert dag.doc_md and dag_id in dag.doc_md
    for task in dag.tasks:
        assert task.owner not in ("", "airflow"), task.task_id
    dag.params.validate()  # every default is valid
    for name, param in dag.params.items():
        assert param.description, f"{dag_id}: Param {name} has no description"
    assert dag.params.get_param("model_kind").schema["enum"] == ["gpt", "mlp"]
    assert dag.params.get_param("strategy").schema["enum"] == ["single", "ddp", "parameter_averaging"]


@pytest.mark.parametrize(
    "name, bad",
    [("epochs", 0), ("epochs", "three"), ("window_size", 100_000), ("model_kind", "rnn"), ("stride", 0)],
)
def test_params_reject_out_of_bounds_values(dagbag, name, bad):
    from airflow.sdk.exceptions import ParamValidationError

    for dag_id in DAG_IDS:
        params = copy.deepcopy(dagbag.get_dag(dag_id).params)
        with pytest.raises(ParamValidationError):
            params[name] = bad


def test_emr_params_have_bounds(dagbag):
    params = dagbag.get_dag("llm_decoder_emr").params
    from airflow.sdk.exceptions import ParamValidationError

    for name, bad in [
        ("instance_count", 0),
        ("bucket", "Not_A_Bucket"),
        ("release_label", "7.12"),
        ("release_label", "emr-6.15.0"),  # Amazon Linux 2: the bootstrap needs AL2023
        ("corpus_uri", "/local/path"),
    ]:
        with pytest.raises(ParamValidationError):
            copy.deepcopy(params)[name] = bad
    assert set(params) >= {
        "corpus_uri",
        "embeddings_uri",
        "model_kind",
        "strategy",
        "epochs",
        "window_size",
        "stride",
        "instance_type",
        "instance_count",
        "release_label",
        "bucket",
        "prefix",
    }


def test_only_idempotent_tasks_retry(dagbag):
    from airflow_testing import FAST_AIRFLOW

    dag = dagbag.get_dag("llm_decoder_emr")
    assert dag.get_task("create_cluster").retries == 0  # a retry would start a second cluster
    for task_id in ("stage", "add_steps", "collect_metrics", "promote_model", "terminate_cluster"):
        assert dag.get_task(task_id).retries == FAST_AIRFLOW["retries"] > 0, task_id
    for step in ("preprocess", "window", "train"):
        # watching is idempotent: a lost worker or triggerer retries, waiting longer each time
        sensor = dag.get_task(f"watch_{step}")
        assert sensor.retries == FAST_AIRFLOW["retries"] and sensor.retry_exponential_backoff == 2.0
        assert sensor.max_retry_delay.total_seconds() == FAST_AIRFLOW["max_retry_delay_s"]
        assert sensor.deferrable  # airflow.deferrable_sensors defaults to true
    teardown = dag.get_task("terminate_cluster")
    assert teardown.is_teardown and teardown.on_failure_fail_dagrun
    assert dag.get_task("create_cluster").task_id in {t.task_id for t in teardown.upstream_list}


def test_parsing_imports_no_heavy_modules_and_is_fast():
    """In a fresh interpreter: parse the DAG folder, then look at sys.modules."""
    code = textwrap.dedent(
        f"""
        import json, sys, time
        sys.path.insert(0, {str(REPO / "plugins")!r})
        start = time.perf_counter()
        from airflow.dag_processing.dagbag import DagBag
        imported = time.perf_counter()
        bag = DagBag(dag_folder={str(REPO / "dags")!r})
        parsed = time.perf_counter()
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        print(json.dumps({{"errors": list(bag.import_errors), "dags": sorted(bag.dag_ids), "heavy": heavy,
                          "import_s": imported - start, "parse_s": parsed - imported}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"\nDAG folder parse: {result['parse_s']:.2f} s (import airflow {result['import_s']:.2f} s)")
    assert result["errors"] == []
    assert set(result["dags"]) >= DAG_IDS
    assert result["heavy"] == []
    assert result["parse_s"] < 30


def test_every_aws_call_of_the_emr_dag_uses_emr_region(dagbag):
    from airflow_testing import CONNECTION_REGION, REGION

    assert REGION != CONNECTION_REGION  # the tests' connection names another region on purpose
    dag = dagbag.get_dag("llm_decoder_emr")
    for task_id in ("create_cluster", "watch_preprocess", "watch_window", "watch_train", "terminate_cluster"):
        assert dag.get_task(task_id).region_name == REGION, task_id
