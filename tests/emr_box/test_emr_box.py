"""llm_decoder_emr, unchanged, with every step really executed in the EMR box.

Each test triggers the DAG with dag.test(); the box's runner executes the EMR steps with
spark-submit on a two-worker Spark standalone cluster, and every byte between the steps goes
through the emulated S3 API. The cluster must end TERMINATED whatever happened.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from launchers.emr_box.box import BUCKET, PREFIX, corpus_slice
from launchers.emr_box.steps import REWRITTEN

from spark_jobs.common.pipeline import STEP_NAMES

# The three share one box (conftest.py): one pytest-xdist worker runs them (--dist loadgroup).
pytestmark = [pytest.mark.timeout(900), pytest.mark.xdist_group("box")]


def steps_of(box, cluster_id: str) -> dict[str, dict]:
    steps = box.emr.list_steps(ClusterId=cluster_id)["Steps"]
    return {s["Name"].split(" [", 1)[0]: s for s in steps}


def without_rewritten(args: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in REWRITTEN:
            skip = True
        else:
            kept.append(arg)
    return kept


def cluster_state(box, cluster_id: str) -> str:
    return box.emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]


def run_json(box, run_id: str, name: str) -> dict:
    return json.loads(box.get_uri(f"s3://{BUCKET}/{PREFIX}/runs/{run_id}/{name}"))


def kill_an_executor_after_the_first_checkpoint(box, killed: list[int]) -> threading.Thread:
    """A lost node in the middle of training: once a checkpoint is in S3, kill one executor JVM."""

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if any("/checkpoints/step-" in key for key in box.objects(f"{PREFIX}/runs/")):
                pid = box.spark.kill_executor()
                if pid is not None:
                    killed.append(pid)
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_ddp_on_two_nodes_through_s3_survives_a_lost_executor(box, box_dag):
    corpus = box.put_corpus("data/ddp.txt", corpus_slice())
    box_dag(corpus, strategy="ddp", max_steps=60, checkpoint_interval=10)
    killed: list[int] = []
    kill_an_executor_after_the_first_checkpoint(box, killed)
    result = box.run_dag({"strategy": "ddp"})

    assert result.state == "success", result.tasks
    assert cluster_state(box, result.cluster_id) == "TERMINATED"
    steps = steps_of(box, result.cluster_id)
    assert {name: s["Status"]["State"] for name, s in steps.items()} == dict.fromkeys(STEP_NAMES, "COMPLETED")

    # The box rewrote --master and --deploy-mode only; everything else is what the DAG sent.
    runs = [r for r in box.runner.runs if r.cluster_id == result.cluster_id]
    assert [r.name.split(" [", 1)[0] for r in runs] == list(STEP_NAMES)
    for run in runs:
        described = box.emr.describe_step(ClusterId=run.cluster_id, StepId=run.step_id)["Step"]
        assert run.sent_args == described["Config"]["Args"]
        assert without_rewritten(run.run_args) == without_rewritten(run.sent_args)
        assert any(arg.startswith("s3://") for arg in run.run_args)  # no s3:// rewritten to a path

    summary = run_json(box, result.run_id, "summary.json")
    assert summary["strategy"] == "ddp" and summary["num_workers"] == 2
    assert math.isfinite(summary["val_bits_per_char"]) and summary["val_bits_per_char"] > 0
    spark = run_json(box, result.run_id, "metrics/spark.json")
    executors = [e for e in spark["executors"] if e.get("id") != "driver"]
    assert sum(1 for e in executors if e["is_active"]) == 2, executors  # the barrier tasks ran on both nodes

    # The lost executor's ranks came back and continued from the S3 checkpoint, not from scratch.
    assert killed, "no executor was running after the first checkpoint"
    assert len(executors) == 3 and sum(1 for e in executors if not e["is_active"]) == 1, executors
    [train_run] = [r for r in runs if r.name.startswith("train [")]
    train_log = (train_run.log_dir / "stdout").read_text(errors="replace")
    assert f"resuming from s3://{BUCKET}/{PREFIX}/runs/{result.run_id}/checkpoints/step-" in train_log
    assert summary["steps"] == 60  # every planned step, once
    keys = box.objects(f"{PREFIX}/runs/{result.run_id}/")
    assert any("/checkpoints/" in k for k in keys)
    assert any(k.endswith("/train/model/model.safetensors") for k in keys)
    assert any(k.endswith("/window/train/_SUCCESS") or "/window/_SUCCESS" in k for k in keys)

    # The model in S3 generates text from the CLI, signing for the bucket's region by itself.
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    env.update(box.node_env())
    generated = subprocess.run(
        [str(Path(sys.executable).parent / "llm-decoder"), "generate", "--model", summary["model_uri"],
         "--prompt", "ROMEO:", "--max-new-tokens", "20"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.strip().startswith("ROMEO:") and len(generated.stdout.strip()) > len("ROMEO:")


def test_bad_corpus_fails_preprocess_and_terminates(box, box_dag):
    corpus = box.put_corpus("data/not-text.bin", b"a line of text\n\xff\xfe not UTF-8\n")
    box_dag(corpus, strategy="ddp")
    result = box.run_dag({"strategy": "ddp"})

    assert result.state == "failed"
    assert result.tasks["watch_preprocess"] == "failed"
    assert cluster_state(box, result.cluster_id) == "TERMINATED"
    steps = steps_of(box, result.cluster_id)
    assert steps["preprocess"]["Status"]["State"] == "FAILED"
    assert steps["window"]["Status"]["State"] == "CANCELLED"
    assert steps["train"]["Status"]["State"] == "CANCELLED"
    details = box.emr.describe_step(ClusterId=result.cluster_id, StepId=steps["preprocess"]["Id"])["Step"]
    message = details["Status"]["FailureDetails"]["Message"]
    assert message.startswith("error: preprocess: ") and "not-text.bin" in message
    log_file = details["Status"]["FailureDetails"]["LogFile"]
    assert log_file.startswith("s3://") and box.get_uri(log_file)  # the step's stderr, where EMR puts it


# Longer than botocore's own retries (a few attempts within ~20 s): only the sensors' own
# retries or deferral can ride it out.
OUTAGE_S = 45


def test_parameter_averaging_rides_out_an_emr_api_outage(box, box_dag, capfd):
    corpus = box.put_corpus("data/pa.txt", corpus_slice())
    box_dag(corpus, strategy="parameter_averaging")
    box.outage_during("train", seconds=OUTAGE_S)
    result = box.run_dag({"strategy": "parameter_averaging"})

    assert result.state == "success", result.tasks
    assert box.proxy.outages == 1
    # Airflow really lost the API while the train step ran, past botocore's own retries.
    assert "EMR API not answering (EndpointConnectionError" in capfd.readouterr().out
    steps = steps_of(box, result.cluster_id)
    # The teardown waited for the steps: train was not cut short by a terminated cluster.
    assert {name: s["Status"]["State"] for name, s in steps.items()} == dict.fromkeys(STEP_NAMES, "COMPLETED")
    assert cluster_state(box, result.cluster_id) == "TERMINATED"
    assert [c for c in box.emr.list_clusters()["Clusters"] if c["Name"].endswith(result.run_id)] != []

    summary = run_json(box, result.run_id, "summary.json")
    assert summary["strategy"] == "parameter_averaging" and summary["num_workers"] == 2
    assert math.isfinite(summary["val_bits_per_char"])
    spark = run_json(box, result.run_id, "metrics/spark.json")
    active = [e for e in spark["executors"] if e.get("id") != "driver" and e["is_active"]]
    assert len(active) == 2, spark["executors"]


def test_the_box_runs_only_the_steps_of_its_own_clusters(box):
    """moto's backend is shared by every moto server in the process: a cluster that another test
    made there (no box tag) keeps its steps as they are."""
    spark_step = {"Name": "someone else's", "ActionOnFailure": "CONTINUE",
                  "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "job.py"]}}  # fmt: skip
    other = box.emr.run_job_flow(
        Name="not the box's", ReleaseLabel="emr-7.12.0", JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole_V2", Steps=[spark_step],
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
    )["JobFlowId"]  # fmt: skip
    try:
        time.sleep(2)  # ten of the runner's ticks
        [step] = box.emr.list_steps(ClusterId=other)["Steps"]
        assert step["Status"]["State"] == "RUNNING"  # moto's first state, not moved on
        assert [run for run in box.runner.runs if run.cluster_id == other] == []
    finally:
        box.emr.terminate_job_flows(JobFlowIds=[other])
