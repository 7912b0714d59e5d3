"""`make run`'s quiet output: one line per task on the terminal, Airflow's and the children's
output in the log file, the failed task's error line. A three-task DAG run by dag.test() in a
subprocess (the real stdout), with the launcher's own pieces (launchers.progress)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from airflow_testing import REPO

TINY_DAG = """
import subprocess
import sys

from airflow.sdk import DAG, task

with DAG("tiny_progress", schedule=None, default_args={"retries": 0}):

    @task
    def quick():
        print("quick's own print")
        subprocess.run(["echo", "a child process writes here"], check=True)

    @task
    def broken():
        message = "error: " + "broken: the corpus is empty"
        print(message, file=sys.stderr)
        raise RuntimeError("broken step failed (exit 1): " + message)

    @task
    def after():
        pass

    quick() >> broken() >> after()
"""

DRIVER = """
import sys
from pathlib import Path

from launchers.progress import quiet_output, run_dag

with quiet_output(Path(sys.argv[1])) as console:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=sys.argv[2]).get_dag("tiny_progress")
    dag_run = run_dag(dag, {}, console)
print(f"run ended {dag_run.state}")
"""


@pytest.fixture(scope="module")
def quiet_run(airflow_db, tmp_path_factory) -> dict:
    """The tiny DAG run quietly on a copy of the tests' migrated DB (its own DAG folder)."""
    tmp = tmp_path_factory.mktemp("quiet-run")
    (tmp / "dags").mkdir()
    (tmp / "dags" / "tiny_progress.py").write_text(TINY_DAG)
    (tmp / "driver.py").write_text(textwrap.dedent(DRIVER))
    home = Path(os.environ["AIRFLOW_HOME"])
    shutil.copy(home / "airflow.db", tmp / "airflow.db")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp),
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp / 'airflow.db'}",
        "PYTHONPATH": str(REPO / "plugins"),
    }
    log = tmp / "logs" / "run.log"
    done = subprocess.run(
        [sys.executable, str(tmp / "driver.py"), str(log), str(tmp / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return {"done": done, "log": log.read_text() if log.exists() else ""}


def test_one_line_per_task_start_and_end(quiet_run):
    done = quiet_run["done"]
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    pattern = [
        r"  quick +running…",
        r"  quick +success +\d+\.\d s",
        r"  broken +running…",
        r"  broken +failed +\d+\.\d s",
        r"  after +upstream_failed",
        r"run ended failed",
    ]
    assert len(lines) == len(pattern), done.stdout
    for line, expected in zip(lines, pattern, strict=True):
        assert re.fullmatch(expected, line), (line, done.stdout)


def test_the_failed_tasks_error_line_is_on_stderr_and_nothing_of_airflow(quiet_run):
    done = quiet_run["done"]
    assert done.stderr.strip().splitlines() == ["broken failed:", "  error: broken: the corpus is empty"]
    for noise in ("[info", "[DAG TEST]", "DagBag", "Traceback", "a child process"):
        assert noise not in done.stdout + done.stderr


def test_the_log_file_has_airflow_and_the_childrens_output(quiet_run):
    log = quiet_run["log"]
    assert "[DAG TEST] starting task_id=quick" in log  # Airflow's structlog (fd 1)
    assert "quick's own print" in log  # the task's print
    assert "a child process writes here" in log  # a child inherits the redirected fds
    assert "error: broken: the corpus is empty" in log  # the task's stderr (fd 2)
    assert "RuntimeError: broken step failed" in log  # the traceback


@pytest.mark.parametrize(("verbose", "flag"), [("", False), ("1", True), ("0", False)])
def test_make_run_passes_verbose(verbose, flag):
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", "run", f"VERBOSE={verbose}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    # under `make test` this make is a sub-make: only the recipe's own line counts
    [command] = [line for line in dry.stdout.splitlines() if "launchers.run_local" in line]
    assert "-m launchers.run_local" in command
    assert command.endswith("--verbose") is flag


def test_error_lines_finds_our_line_in_the_failed_tasks_part_of_the_log():
    from launchers.progress import error_lines

    log = textwrap.dedent("""\
        2026-11-29T10:37:40.1Z [info     ] [DAG TEST] starting task_id=preprocess map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
        2026-11-29T10:37:41.2Z [info     ] error: preprocess: first try [llm_decoder_airflow.tasks] loc=tasks.py:243
        2026-11-29T10:37:42.1Z [info     ] [DAG TEST] end task task_id=preprocess map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
        2026-11-29T10:37:50.1Z [info     ] [DAG TEST] starting task_id=preprocess map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
        2026-11-29T10:37:51.2Z [info     ] 26/11/29 10:37:51 WARN Foo: error: not ours [llm_decoder_airflow.tasks] loc=tasks.py:243
        2026-11-29T10:37:52.2Z [info     ] error: preprocess: corpus not found: /data/x.txt [llm_decoder_airflow.tasks] loc=tasks.py:243
        2026-11-29T10:37:52.3Z [error    ] Task failed with exception     [task] loc=task_runner.py:1676
            raise RuntimeError(f"{step_name} step failed (exit {process.returncode}): {reason}")
        RuntimeError: preprocess step failed (exit 1): error: preprocess: corpus not found: /data/x.txt
        2026-11-29T10:37:52.4Z [info     ] [DAG TEST] end task task_id=preprocess map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
        2026-11-29T10:37:53.1Z [info     ] [DAG TEST] starting task_id=train map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
        2026-11-29T10:37:53.2Z [info     ] error: train: another task [llm_decoder_airflow.tasks] loc=tasks.py:243
        """)
    assert error_lines(log, "preprocess") == ["error: preprocess: corpus not found: /data/x.txt"]
    # Without our line: the task's last lines that name an error.
    assert error_lines(log.replace("error: preprocess", "gone"), "preprocess", count=1) == [
        "RuntimeError: preprocess step failed (exit 1): gone: corpus not found: /data/x.txt"
    ]
