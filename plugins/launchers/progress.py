"""`make run`'s quiet output: Airflow's and Spark's logs go to a file, the terminal gets one
line per task as it starts and as it ends.

dag.test() runs every task in this process and logs through structlog to stdout, and each
step's spark-submit (a child process) writes to the fds it inherits: so `quiet_output`
redirects file descriptors 1 and 2 themselves, not sys.stdout. The task lines come from a
separate channel: `TaskProgress`, a thread that polls the run's task instances in the
metadata DB and writes to a duplicate of the original stdout.

    with quiet_output(log_path) as console, TaskProgress(dag, console.out):
        dag_run = dag.test()
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ENDED = {"success", "failed", "skipped", "upstream_failed", "removed", "up_for_retry"}
RAN = {"success", "failed", "up_for_retry"}  # ended states that mean the task did run
# Our steps print exactly one `error: <step>: …` line before exiting non-zero: find it as a raw
# line, as a structlog message (the step's output relayed by the task) or in the exception.
OUR_ERROR = re.compile(r"^(?:\S+ \[\w+ *\] |\w+(?:Error|Exception): .*?)?(error: .+)$")
# What structlog appends to a message: `  [logger.name] key=value ...`
LOG_SUFFIX = re.compile(r"\s+\[[\w.<>]+\]( \w+=.*)?$")


@dataclass
class Console:
    """The terminal's stdout and stderr, whatever fds 1 and 2 point at meanwhile."""

    out: TextIO
    err: TextIO
    log_path: Path | None = None


@contextmanager
def quiet_output(log_path: Path) -> Iterator[Console]:
    """Send fds 1 and 2 (this process's and its children's output) to `log_path` for the block."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = Console(
        os.fdopen(saved_out, "w", buffering=1, errors="replace"),
        os.fdopen(saved_err, "w", buffering=1, errors="replace"),
        log_path,
    )
    # A pipe or file gets a block-buffered sys.stdout: flush per line so the log stays in order.
    line_buffered = getattr(sys.stdout, "line_buffering", None)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    if line_buffered is False:
        sys.stdout.reconfigure(line_buffering=True)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if line_buffered is False:
            sys.stdout.reconfigure(line_buffering=False)
        os.dup2(console.out.fileno(), 1)
        os.dup2(console.err.fileno(), 2)
        console.out.close()
        console.err.close()


@contextmanager
def loud_output() -> Iterator[Console]:
    """VERBOSE: everything on the terminal, as it comes."""
    yield Console(sys.stdout, sys.stderr)


@dataclass
class _Task:
    started: float | None = None  # monotonic time we saw it start (the fallback duration)
    state: str | None = None
    tries_reported: set[int] = field(default_factory=set)


class TaskProgress:
    """Print `  <task>  running…` and `  <task>  <state>  <seconds> s` for the next run of `dag`.

    Use as a context manager around dag.test(): the run is the first one created after entry.
    """

    def __init__(self, dag: Any, out: TextIO, interval_s: float = 0.5) -> None:
        self.dag_id = dag.dag_id
        self.out = out
        self.interval_s = interval_s
        self.width = max((len(t) for t in dag.task_ids), default=10) + 2
        self.order = {task_id: i for i, task_id in enumerate(dag.task_ids)}
        self.tasks: dict[str, _Task] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="task-progress", daemon=True)
        self._after_id = self._newest_run_id()

    def __enter__(self) -> TaskProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.poll()  # whatever ended since the last look

    def _watch(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                self.poll()
            except Exception as error:  # noqa: BLE001 (a busy SQLite must not end the reporting)
                print(f"  (progress: {error.__class__.__name__}: {error})", file=self.out)

    def _newest_run_id(self) -> int:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import func, select

        with create_session() as session:
            return session.scalar(select(func.max(DagRun.id)).where(DagRun.dag_id == self.dag_id)) or 0

    def _task_instances(self) -> list[tuple[str, str | None, int, float | None]]:
        """(name, state, try number, seconds it ran) of the run's task instances, in running order."""
        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.utils.session import create_session
        from sqlalchemy import select

        query = (
            select(TI.task_id, TI.map_index, TI.state, TI.try_number, TI.start_date, TI.end_date)
            .join(DagRun, (DagRun.dag_id == TI.dag_id) & (DagRun.run_id == TI.run_id))
            .where(DagRun.dag_id == self.dag_id, DagRun.id > self._after_id)
        )
        with create_session() as session:
            rows = session.execute(query).all()
        # Started tasks by start time, then the rest (skipped, upstream_failed) in the DAG's order.
        rows.sort(
            key=lambda row: (row.start_date is None, row.start_date or 0, self.order.get(row.task_id, 0))
        )
        return [
            (
                task_id if map_index < 0 else f"{task_id}[{map_index}]",
                getattr(state, "value", state),
                try_number,
                (end - start).total_seconds() if start and end else None,
            )
            for task_id, map_index, state, try_number, start, end in rows
        ]

    def poll(self) -> None:
        for name, state, try_number, seconds in self._task_instances():
            task = self.tasks.setdefault(name, _Task())
            if state == task.state:
                continue
            task.state = state
            if state in ("queued", "running", "deferred", "up_for_reschedule") and task.started is None:
                self._start_line(name, task)
            elif state in ENDED and try_number not in task.tries_reported:
                if state in RAN and task.started is None:
                    self._start_line(name, task)  # began and ended between two looks
                task.tries_reported.add(try_number)
                if seconds is None and task.started is not None:
                    seconds = time.monotonic() - task.started
                took = f"{seconds:6.1f} s" if seconds is not None and state in RAN else ""
                self._line(f"  {name:<{self.width}}{state:<10}{took}".rstrip())
                task.started = None  # a retry starts afresh

    def _start_line(self, name: str, task: _Task) -> None:
        task.started = time.monotonic()
        self._line(f"  {name:<{self.width}}running…")

    def _line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def failed(self) -> list[str]:
        return [name for name, task in self.tasks.items() if task.state == "failed"]


def error_lines(log: str, name: str, count: int = 3) -> list[str]:
    """Task `name`'s last `error: ` lines in the log text, else its last lines naming an error."""
    lines = log.splitlines()
    # dag.test() logs "[DAG TEST] starting task_id=X map_index=N" and "... end task task_id=X ...".
    task_id, _, index = name.rstrip("]").partition("[")
    marker = f"task_id={task_id} map_index={index or -1}"
    starts = [i for i, line in enumerate(lines) if "[DAG TEST] starting" in line and marker in line]
    lines = lines[starts[-1] if starts else 0 :]
    ends = [i for i, line in enumerate(lines) if "[DAG TEST] end task" in line and marker in line]
    lines = [line.strip() for line in lines[: ends[0] if ends else None] if line.strip()]
    ours = [LOG_SUFFIX.sub("", m.group(1)) for m in map(OUR_ERROR.match, lines) if m]
    if ours:
        return list(dict.fromkeys(ours))[-count:]
    named = [line for line in lines if "Error" in line or "Exception" in line]
    return (named or lines)[-count:]


def run_dag(dag: Any, conf: dict[str, Any], console: Console) -> Any:
    """dag.test(run_conf=conf): quiet (console.log_path set), a line per task and, when the run
    fails, each failed task's error lines and where the full log is; returns the DagRun."""
    if console.log_path is None:
        return dag.test(run_conf=conf)
    with TaskProgress(dag, console.out) as progress:
        dag_run = dag.test(run_conf=conf)
    for name in progress.failed():
        print(f"\n{name} failed:", file=console.err)
        for line in error_lines(console.log_path.read_text(errors="replace"), name):
            print(f"  {line}", file=console.err)
    return dag_run
