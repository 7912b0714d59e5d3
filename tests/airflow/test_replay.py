"""Replay: the exact spark-submit argument lists the EMR DAG sends, run with local Spark.

The EMR DAG runs against moto (the harness completes its steps); the test then reads each
step's Args back from EMR, maps s3://<bucket> to a local folder holding a copy of the staged
code and corpus (in the arguments and in the staged config.yaml, the one record the steps
read), switches the deploy mode to client, and runs them. The outputs must equal
the local DAG's: the same tokenizer, token stream and windows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from airflow_testing import BUCKET, PREFIX
from llm_decoder_airflow.emr import step_of
from llm_decoder_airflow.pipeline import PARAM_TO_CONFIG, spark_submit_binary
from test_emr_dag import all_cluster_ids, clusters_of_run, run_emr_dag

from spark_jobs.common.pipeline import STEP_NAMES

pytestmark = pytest.mark.timeout(600)
REPLAYED = ("preprocess", "window")


def download(s3, prefix: str, target: Path) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            path = target / obj["Key"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())


def localize(args: list[str], bucket_dir: Path) -> list[str]:
    """The EMR step's arguments with s3://<bucket> mapped to a folder and client deploy mode."""
    mapped = [arg.replace(f"s3://{BUCKET}", str(bucket_dir)) for arg in args]
    assert mapped[0] == "spark-submit"
    mapped[0] = spark_submit_binary()
    mode = mapped.index("--deploy-mode")
    mapped[mode + 1] = "client"
    return mapped


def rows(path: Path, keys: list[str]) -> list[dict]:
    table = pq.read_table(str(path))
    return sorted(table.to_pylist(), key=lambda row: tuple(row[k] for k in keys))


# Shares the session's one run of llm_decoder_local (local_run): one worker runs both.
@pytest.mark.xdist_group("local_run")
def test_emr_step_arguments_replayed_locally_equal_the_local_dag(
    local_run, dagbag, harness, s3, emr_client, tmp_path
):
    assert local_run["state"] == "success"
    before = all_cluster_ids(emr_client)
    with harness():
        state = run_emr_dag(dagbag).state
    assert state == "success"
    [cluster] = clusters_of_run(emr_client, before)
    steps = {
        step_of(s["Name"]): emr_client.describe_step(ClusterId=cluster["Id"], StepId=s["Id"])["Step"]
        for s in emr_client.list_steps(ClusterId=cluster["Id"])["Steps"]
    }
    assert set(steps) == set(STEP_NAMES)
    args = {name: step["Config"]["Args"] for name, step in steps.items()}
    assert not any("--set" in step_args for step_args in args.values())  # the config is the one record
    run_id = steps["preprocess"]["Name"].split(" [", 1)[1].rstrip("]")

    bucket_dir = tmp_path / "s3" / BUCKET
    download(s3, f"{PREFIX}/runs/{run_id}/code/", bucket_dir)
    download(s3, "data/", bucket_dir)
    config_path = bucket_dir / PREFIX / "runs" / run_id / "code" / "config.yaml"
    emr_config_text = config_path.read_text()
    config_path.write_text(emr_config_text.replace(f"s3://{BUCKET}", str(bucket_dir)))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    for name in REPLAYED:
        command = localize(args[name], bucket_dir)
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, f"{name}: {command}\n{result.stderr[-3000:]}"

    replayed = bucket_dir / PREFIX / "runs" / run_id
    local = local_run["root"] / "runs" / local_run["run_id"]
    assert (replayed / "preprocess" / "tokenizer.json").read_text() == (
        local / "preprocess" / "tokenizer.json"
    ).read_text()
    tokens = ["doc_id", "seq"]
    assert rows(replayed / "preprocess" / "tokens", tokens) == rows(local / "preprocess" / "tokens", tokens)
    windows = ["part"]  # one chunk row per partition
    for split in ("train", "val"):
        assert rows(replayed / "window" / split, windows) == rows(local / "window" / split, windows)

    # The train step is not replayed (minutes of CPU): its settings must equal the local run's.
    train_args = localize(args["train"], bucket_dir)
    script = next(i for i, a in enumerate(train_args) if a.endswith("train.py"))
    assert "spark.dynamicAllocation.enabled=false" in train_args[:script]
    local_config = yaml.safe_load((local / "code" / "config.yaml").read_text())
    emr_config = yaml.safe_load(emr_config_text)
    assert emr_config["run"]["id"] == run_id and emr_config["run"]["root"] == f"s3://{BUCKET}/{PREFIX}"
    compared = 0
    for key in PARAM_TO_CONFIG.values():  # what the trigger form sets
        if key == "data.corpus_path":
            continue
        section, field = key.split(".")
        assert emr_config[section][field] == local_config[section][field], key
        compared += 1
    assert compared >= 5
