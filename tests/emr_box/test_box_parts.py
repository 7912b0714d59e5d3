"""The box's parts that need no cluster: argument rewriting, failure messages, start-up errors."""

from __future__ import annotations

import socket

import pytest
from launchers.emr_box.errors import BoxError
from launchers.emr_box.nodes import SparkStandalone, node_env
from launchers.emr_box.steps import last_error_line, rewrite_args, spark_defaults_of

SENT = [
    "spark-submit", "--deploy-mode", "cluster", "--py-files", "s3://b/code/spark_jobs.zip",
    "--conf", "spark.dynamicAllocation.enabled=false", "--num-executors", "2",
    "s3://b/code/train.py", "--config", "s3://b/code/config.yaml",
]  # fmt: skip


def test_only_master_and_deploy_mode_are_rewritten():
    run = rewrite_args(SENT, "spark://127.0.0.1:7077")
    assert run[:5] == ["spark-submit", "--master", "spark://127.0.0.1:7077", "--deploy-mode", "client"]
    assert run[5:] == [a for a in SENT[1:] if a not in ("--deploy-mode", "cluster")]


def test_a_step_that_is_not_spark_submit_is_refused():
    with pytest.raises(ValueError, match="spark-submit steps only"):
        rewrite_args(["hadoop-streaming", "-files", "x"], "spark://h:1")


def test_the_failure_message_is_our_one_line_error():
    output = "26/11/29 INFO Something\nTraceback ...\nerror: preprocess: s3://b/c.txt: invalid UTF-8\nINFO shutdown"
    assert last_error_line(output) == "error: preprocess: s3://b/c.txt: invalid UTF-8"
    assert last_error_line("x\njava.lang.OutOfMemoryError: heap\nINFO bye").startswith(
        "java.lang.OutOfMemoryError"
    )
    assert last_error_line("") == "(no output)"


def test_spark_defaults_are_read_from_the_cluster_request():
    configurations = [
        {"Classification": "spark-env", "Properties": {}},
        {"Classification": "spark-defaults", "Properties": {"spark.executor.memory": "1g"}},
    ]
    assert spark_defaults_of(configurations) == {"spark.executor.memory": "1g"}


def test_a_node_sees_no_aws_region(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    env = node_env(tmp_path / "worker-1", {"AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    assert "AWS_REGION" not in env and "AWS_DEFAULT_REGION" not in env
    assert env["HOME"] == str(tmp_path / "worker-1" / "home") and env["TMPDIR"] == str(
        tmp_path / "worker-1" / "tmp"
    )


def test_a_taken_port_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(BoxError, match=f"port {port} is taken"),
            SparkStandalone(tmp_path, {}, master_port=port),
        ):
            pass


def test_missing_java_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(BoxError, match="java not found"), SparkStandalone(tmp_path, {}):
        pass
