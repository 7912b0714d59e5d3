"""One `make stack` for the tests in this folder: PostgreSQL and Airflow's api-server, scheduler,
dag-processor and triggerer as separate processes (LocalExecutor), started by the real launcher
(`python -m launchers.stack`) and stopped the way a person stops it, with Ctrl-C (SIGINT).

The stack serves this repository's DAGs with small configs: llm_decoder_local on a 20 kB corpus
slice (its corpus Asset starts runs), llm_decoder_emr against a moto server in this process on
a cron of every minute, its steps moved on by the EMR harness (moto never runs a step).

All tests here share the one stack, so they run on one pytest-xdist worker (`xdist_group`, with
the Makefile's `--dist loadgroup`), in file order, and the test that stops it runs last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "airflow"))  # the EMR harness and the tests' configs

from airflow_testing import (  # noqa: E402
    BUCKET,
    CORPUS_KEY,
    FAST_AIRFLOW,
    PREFIX,
    REGION,
    TINY,
    EmrHarness,
    corpus_slice,
    mark_wheelhouse_staged,
)
from launchers.airflow_api import AirflowApi  # noqa: E402

START_TIMEOUT_S = 420  # PostgreSQL, the migration and four services on a busy 2-core machine
STOP_LAST = "test_ctrl_c_stops_every_process_and_the_database"

# llm_decoder_local's defaults in the stack (the browser test changes epochs and model kind).
LOCAL_CONFIG = {
    "spark": {"master": "local[2]", "driver_memory": "1g", "target_partition_size": 5000},
    "model": {"kind": "gpt", "window_size": 16, "embedding_size": 32, "hidden_size": 64, "num_layers": 1,
              "num_heads": 2},
    "training": {"strategy": "single", "batch_size": 16, "num_epochs": 1, "learning_rate": 0.003,
                 "warmup_steps": 5, "eval_interval": 20, "eval_batches": 4, "checkpoint_interval": 50,
                 "log_interval": 5, "sample_tokens": 20},
    "data": {"vocab_size": 300, "window_stride": 16},
}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The stop test after every other stack test (they share the stack it stops)."""
    stop = [item for item in items if item.name == STOP_LAST]
    if stop:
        items[:] = [item for item in items if item.name != STOP_LAST] + stop


@dataclass
class StackUnderTest:
    process: subprocess.Popen
    home: Path
    url: str
    api: AirflowApi
    local_root: Path
    out: Path
    harness: EmrHarness
    emr: object

    def output(self) -> str:
        return self.out.read_text(errors="replace")


def _open_to_postgres(folder: Path) -> None:
    """Our scratch folders are 0700; the database runs as `postgres` when we are root and must
    reach its own folder below them."""
    if os.geteuid() != 0:
        return
    for parent in [folder, *folder.parents]:
        if parent == Path("/tmp") or parent == Path("/"):
            break
        if parent.stat().st_uid == 0:
            parent.chmod(parent.stat().st_mode | 0o011)


def _free_port() -> int:
    from launchers.emr_box.nodes import free_port

    return free_port()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackUnderTest]:
    import boto3
    from moto.server import ThreadedMotoServer

    base = tmp_path_factory.mktemp("stack")
    _open_to_postgres(base)

    # llm_decoder_local: a corpus slice; runs under base/root.
    corpus = base / "corpus.txt"
    corpus.write_text(corpus_slice(), encoding="utf-8")
    local = {**LOCAL_CONFIG, "data": {**LOCAL_CONFIG["data"], "corpus_path": str(corpus)}}
    local["airflow"] = {"retries": 0, "local_root": str(base / "root")}
    (base / "local.yaml").write_text(yaml.safe_dump(local, sort_keys=False))

    # llm_decoder_emr: moto here, a cron of every minute, sensors deferred to the triggerer.
    moto_port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{moto_port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                      aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=CORPUS_KEY, Body=corpus_slice().encode())
    mark_wheelhouse_staged(s3, BUCKET, PREFIX)
    emr = yaml.safe_load((REPO / "configs" / "emr.yaml").read_text())
    for section, values in TINY.items():
        emr[section].update(values)
    emr["training"]["ddp_local_mode"] = True
    emr["data"]["corpus_path"] = f"s3://{BUCKET}/{CORPUS_KEY}"
    emr["emr"].update({"bucket": BUCKET, "prefix": PREFIX, "region": REGION})
    emr["airflow"].update(
        {
            **FAST_AIRFLOW,
            "schedule": "* * * * *",
            "trigger_on_corpus_update": False,
            "deferrable_sensors": True,
        }
    )
    (base / "emr.yaml").write_text(yaml.safe_dump(emr, sort_keys=False))

    connection = (
        '{"conn_type": "aws", "login": "test", "password": "test", '
        f'"extra": {{"region_name": "{REGION}", "endpoint_url": "{endpoint}"}}}}'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}  # not the tests' DB
    env.update(
        {
            "PYTHONPATH": str(REPO / "plugins"),
            "LLM_DECODER_LOCAL_CONFIG": str(base / "local.yaml"),
            "LLM_DECODER_EMR_CONFIG": str(base / "emr.yaml"),
            "AIRFLOW_CONN_AWS_DEFAULT": connection,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": REGION,
        }
    )
    home = base / "home"
    out = base / "stack.out"
    with open(out, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "launchers.stack", "--home", str(home), "--port", str(_free_port())],
            env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,  # our SIGINT reaches the launcher alone, as Ctrl-C would
        )  # fmt: skip
    # Steps that run for a while: each sensor finds its step RUNNING and defers to the triggerer.
    harness = EmrHarness(s3, step_seconds=12)
    harness.__enter__()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Airflow UI: " not in out.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the stack did not start:\n{out.read_text(errors='replace')}")
            time.sleep(1)
        url = out.read_text().split("Airflow UI: ", 1)[1].split()[0]
        password = yaml.safe_load((home / "passwords.json").read_text())["admin"]
        yield StackUnderTest(
            process, home, url, AirflowApi(url, "admin", password), base / "root", out, harness,
            boto3.client("emr", endpoint_url=endpoint, region_name=REGION,
                         aws_access_key_id="test", aws_secret_access_key="test"),
        )  # fmt: skip
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        harness.__exit__(None, None, None)
        moto.stop()
