"""The provider's EMR operators, plus what they do not do for this DAG.

`EmrCreateClusterOperator`: a cluster that fails to start (a failing bootstrap action, a bad role
or subnet) ends in TERMINATED_WITH_ERRORS; the waiter only reports the state. This logs EMR's
own reason and the log location before failing, so the task log alone explains the failure.

`EmrStepWatcher`: the provider's EmrStepSensor fails as soon as one DescribeStep call fails,
after botocore's few seconds of retries. An EMR API outage (or throttling) longer than that
would fail the sensor, and the teardown would then terminate a cluster in the middle of
training. The watcher tells the two kinds of failure apart:

- the API cannot be reached, or answers throttling / 5xx: the step's state is unknown, so it
  logs a warning and looks again after `poke_interval`, until the sensor's `timeout` (also when
  the outage began before its first look, which finds the step on the cluster);
- the step is FAILED, CANCELLED or INTERRUPTED: the task fails at once, without retries
  (AirflowFailException; a retry cannot bring the step back), with EMR's FailureDetails and
  the error lines of the step's logs in S3 (steplogs.py: the step's stderr and stdout, and the
  cluster-mode driver's container logs; it waits up to `log_wait_s` for EMR to upload them).

With `deferrable=True` it waits on the triggerer (`StepStateTrigger`, which does the same) and
holds no worker slot while a step runs for hours. Anything else (an unexpected error, a lost
worker or triggerer) fails the try, and the task's own retries take over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from airflow.providers.amazon.aws.operators.emr import EmrCreateJobFlowOperator, EmrTerminateJobFlowOperator
from airflow.providers.amazon.aws.sensors.emr import EmrStepSensor
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout
from airflow.triggers.base import BaseTrigger, TriggerEvent
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    ResponseStreamingError,
    WaiterError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from botocore.parsers import ResponseParserError

from llm_decoder_airflow.emr import RUN_ID_TAG, active_clusters_of_run, step_of, step_on_cluster
from llm_decoder_airflow.steplogs import step_log_tail

FAILED_STATES = ("FAILED", "CANCELLED", "INTERRUPTED")
TIMED_OUT = "TIMED_OUT"  # the trigger's event when the sensor's timeout passed first
# Error codes that say "busy, ask again", not "wrong request".
TRANSIENT_ERROR_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalServerError",
        "InternalServerException",
    }
)


def is_transient(error: BaseException) -> bool:
    """An error that says nothing about the step: the API was unreachable, busy or broken."""
    if isinstance(error, BotocoreConnectionError | HTTPClientError):
        return True  # refused, reset, timed out (botocore has already retried it)
    if isinstance(error, IncompleteReadError | ResponseStreamingError | ResponseParserError):
        return True  # an answer cut off mid-way by a dropped connection says nothing of the step
    from aiohttp import ClientError as AiohttpClientError  # the trigger's transport (aiobotocore)

    if isinstance(error, AiohttpClientError):
        return True  # aiobotocore maps a failed send, but not a body cut off while read
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in TRANSIENT_ERROR_CODES or status >= 500
    return False


def log_unanswered(logger: Any, error: BaseException, step_id: str, poke_interval: float) -> None:
    """An outage is news, not a failure: the sensor and the trigger both say so and ask again."""
    logger.warning(
        "EMR API not answering (%s: %s): step %s state unknown, asking again in %s s",
        type(error).__name__,
        error,
        step_id,
        poke_interval,
    )


def failure_message(step_id: str, state: str, details: dict[str, Any] | None) -> str:
    details = details or {}
    return (
        f"EMR step {step_id} {state}: {details.get('Reason', 'no reason given')}: "
        f"{details.get('Message', 'no message')} (log: {details.get('LogFile', 'none')})"
    )


class EmrCreateClusterOperator(EmrCreateJobFlowOperator):
    def execute(self, context: Any) -> str | None:
        try:
            return super().execute(context)
        except WaiterError:
            job_flow_id = getattr(self, "_job_flow_id", None)
            if job_flow_id:
                cluster = self.hook.conn.describe_cluster(ClusterId=job_flow_id)["Cluster"]
                reason = cluster["Status"].get("StateChangeReason") or {}
                self.log.error(
                    "cluster %s did not start: %s, %s: %s (logs: %s)",
                    job_flow_id,
                    cluster["Status"].get("State"),
                    reason.get("Code", "no code"),
                    reason.get("Message", "no message"),
                    cluster.get("LogUri"),
                )
            raise


class EmrTerminateRunClusters(EmrTerminateJobFlowOperator):
    """Terminates the run's cluster; without its id, every active cluster tagged with the run's id.

    create_cluster can die after RunJobFlow returned but before it pushed the cluster id to
    XCom (a lost worker, a timeout, the waiter's error): the cluster runs, and `job_flow_id`
    renders to None. No cluster is left without an owner: the tag `run_id` finds it.
    """

    template_fields = (*EmrTerminateJobFlowOperator.template_fields, "cluster_run_id")

    def __init__(self, *, cluster_run_id: str, job_flow_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(job_flow_id=job_flow_id, **kwargs)  # type: ignore[arg-type]
        self.cluster_run_id = cluster_run_id

    def execute(self, context: Any) -> None:
        if self.job_flow_id:
            return super().execute(context)
        owned = active_clusters_of_run(self.hook.conn, self.cluster_run_id)
        self.log.warning(
            "no cluster id from create_cluster: active clusters tagged %s=%s: %s",
            RUN_ID_TAG,
            self.cluster_run_id,
            owned or "none",
        )
        for job_flow_id in owned:
            self.job_flow_id = job_flow_id
            super().execute(context)
        return None


class StepStateTrigger(BaseTrigger):
    """Polls DescribeStep on the triggerer until the step ends or `deadline` (epoch seconds) passes.

    The provider's EmrStepSensorTrigger ends at the first connection error; this one treats a
    transient error as "state unknown" and polls again.
    """

    def __init__(
        self,
        *,
        job_flow_id: str,
        step_id: str,
        poke_interval: float,
        deadline: float,
        aws_conn_id: str | None,
        region_name: str | None,
    ) -> None:
        super().__init__()
        self.job_flow_id = job_flow_id
        self.step_id = step_id
        self.poke_interval = poke_interval
        self.deadline = deadline
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.{type(self).__name__}",
            {
                "job_flow_id": self.job_flow_id,
                "step_id": self.step_id,
                "poke_interval": self.poke_interval,
                "deadline": self.deadline,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.amazon.aws.hooks.emr import EmrHook

        hook = EmrHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        state = "unknown"
        async with await hook.get_async_conn() as client:
            while True:
                try:
                    response = await client.describe_step(ClusterId=self.job_flow_id, StepId=self.step_id)
                except Exception as error:
                    if not is_transient(error):
                        raise
                    log_unanswered(self.log, error, self.step_id, self.poke_interval)
                else:
                    status = response["Step"]["Status"]
                    state = status["State"]
                    if state == "COMPLETED" or state in FAILED_STATES:
                        yield TriggerEvent(
                            {
                                "state": state,
                                "failure_details": status.get("FailureDetails"),
                                "step_id": self.step_id,
                            }
                        )
                        return
                    self.log.info("step %s: %s", self.step_id, state)
                if time.time() >= self.deadline:
                    yield TriggerEvent({"state": TIMED_OUT, "last_state": state, "step_id": self.step_id})
                    return
                await asyncio.sleep(self.poke_interval)


class EmrStepWatcher(EmrStepSensor):
    """EmrStepSensor that outlasts an EMR API outage and fails for good on a failed step.

    `log_wait_s`: how long a failed step's sensor waits for EMR to upload the step's logs to
    S3 (they name the error; FailureDetails often does not); `log_poll_s`: how often it looks.
    """

    template_fields = (*EmrStepSensor.template_fields, "step_specs")

    def __init__(
        self,
        *,
        pipeline_step: str,
        step_specs: Any,
        log_wait_s: float = 300,
        log_poll_s: float = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline_step = pipeline_step
        self.step_specs = (
            step_specs  # the run's step requests (stage's XCom): this step's is added if missing
        )
        self.log_wait_s = log_wait_s
        self.log_poll_s = log_poll_s

    def _resolve_step(self) -> None:
        """Watch this step on the cluster the run has now (see emr.step_on_cluster). An outage
        can begin before the first look (the step may already run when the task starts): the
        API is asked again, as poke does, until the sensor's timeout."""
        from airflow.providers.amazon.aws.hooks.emr import EmrHook

        [spec] = [s for s in self.step_specs if step_of(s["Name"]) == self.pipeline_step]
        client = EmrHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name).conn
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                # safe to repeat: a step already on the cluster is found, not added again
                self.step_id = step_on_cluster(client, self.job_flow_id, spec, self.step_id)
                return
            except Exception as error:
                if not is_transient(error) or time.monotonic() >= deadline:
                    raise
                log_unanswered(self.log, error, self.step_id or self.pipeline_step, self.poke_interval)
                time.sleep(self.poke_interval)

    def poke(self, context: Any) -> bool:
        try:
            response = self.get_emr_response(context)
        except Exception as error:
            if not is_transient(error):
                raise
            log_unanswered(self.log, error, self.step_id, self.poke_interval)
            return False
        status = response["Step"]["Status"]
        return self._done(status["State"], status.get("FailureDetails"))

    def _done(self, state: str, failure_details: dict[str, Any] | None) -> bool:
        """True once the step COMPLETED; a failed step fails the task without retries."""
        if state in FAILED_STATES:
            message = f"{failure_message(self.step_id, state, failure_details)}; {self._log_tail()}"
            self.log.error("%s", message)
            raise AirflowFailException(message)
        self.log.info("step %s: %s", self.step_id, state)
        return state == "COMPLETED"

    def _log_tail(self) -> str:
        """The error lines of the step's logs in the cluster's LogUri (never raises: the step's
        failure is the news, a log that cannot be read must not hide it)."""
        from airflow.providers.amazon.aws.hooks.emr import EmrHook
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        try:
            emr = EmrHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
            cluster = emr.conn.describe_cluster(ClusterId=self.job_flow_id)["Cluster"]
            s3 = S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
            return step_log_tail(
                s3, cluster.get("LogUri"), self.job_flow_id, self.step_id, self.log_wait_s, self.log_poll_s
            )
        except Exception as error:
            return f"could not read the step's logs ({type(error).__name__}: {error})"

    def execute(self, context: Any) -> None:
        self._resolve_step()
        if not self.deferrable:
            return super().execute(context)  # poke on the worker (BaseSensorOperator's loop)
        if self.poke(context):
            return None
        trigger = StepStateTrigger(
            job_flow_id=self.job_flow_id,
            step_id=self.step_id,
            poke_interval=self.poke_interval,
            # The trigger ends itself at the sensor's timeout (dag.test() runs triggers inline
            # and enforces no deferral timeout); the deferral's timeout is the backstop.
            deadline=time.time() + self.timeout,
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
        )
        backstop = timedelta(seconds=self.timeout + 3 * self.poke_interval)
        self.defer(trigger=trigger, method_name="execute_complete", timeout=backstop)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        event = event or {}
        self.step_id = event.get("step_id", self.step_id)  # the step resolved before deferring
        state = event.get("state", "no event")
        if state == TIMED_OUT:
            raise AirflowSensorTimeout(
                f"EMR step {self.step_id} still {event.get('last_state')} after the sensor's "
                f"timeout of {self.timeout:.0f} s"
            )
        if not self._done(state, event.get("failure_details")):
            raise AirflowException(f"EMR step {self.step_id}: the trigger ended in state {state}")
