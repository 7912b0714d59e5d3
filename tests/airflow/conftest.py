"""Fixtures for the Airflow tests: small configs, a migrated SQLite DB, a moto server and an
EMR harness that plays the part of the cluster (moto never moves EMR steps on by itself).

The config files are written and pointed to by env vars at import time, before any test
parses the DAG files (they read their settings when parsed).
"""

from __future__ import annotations

import copy
import json
import os
import socket
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
    fresh_dag,
)


def _write_configs() -> None:
    emr = yaml.safe_load((REPO / "configs" / "emr.yaml").read_text())
    for section, values in TINY.items():
        emr[section].update(values)
    emr["training"]["ddp_local_mode"] = True
    emr["data"]["corpus_path"] = f"s3://{BUCKET}/{CORPUS_KEY}"
    emr["emr"].update({"bucket": BUCKET, "prefix": PREFIX})
    emr["airflow"].update(FAST_AIRFLOW)
    (SCRATCH / "emr.yaml").write_text(yaml.safe_dump(emr, sort_keys=False))

    local = copy.deepcopy(TINY)
    local["data"]["corpus_path"] = str(REPO / "data" / "tinyshakespeare.txt")
    local["airflow"] = {**FAST_AIRFLOW, "local_root": str(LOCAL_ROOT)}
    (SCRATCH / "local.yaml").write_text(yaml.safe_dump(local, sort_keys=False))
    os.environ["LLM_DECODER_EMR_CONFIG"] = str(SCRATCH / "emr.yaml")
    os.environ["LLM_DECODER_LOCAL_CONFIG"] = str(SCRATCH / "local.yaml")


_write_configs()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated metadata DB (dag.test() needs the tables)."""
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on loopback; Airflow's aws_default connection and boto3 point at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    connection = {
        "conn_type": "aws",
        "login": "test",
        "password": "test",
        "extra": {"region_name": REGION, "endpoint_url": endpoint},
    }
    os.environ.update(
        {
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": REGION,
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
    return client


@pytest.fixture(scope="session")
def emr_client(moto_endpoint):
    import boto3

    return boto3.client("emr", endpoint_url=moto_endpoint, region_name=REGION)


@pytest.fixture
def emr_moto(monkeypatch, s3):
    """Make moto report FailureDetails of failed steps, like EMR's DescribeStep does."""
    from moto.emr.models import Step

    plain_status = Step.status.fget

    def status(self):
        value = plain_status(self)
        details = getattr(self, "failure_details", None)
        if details:
            value["FailureDetails"] = details
        return value

    monkeypatch.setattr(Step, "status", property(status))
    return monkeypatch


@pytest.fixture
def harness(emr_moto, s3) -> Callable[..., EmrHarness]:
    return lambda **kwargs: EmrHarness(s3, **kwargs)


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

    root = SCRATCH / "local-dag-root"
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
