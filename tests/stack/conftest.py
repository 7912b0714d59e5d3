"""One `make stack` for the tests in this folder: PostgreSQL and Airflow's api-server, scheduler,
dag-processor and triggerer as separate processes (LocalExecutor), started by the real launcher
(`python -m launchers.stack`) and stopped the way a person stops it, with Ctrl-C (SIGINT).

The stack serves this repository's DAGs with small configs: llm_decoder_local on a 20 kB corpus
slice (its corpus Asset starts runs), llm_decoder_emr against a moto server in this process on
a cron of every minute, its steps moved on by the EMR harness of tests/airflow/moto_emr.py
(moto never runs a step).

All tests here share the one stack, so they run on one pytest-xdist worker (`xdist_group`, with
the Makefile's `--dist loadgroup`), in file order, and the test that stops it runs last.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
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
    PREFIX,
    REGION,
    corpus_slice,
    emr_test_config,
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
    emr: object

    def output(self) -> str:
        return self.out.read_text(errors="replace")


def _free_port() -> int:
    from launchers.emr_box.nodes import free_port

    return free_port()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackUnderTest]:
    import boto3

    base = tmp_path_factory.mktemp("stack")
    # The stack's home (and its database) outside pytest's folders: pytest makes its root folder
    # 0700 again whenever a session starts, and the database runs as `postgres` when we are root.
    home = Path(tempfile.mkdtemp(prefix="llm-decoder-stack-", dir="/tmp"))
    home.chmod(0o711)

    if os.environ.get("LLM_DECODER_SCREENSHOTS"):
        # Refreshing the README's screenshots: configs/local.yaml as it ships (the bundled corpus,
        # the default model, ./output), so the pictures show what a user's `make stack` shows.
        local = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
        local["airflow"] = {"retries": 0}
        local_root = REPO / "output"
    else:
        # llm_decoder_local: a corpus slice; runs under base/root.
        corpus = base / "corpus.txt"
        corpus.write_text(corpus_slice(), encoding="utf-8")
        local = {**LOCAL_CONFIG, "data": {**LOCAL_CONFIG["data"], "corpus_path": str(corpus)}}
        local_root = base / "root"
        local["airflow"] = {"retries": 0, "local_root": str(local_root)}
    (base / "local.yaml").write_text(yaml.safe_dump(local, sort_keys=False))

    # llm_decoder_emr: a cron of every minute, sensors deferred to the triggerer, against moto in
    # its own process (tests/airflow/moto_emr.py: its EMR harness ends a step only once it was
    # seen RUNNING twice, by the sensor's first poke and then by its trigger, however slowly the
    # scheduler starts the sensor; a fixed time was raced under load). Not in this process:
    # moto's backends are global, and this worker's later EMR tests would share them with a
    # harness that moves their steps.
    moto_port = _free_port()
    moto_log = base / "moto.out"
    with open(moto_log, "wb") as sink:
        moto = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "airflow" / "moto_emr.py"), "--port", str(moto_port),
             "--step-seconds", "2", "--until-watched", "2"],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    endpoint = f"http://127.0.0.1:{moto_port}"
    deadline = time.monotonic() + 120
    while "moto with EMR steps on" not in moto_log.read_text(errors="replace"):
        if moto.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"moto did not start:\n{moto_log.read_text(errors='replace')}")
        time.sleep(0.5)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                      aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    mark_wheelhouse_staged(s3, BUCKET, PREFIX)
    emr = emr_test_config(schedule="* * * * *", trigger_on_corpus_update=False, deferrable_sensors=True)
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
    out = base / "stack.out"
    with open(out, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "launchers.stack", "--home", str(home), "--port", str(_free_port())],
            env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,  # our SIGINT reaches the launcher alone, as Ctrl-C would
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Airflow UI: " not in out.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the stack did not start:\n{out.read_text(errors='replace')}")
            time.sleep(1)
        url = out.read_text().split("Airflow UI: ", 1)[1].split()[0]
        password = yaml.safe_load((home / "passwords.json").read_text())["admin"]
        yield StackUnderTest(
            process, home, url, AirflowApi(url, "admin", password), local_root, out,
            boto3.client("emr", endpoint_url=endpoint, region_name=REGION,
                         aws_access_key_id="test", aws_secret_access_key="test"),
        )  # fmt: skip
    finally:
        if process.poll() is None:  # the stop test did not run or failed: stop it anyway
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        moto.terminate()  # SIGTERM: moto_emr.py stops its harness and server
        try:
            moto.wait(timeout=30)
        except subprocess.TimeoutExpired:
            moto.kill()
        shutil.rmtree(home, ignore_errors=True)
