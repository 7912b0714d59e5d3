"""The box: an emulated AWS account (moto over HTTP) whose EMR clusters really run their steps.

    with EmrBox(Path("/tmp/box")) as box:        # moto + bucket + s3fs + Spark standalone + runner
        box.put_corpus("data/small.txt", text)
        config = box.write_config(strategy="ddp")  # configs/emr.yaml, sized for the box
        run = box.run_dag({"strategy": "ddp"})    # llm_decoder_emr with dag.test(), unchanged

What is real: the DAG and its provider operators, boto3 over HTTP, spark-submit with the
step's Args, a multi-process Spark cluster, TorchDistributor barrier tasks and gloo between
two executors, every byte between steps through the S3 API. What is emulated: AWS itself
(moto), YARN (a standalone master, client deploy mode), EMRFS (s3fs, see emrfs.py), the
bootstrap action (the nodes use this venv), and the instance profile (credentials in the
nodes' environment).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from launchers.emr_box.emrfs import S3Mount, hadoop_s3_conf
from launchers.emr_box.errors import BoxError
from launchers.emr_box.nodes import SparkStandalone, free_port
from launchers.emr_box.proxy import OutageProxy
from launchers.emr_box.steps import StepRunner

log = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[3]
REGION = "eu-west-1"  # not us-east-1: a region that only the settings can tell
BUCKET = "llm-decoder-box"
PREFIX = "llm"
CONN_ID = "aws_emr_box"
KEY, SECRET = "box-key", "box-secret"

# A model and a run small enough for two one-core nodes: a few dozen steps in a few minutes.
BOX_CONFIG: dict[str, Any] = {
    "spark": {"driver_memory": "1g", "executor_memory": "1g", "executor_cores": 1, "num_executors": 2,
              "target_partition_size": 4000},
    "model": {"kind": "gpt", "window_size": 16, "embedding_size": 32, "hidden_size": 64,
              "num_layers": 1, "num_heads": 2},
    "training": {"strategy": "ddp", "num_workers": 2, "ddp_local_mode": False, "batch_size": 16,
                 "num_epochs": 1, "max_steps": 40, "learning_rate": 0.003, "warmup_steps": 5,
                 "eval_interval": 20, "eval_batches": 2, "checkpoint_interval": 10,
                 "log_interval": 10, "histogram_interval": 40, "sample_tokens": 20,
                 "averaging_frequency": 5},
    "data": {"vocab_size": 300, "window_stride": 4},
    "emr": {"bucket": BUCKET, "prefix": PREFIX, "region": REGION, "core_instance_count": 2},
    "airflow": {"aws_conn_id": CONN_ID, "retries": 1, "retry_delay_s": 1,
                "cluster_waiter_delay_s": 1, "cluster_waiter_max_attempts": 60,
                "step_poke_interval_s": 2, "step_timeout_s": 900, "schedule": None,
                "trigger_on_corpus_update": False},
}  # fmt: skip


def corpus_slice(chars: int = 20_000) -> str:
    """The first `chars` of the bundled Tiny Shakespeare, cut at a paragraph."""
    text = (PROJECT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:chars]
    return text[: text.rfind("\n\n") + 1]


@contextlib.contextmanager
def failure_details_reported() -> Iterator[None]:
    """moto's DescribeStep omits FailureDetails; report the runner's, as EMR does."""
    from moto.emr.models import Step

    plain = Step.status

    def status(self):
        value = plain.fget(self)
        details = getattr(self, "failure_details", None)
        if details:
            value["FailureDetails"] = details
        return value

    Step.status = property(status)
    try:
        yield
    finally:
        Step.status = plain


@dataclass
class DagRunResult:
    state: str
    tasks: dict[str, str]
    run_id: str  # the pipeline's run id (the S3 folder), not Airflow's
    cluster_id: str | None
    wall_s: float


def mark_wheelhouse_staged(s3: Any, bucket: str, prefix: str) -> None:
    """Mark the nodes' wheelhouse of the current lock as staged, as an earlier run leaves it, so
    `stage` reuses it instead of uploading ~310 MB (or asking for `make wheelhouse`): the box's
    nodes run this venv, not the bootstrap action (tests/emr_box/test_offline_bootstrap.py
    installs from a real wheelhouse)."""
    from llm_decoder_airflow import wheelhouse
    from llm_decoder_airflow.files import split_s3

    wheel_bucket, key = split_s3(wheelhouse.manifest_uri(f"s3://{bucket}/{prefix}"))
    s3.put_object(Bucket=wheel_bucket, Key=key, Body=b"{}")


class EmrBox:
    def __init__(self, base_dir: Path, workers: int = 2) -> None:
        self.base_dir = base_dir
        self.workers = workers
        self.endpoint = ""
        # The DAG tags its clusters with this (emr.tags); the step runner runs only those.
        self.tag = ("emr-box", base_dir.name)
        self._stack = contextlib.ExitStack()

    # --- start and stop -------------------------------------------------------------------

    def __enter__(self) -> EmrBox:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        import boto3
        from moto.server import ThreadedMotoServer

        self.base_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        self._stack.callback(server.stop)
        self._stack.enter_context(failure_details_reported())
        self.endpoint = f"http://127.0.0.1:{port}"
        self.s3 = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        )  # fmt: skip
        self.emr = boto3.client(
            "emr", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        )  # fmt: skip
        self.s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        mark_wheelhouse_staged(self.s3, BUCKET, PREFIX)
        # Airflow reaches AWS through a proxy that a test can cut (an API outage).
        self.proxy = self._stack.enter_context(OutageProxy(port))
        self.mount = self.base_dir / "emrfs" / BUCKET
        self._stack.enter_context(S3Mount(BUCKET, self.mount, self.endpoint, REGION, KEY, SECRET))
        self.spark = self._stack.enter_context(
            SparkStandalone(self.base_dir / "nodes", self.node_env(), workers=self.workers)
        )
        self.runner = self._stack.enter_context(
            StepRunner(
                box_tag=self.tag,
                master_url=self.spark.master_url,
                box_dir=self.base_dir,
                cluster_spark_defaults=self.cluster_spark_defaults,
                driver_env=self.node_env(),
                upload_log=self.put_uri,
            )
        )

    def node_env(self) -> dict[str, str]:
        """What every node's processes see of AWS: credentials and the S3 endpoint, no region
        (an EC2 instance profile gives credentials; YARN containers have no AWS_REGION)."""
        return {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": self.endpoint}

    def cluster_spark_defaults(self, requested: dict[str, str]) -> dict[str, str]:
        """The cluster's spark-defaults as EMR would set them, on the box's nodes."""
        import sys

        from llm_decoder_airflow.emr import NODE_PYTHON

        defaults = {k: (sys.executable if v == NODE_PYTHON else v) for k, v in requested.items()}
        defaults.update(hadoop_s3_conf(BUCKET, self.mount))
        # The box's network is loopback (on EMR the nodes' addresses are what they are).
        defaults.update({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"})
        return defaults

    # --- AWS objects ----------------------------------------------------------------------

    def put_uri(self, uri: str, data: bytes) -> None:
        bucket, _, key = uri[len("s3://") :].partition("/")
        self.s3.put_object(Bucket=bucket, Key=key, Body=data)

    def get_uri(self, uri: str) -> bytes:
        bucket, _, key = uri[len("s3://") :].partition("/")
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def put_corpus(self, key: str, text: str | bytes) -> str:
        body = text.encode("utf-8") if isinstance(text, str) else text
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        return f"s3://{BUCKET}/{key}"

    def objects(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    # --- the DAG --------------------------------------------------------------------------

    def write_config(self, corpus_uri: str, **training: Any) -> Path:
        """configs/emr.yaml with the box's sizes; the DAG reads it when parsed."""
        config = yaml.safe_load((PROJECT / "configs" / "emr.yaml").read_text())
        box = copy.deepcopy(BOX_CONFIG)
        box["training"].update(training)
        for section, values in box.items():
            config.setdefault(section, {}).update(values)
        config["data"]["corpus_path"] = corpus_uri
        config["emr"]["tags"] = {**config["emr"].get("tags", {}), self.tag[0]: self.tag[1]}
        path = self.base_dir / "emr.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def airflow_env(self, config_path: Path) -> dict[str, str]:
        connection = {
            "conn_type": "aws",
            "login": KEY,
            "password": SECRET,
            # The connection's region is not the cluster's: only emr.region says where it runs.
            "extra": {"region_name": "us-east-1", "endpoint_url": f"http://127.0.0.1:{self.proxy.port}"},
        }
        return {
            "LLM_DECODER_EMR_CONFIG": str(config_path),
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(connection),
        }

    def run_dag(self, conf: dict[str, Any]) -> DagRunResult:
        """llm_decoder_emr with dag.test(), parsed anew (it reads $LLM_DECODER_EMR_CONFIG)."""
        from airflow.dag_processing.dagbag import DagBag
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from llm_decoder_airflow.pipeline import run_id_from_airflow

        bag = DagBag(dag_folder=str(PROJECT / "dags"))
        if bag.import_errors:
            raise BoxError(f"the DAGs do not parse: {bag.import_errors}")
        dag = bag.get_dag("llm_decoder_emr")
        started = time.monotonic()
        dag_run = dag.test(run_conf=conf)
        wall_s = time.monotonic() - started
        with create_session() as session:
            tis = session.query(TaskInstance).filter(
                TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == dag_run.run_id
            )
            tasks = {ti.task_id: str(ti.state) for ti in tis}
        run_id = run_id_from_airflow(dag_run.run_id)
        return DagRunResult(str(dag_run.state), tasks, run_id, self.cluster_of(run_id), wall_s)

    def cluster_of(self, run_id: str) -> str | None:
        for cluster in self.emr.list_clusters()["Clusters"]:
            tags = self.emr.describe_cluster(ClusterId=cluster["Id"])["Cluster"].get("Tags", [])
            if {"Key": "run_id", "Value": run_id} in tags:
                return cluster["Id"]
        return None

    def outage_during(self, step: str, seconds: float) -> None:
        """Cut Airflow off the AWS API for `seconds` once `step` runs on the cluster (a thread)."""
        import threading

        def wait_then_cut() -> None:
            while not any(r.name.startswith(f"{step} [") and r.state == "RUNNING" for r in self.runner.runs):
                time.sleep(0.2)
            self.proxy.outage(seconds)

        threading.Thread(target=wait_then_cut, name="emr-box-outage", daemon=True).start()

    def summary(self, result: DagRunResult, strategy: str) -> dict[str, Any]:
        """The one-line JSON `make emr-box` prints."""
        cluster = (
            self.emr.describe_cluster(ClusterId=result.cluster_id)["Cluster"] if result.cluster_id else {}
        )
        steps = self.emr.list_steps(ClusterId=result.cluster_id)["Steps"] if result.cluster_id else []
        run_prefix = f"{PREFIX}/runs/{result.run_id}/"
        val_bpc = executors = None
        with contextlib.suppress(Exception):
            summary = json.loads(self.get_uri(f"s3://{BUCKET}/{run_prefix}summary.json"))
            val_bpc = summary.get("val_bits_per_char")
        with contextlib.suppress(Exception):
            spark = json.loads(self.get_uri(f"s3://{BUCKET}/{run_prefix}metrics/spark.json"))
            executors = sum(1 for e in spark["executors"] if e.get("id") != "driver" and e.get("is_active"))
        return {
            "cluster_state": cluster.get("Status", {}).get("State"),
            "steps": {s["Name"].split(" [", 1)[0]: s["Status"]["State"] for s in reversed(steps)},
            "strategy": strategy,
            "executors": executors,
            "s3_objects": len(self.objects(run_prefix)),
            "val_bits_per_char": val_bpc,
            "wall_s": round(result.wall_s, 1),
        }
