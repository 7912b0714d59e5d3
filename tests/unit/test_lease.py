"""One writer per run: the run lease refuses a second writer, and a dead writer's lease is taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spark_jobs.common import lease, storage
from spark_jobs.common.errors import InputError
from spark_jobs.common.lease import LEASE_FILE, run_lease


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    run = str(tmp_path / "runs" / "r1")
    with run_lease(run, "preprocess"):
        with pytest.raises(InputError, match=r"being written by the preprocess step of pid \d+ on "):
            with run_lease(run, "window"):
                pass
        assert (Path(run) / LEASE_FILE).exists()
    assert not (Path(run) / LEASE_FILE).exists()  # given back


def test_a_run_root_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "root").write_text("not a folder")
    with pytest.raises(InputError, match=r"cannot take the lease .*root/runs/r1/_LEASE: Not a directory$"):
        with run_lease(str(tmp_path / "root" / "runs" / "r1"), "train"):
            pass


def test_the_lease_is_given_back_when_the_step_fails(tmp_path):
    run = str(tmp_path / "r")
    with pytest.raises(RuntimeError), run_lease(run, "train"):
        raise RuntimeError("boom")
    with run_lease(run, "train"):  # free again
        pass


def _write_lease(run: str, **fields) -> None:
    record = {"owner": "someone", "step": "train", "host": socket.gethostname(), "pid": 1,
              "taken": time.time(), "heartbeat": time.time(), **fields}  # fmt: skip
    storage.write_text(storage.join(run, LEASE_FILE), json.dumps(record))


def test_a_killed_writer_on_this_host_is_taken_over_at_once(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    run = str(tmp_path / "r")
    _write_lease(run, pid=int(finished.stdout))  # a fresh heartbeat, but the process is gone
    with run_lease(run, "train"):
        assert json.loads((Path(run) / LEASE_FILE).read_text())["owner"] != "someone"


def test_a_lease_without_heartbeat_expires(tmp_path):
    run = str(tmp_path / "r")
    _write_lease(run, host="another-node", heartbeat=time.time() - lease.EXPIRE_S - 1)
    with run_lease(run, "train"):
        pass
    _write_lease(run, host="another-node")  # alive on another node: refused
    with pytest.raises(InputError, match="on another-node"):
        with run_lease(run, "train"):
            pass


def test_the_heartbeat_is_renewed(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.1)
    run = str(tmp_path / "r")
    with run_lease(run, "train"):
        first = json.loads((Path(run) / LEASE_FILE).read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads((Path(run) / LEASE_FILE).read_text())["heartbeat"] > first


def test_on_s3_a_second_writer_is_refused(s3_endpoint, monkeypatch):
    import boto3

    monkeypatch.setattr(lease, "_S3_SETTLE_S", 0.05)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="leases")
    run = "s3://leases/root/runs/r1"
    with run_lease(run, "window"):
        with pytest.raises(InputError, match="being written by the window step"):
            with run_lease(run, "train"):
                pass
    assert not storage.exists(storage.join(run, LEASE_FILE))


def test_a_step_on_a_run_in_use_exits_with_one_line(tmp_path, small_corpus):
    root = tmp_path / "root"
    with run_lease(str(root / "runs" / "busy"), "train"):
        result = subprocess.run(
            [str(Path(sys.executable).parent / "llm-decoder"), "preprocess", "--set", f"run.root={root}",
             "--set", "run.id=busy", "--set", f"data.corpus_path={small_corpus}"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "is being written by the train step of pid" in result.stderr
    assert not (root / "runs" / "busy" / "preprocess").exists()
