"""Scheduled retraining seen end to end through a real scheduler, triggerer and PostgreSQL.

The stack (conftest.py) is `make stack` itself: nothing here calls Airflow in-process. Runs start
the way they start in production: an Asset event posted through the REST API, a cron.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from launchers.airflow_api import wait_for

REPO = Path(__file__).resolve().parents[2]
StackUnderTest = Any  # conftest.py's: the launcher's process, its home, a REST client, EMR

pytestmark = [pytest.mark.xdist_group("stack"), pytest.mark.timeout(900)]

LOCAL, EMR = "llm_decoder_local", "llm_decoder_emr"
RUN_TIMEOUT_S = 420


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _runs(stack: StackUnderTest, dag_id: str, run_type: str) -> list[dict]:
    runs = [r for r in stack.api.dag_runs(dag_id) if r["run_type"] == run_type]
    return sorted(runs, key=lambda r: r["run_after"])


def _ended(stack: StackUnderTest, dag_id: str, run_id: str) -> dict:
    """Wait for the run to end; a failure names its task states and the stack's output."""

    def ended():
        run = next((r for r in stack.api.dag_runs(dag_id) if r["dag_run_id"] == run_id), None)
        return run if run and run["state"] in ("success", "failed") else None

    run = wait_for(ended, RUN_TIMEOUT_S, f"run {run_id} to end", 3)
    if run["state"] != "success":
        pytest.fail(f"{dag_id} {run_id}: {run['state']}, tasks {stack.api.task_states(dag_id, run_id)}")
    return run


def test_a_second_start_is_refused_naming_the_first(stack: StackUnderTest) -> None:
    state = json.loads((stack.home / "stack.json").read_text())
    second = subprocess.run(
        [sys.executable, "-m", "launchers.stack", "--home", str(stack.home)],
        env={**os.environ, "PYTHONPATH": str(REPO / "plugins")}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 1
    message = second.stderr.strip().splitlines()[-1]
    assert "already running" in message, second.stderr
    assert f"launcher pid {stack.process.pid}" in message
    for name in ("api-server", "scheduler", "dag-processor", "triggerer", "postgres"):
        assert f"{name} {state['pids'][name]}" in message, message
    assert stack.process.poll() is None  # the first one is untouched


def test_corpus_updates_start_runs_one_behind_the_other(stack: StackUnderTest) -> None:
    """(a) an Asset event starts llm_decoder_local, which trains and promotes; (c) a second
    event while that run is active waits behind it (max_active_runs=1) and runs after."""
    from llm_decoder_airflow.pipeline import run_id_from_airflow

    api = stack.api
    wait_for(lambda: api.call("GET", f"/api/v2/dags/{LOCAL}")[0] == 200, 300, f"{LOCAL} parsed")
    api.unpause(LOCAL)
    asset = wait_for(lambda: api.asset_id("llm_decoder_local_corpus"), 120, "the corpus asset")

    api.post_asset_event(asset, {"source": "test", "update": 1})
    first = wait_for(lambda: [r for r in _runs(stack, LOCAL, "asset_triggered") if r["state"] == "running"],
                     180, "the first corpus update's run to start")[0]  # fmt: skip
    api.post_asset_event(asset, {"source": "test", "update": 2})

    # While the first runs, the second never does.
    def first_ended():
        runs = _runs(stack, LOCAL, "asset_triggered")
        if next(r for r in runs if r["dag_run_id"] == first["dag_run_id"])["state"] != "running":
            return True
        running = [r["dag_run_id"] for r in runs if r["state"] == "running"]
        assert running == [first["dag_run_id"]], running
        return None

    wait_for(first_ended, RUN_TIMEOUT_S, "the first run to end", 3)
    first = _ended(stack, LOCAL, first["dag_run_id"])
    second = wait_for(lambda: [r for r in _runs(stack, LOCAL, "asset_triggered") if r["dag_run_id"] !=
                               first["dag_run_id"]], 120, "the second corpus update's run")[0]  # fmt: skip
    # It runs after the first: its first task succeeds. Its success would add nothing the first
    # did not show, so the test stops it there (the suite's time is counted).
    second_id = second["dag_run_id"]
    wait_for(
        lambda: api.task_states(LOCAL, second_id).get("prepare") == "success", 180, "the second run's start"
    )
    second = next(r for r in api.dag_runs(LOCAL) if r["dag_run_id"] == second_id)
    assert _when(second["start_date"]) >= _when(first["end_date"])
    path = f"/api/v2/dags/{LOCAL}/dagRuns/{urllib.parse.quote(second_id, safe='')}"
    stopped = api.call("PATCH", path, {"state": "failed"})
    assert stopped[0] == 200, stopped

    # The first trained, scored the full validation split and became the champion.
    champion = json.loads((stack.local_root / "models" / "champion.json").read_text())
    assert champion["run_id"] == run_id_from_airflow(first["dag_run_id"])
    summary = stack.local_root / "runs" / champion["run_id"] / "metrics" / "summary.json"
    assert json.loads(summary.read_text())["val_bits_per_char"] > 0


def test_a_cron_starts_the_emr_dag_whose_sensors_wait_on_the_triggerer(stack: StackUnderTest) -> None:
    """(b) a cron due within a minute starts a run by itself; (d) its step sensors defer to the
    triggerer, which watches the steps on the moto server; the run succeeds, the cluster ends."""
    from llm_decoder_airflow.pipeline import run_id_from_airflow

    api = stack.api
    wait_for(lambda: api.call("GET", f"/api/v2/dags/{EMR}")[0] == 200, 300, f"{EMR} parsed")
    api.unpause(EMR)
    try:
        run = wait_for(lambda: _runs(stack, EMR, "scheduled"), 150, "the cron to start a run", 3)[0]
        run = _ended(stack, EMR, run["dag_run_id"])
    finally:
        # One scheduled run is enough (a paused DAG's runs stop too: pause only once it ended).
        api.call("PATCH", f"/api/v2/dags/{EMR}", {"is_paused": True})

    states = stack.api.task_states(EMR, run["dag_run_id"])
    watchers = sorted(task for task in states if task.startswith("watch_"))
    assert watchers and all(states[task] == "success" for task in watchers), states
    # Only this run's cluster: on a fast machine the next minute's run can start between the end
    # of this one and the pause, and be running its own.
    own = [
        c
        for c in stack.emr.list_clusters()["Clusters"]
        if c["Name"].endswith(run_id_from_airflow(run["dag_run_id"]))
    ]
    assert len(own) == 1 and own[0]["Status"]["State"].startswith("TERMINATED"), own
    steps = stack.emr.list_steps(ClusterId=own[0]["Id"])["Steps"]
    assert sorted(step["Status"]["State"] for step in steps) == ["COMPLETED"] * 3, steps
    # Each sensor waited in the triggerer process, not on a worker slot: the triggerer's log of
    # the task (attempt=N.log.trigger.<triggerer job>.log) shows its StepStateTrigger polling.
    run_logs = stack.home / "logs" / f"dag_id={EMR}" / f"run_id={run['dag_run_id']}"
    for task in watchers:
        trigger_logs = list((run_logs / f"task_id={task}").glob("attempt=*.log.trigger.*.log"))
        assert trigger_logs, f"{task} never deferred to the triggerer"
        polled = "".join(log.read_text() for log in trigger_logs)
        assert "starting" in polled and ": RUNNING" in polled, polled[-1500:]


def _gone(pid: int, within_s: float = 10) -> bool:
    """The process ended (a zombie waiting for init to reap it counts as ended)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.2)
    return False


def test_ctrl_c_stops_every_process_and_the_database(stack: StackUnderTest) -> None:
    from launchers.stack import marked_processes

    state = json.loads((stack.home / "stack.json").read_text())
    stack.process.send_signal(signal.SIGINT)
    assert stack.process.wait(timeout=120) == 0, stack.output()
    assert "stopped" in stack.output().splitlines()[-1]
    assert marked_processes(stack.home) == []  # no service, no task, no spark-submit left
    for name, pid in state["pids"].items():
        assert _gone(pid), f"{name} ({pid}) still runs"
    for name in ("api", "postgres"):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", state["ports"][name])) != 0, f"{name} port still answers"
    assert not (stack.home / "stack.json").exists()
