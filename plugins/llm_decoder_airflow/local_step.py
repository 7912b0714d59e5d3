"""The local DAG's step task: one pipeline step run by the local spark-submit.

A TaskFlow @task cannot stop the process it started when Airflow kills the task: its on_kill
does nothing, and Airflow's SIGTERM handler only calls on_kill. This operator remembers the
step's spark-submit and ends its whole process group from on_kill; the execution timeout and
any failure end it too (tasks.run_local_step), so a retry never starts beside a live attempt.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseOperator

from llm_decoder_airflow import tasks
from llm_decoder_airflow.settings import Settings


class LocalStepOperator(BaseOperator):
    """Run pipeline step `step_name` of the run `prepared` (the prepare task's XCom)."""

    template_fields = ("prepared",)

    def __init__(self, *, step_name: str, prepared: Any, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step_name = step_name
        self.prepared = prepared
        self.settings = settings
        self._process: subprocess.Popen | None = None

    def execute(self, context: Mapping[str, Any]) -> None:
        tasks.run_local_step(self.step_name, self.prepared, self.settings, started=self._remember)

    def _remember(self, process: subprocess.Popen) -> None:
        self._process = process

    def on_kill(self) -> None:
        if self._process is not None:
            self.log.warning(
                "task killed: ending %s's spark-submit (pid %d)", self.step_name, self._process.pid
            )
            tasks.end_process_group(self._process)
