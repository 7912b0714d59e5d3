"""The provider's create-cluster operator, plus the one thing it does not say: why a cluster died.

A cluster that fails to start (a failing bootstrap action, a bad role or subnet) ends in
TERMINATED_WITH_ERRORS; the waiter only reports the state. This logs EMR's own reason and the
log location before failing, so the task log alone explains the failure.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.operators.emr import EmrCreateJobFlowOperator
from botocore.exceptions import WaiterError


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
