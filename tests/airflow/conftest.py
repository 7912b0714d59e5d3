"""Fixtures for the Airflow tests: small configs, a migrated SQLite DB, a moto server and an
EMR harness that plays the part of the cluster (moto never moves EMR steps on by itself).

The config files are written and pointed to by env vars at import time, before any test
parses the DAG files (they read their settings when parsed).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from airflow_testing import (  # noqa: E402
    BIN,
    BUCKET,
    CONNECTION_REGION,
    CORPUS_KEY,
    FAST_AIRFLOW,
    LOCAL_ROOT,
    PREFIX,
    REGION,
    REPO,
    SCRATCH,
    TINY,
    EmrHarness,
    corpus_slice,
    emr_test_config,
    fresh_dag,
    mark_wheelhouse_staged,
    watches_recorded,
)


def _write_configs() -> None:
    (SCRATCH / "emr.yaml").write_text(yaml.safe_dump(emr_test_config(), sort_keys=False))

    local = copy.deepcopy(TINY)
    local["data"]["corpus_path"] = str(REPO / "data" / "tinyshakespeare.txt")
    local["airflow"] = {**FAST_AIRFLOW, "local_root": str(LOCAL_ROOT)}
    (SCRATCH / "local.yaml").write_text(yaml.safe_dump(local, sort_keys=False))
    os.environ["LLM_DECODER_EMR_CONFIG"] = str(SCRATCH / "emr.yaml")
    os.environ["LLM_DECODER_LOCAL_CONFIG"] = str(SCRATCH / "local.yaml")


_write_configs()


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated metadata DB (dag.test() needs the tables)."""
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def aws_connection(endpoint: str) -> str:
    """Airflow's aws_default connection (as AIRFLOW_CONN_AWS_DEFAULT) to an endpoint; its region
    is not the DAG's emr.region, which every call of the EMR DAG must use instead."""
    extra = {"region_name": CONNECTION_REGION, "endpoint_url": endpoint}
    return json.dumps({"conn_type": "aws", "login": "test", "password": "test", "extra": extra})


def write_emr_config(name: str, **airflow) -> Path:
    """A variant of the tests' EMR config with other `airflow:` settings; returns its path."""
    config = yaml.safe_load((SCRATCH / "emr.yaml").read_text())
    config["airflow"].update(airflow)
    path = SCRATCH / f"emr-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def emr_settings(monkeypatch) -> Callable[..., None]:
    """emr_settings(step_timeout_s=3, ...): the next fresh_dag("llm_decoder_emr") parses with these."""

    def use(**airflow) -> None:
        name = "-".join(f"{k}-{v}" for k, v in sorted(airflow.items()))
        monkeypatch.setenv("LLM_DECODER_EMR_CONFIG", str(write_emr_config(name, **airflow)))

    return use


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on loopback; Airflow's aws_default connection and boto3 point at it."""
    from launchers.emr_box.nodes import free_port
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        {
            "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(endpoint),
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": CONNECTION_REGION,
        }
    )
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def s3(moto_endpoint):
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=CORPUS_KEY, Body=corpus_slice().encode())
    mark_wheelhouse_staged(client, BUCKET, PREFIX)
    return client


@pytest.fixture(scope="session")
def emr_client(moto_endpoint):
    import boto3

    return boto3.client("emr", endpoint_url=moto_endpoint, region_name=REGION)


@pytest.fixture
def emr_moto(monkeypatch, s3):
    """Make moto report FailureDetails of failed steps, like EMR's DescribeStep does."""
    from launchers.emr_box.box import failure_details_reported

    with failure_details_reported():
        yield monkeypatch


@pytest.fixture
def harness(emr_moto, s3) -> Iterator[Callable[..., EmrHarness]]:
    """harness(**kwargs): an EmrHarness that also counts how often running steps were asked about."""
    made: list[EmrHarness] = []

    def make(**kwargs) -> EmrHarness:
        made.append(EmrHarness(s3, **kwargs))
        return made[-1]

    with watches_recorded(made):
        yield make


def task_states(dag_id: str, run_id: str) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        return {ti.task_id: str(ti.state) for ti in tis}


@pytest.fixture(scope="session")
def local_run(dagbag) -> dict:
    """One end-to-end run of llm_decoder_local on a corpus slice (shared by the local and replay tests)."""
    from llm_decoder_airflow.pipeline import run_id_from_airflow

    root = LOCAL_ROOT / "dag-run"  # Param root must lie under the configured airflow.local_root
    corpus = SCRATCH / "corpus.txt"
    corpus.write_text(corpus_slice(), encoding="utf-8")
    dag = fresh_dag("llm_decoder_local")
    started = time.perf_counter()
    dag_run = dag.test(run_conf={"corpus_uri": str(corpus), "root": str(root)})
    return {
        "state": str(dag_run.state),
        "tasks": task_states(dag.dag_id, dag_run.run_id),
        "root": root,
        "run_id": run_id_from_airflow(dag_run.run_id),
        "seconds": time.perf_counter() - started,
    }
