"""What a run's cluster costs: estimated before it starts, and after, from what EMR reports.

Prices are the list prices in configs/emr.yaml's `emr.prices`: USD per instance-hour of EMR on
EC2 (EC2 on-demand + the EMR uplift), taken on `emr.prices_taken`.

- Before (`stage`, `make emr-plan`): the cluster's instances × their prices × an expected run
  length: the median `cluster_hours` of the earlier runs under the same root (their
  summary.json), or `emr.default_run_hours` when none recorded it (`make emr-plan` makes no AWS
  call, so it always uses the default). `estimate_basis` says which.
- After (`collect`): the cluster's instance groups (ListInstanceGroups) × their prices × the
  hours from the cluster's creation to its end (DescribeCluster's Status.Timeline), beside EMR's
  own NormalizedInstanceHours.

Both are estimates: EBS, S3 and data transfer are not counted, and spot task nodes are priced
on demand (an upper bound). Pure Python: the DAG files import this module when parsed.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from llm_decoder_airflow.files import FileStore, is_s3, join, run_dir, split_s3
from llm_decoder_airflow.settings import EmrSettings
from spark_jobs.common.errors import ConfigError

log = logging.getLogger(__name__)

# The order the cost basis lists instance groups in (ListInstanceGroups has none).
ROLE_ORDER = {"MASTER": 0, "CORE": 1, "TASK": 2}
# How many earlier runs (the last by run id) the estimate's median reads: one GET each.
EARLIER_RUNS_READ = 50


def cluster_nodes(emr: EmrSettings) -> list[tuple[str, str, int]]:
    """(config field, instance type, count) of each instance group the run's cluster asks for."""
    nodes = [
        ("emr.master_instance_type", emr.master_instance_type, 1),
        ("emr.core_instance_type or Param instance_type", emr.core_instance_type, emr.core_instance_count),
    ]
    if emr.task_instance_type and emr.task_instance_count > 0:
        nodes.append(("emr.task_instance_type", emr.task_instance_type, emr.task_instance_count))
    return nodes


def check_priced(emr: EmrSettings) -> None:
    """Refuse, before any cluster exists, a run whose instance types have no price."""
    for field, instance_type, _ in cluster_nodes(emr):
        if instance_type not in emr.prices:
            raise ConfigError(
                f"instance type {instance_type} ({field}) has no price in emr.prices (configs/emr.yaml): "
                "add its USD per hour (EC2 on-demand + EMR uplift)"
            )


def usd_per_hour(emr: EmrSettings) -> float:
    """What the run's cluster costs per hour at the listed prices (check_priced first)."""
    return sum(emr.prices[instance_type] * count for _, instance_type, count in cluster_nodes(emr))


def _nodes_text(nodes: Sequence[tuple[str, int]]) -> str:
    return " + ".join(f"{count} x {instance_type}" for instance_type, count in nodes)


def _prices_text(emr: EmrSettings) -> str:
    taken = f" of {emr.prices_taken}" if emr.prices_taken else ""
    return f"emr.prices{taken}"


def estimate(emr: EmrSettings, earlier_hours: Sequence[float] | None = None) -> dict[str, Any]:
    """The run's cost before it starts: instances × prices × the median of `earlier_hours`
    (earlier runs' cluster hours), or emr.default_run_hours when there are none (None: not read)."""
    per_hour = usd_per_hour(emr)
    if earlier_hours:
        hours = statistics.median(earlier_hours)
        why = f"the median cluster hours of {len(earlier_hours)} earlier run(s)"
    else:
        hours = emr.default_run_hours
        why = "emr.default_run_hours: " + (
            "earlier runs not read" if earlier_hours is None else "no earlier run recorded its hours"
        )
    nodes = _nodes_text([(t, n) for _, t, n in cluster_nodes(emr)])
    return {
        "estimate_usd": round(per_hour * hours, 2),
        "estimate_basis": (
            f"estimate: {hours:.2f} h ({why}) x {per_hour:.4g} USD/h ({nodes}, on-demand {_prices_text(emr)})"
        ),
        "estimate_hours": round(hours, 3),
        "usd_per_hour": round(per_hour, 4),
    }


def earlier_cluster_hours(files: FileStore, root: str, run_id: str) -> list[float]:
    """The `cluster_hours` recorded by earlier runs under `root` (their summary.json), from the
    last EARLIER_RUNS_READ run ids; [] when none recorded it or S3 cannot be read (logged)."""
    if not is_s3(root):
        return []
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(run_dir(root, ""))
    try:
        prefixes = files.s3.list_prefixes(bucket_name=bucket, prefix=key, delimiter="/") or []
        run_ids = sorted(p[len(key) :].strip("/") for p in prefixes)
        run_ids = [r for r in run_ids if r and r != run_id][-EARLIER_RUNS_READ:]
        hours = []
        for earlier in run_ids:
            text = files.read_text(join(run_dir(root, earlier), "summary.json"))
            value = _json_object(text).get("cluster_hours")
            if isinstance(value, int | float) and math.isfinite(value) and value > 0:
                hours.append(float(value))
    except (BotoCoreError, ClientError) as error:
        log.warning("earlier runs under %s not read, the estimate uses the default: %s", root, error)
        return []
    return hours


def _json_object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def instance_groups(emr_client: Any, cluster_id: str) -> list[tuple[str, int]]:
    """(instance type, requested count) of each of the cluster's instance groups."""
    groups = []
    for page in emr_client.get_paginator("list_instance_groups").paginate(ClusterId=cluster_id):
        groups += page["InstanceGroups"]
    groups.sort(key=lambda group: ROLE_ORDER.get(group.get("InstanceGroupType"), len(ROLE_ORDER)))
    return [(group["InstanceType"], int(group.get("RequestedInstanceCount", 0))) for group in groups]


def cluster_cost(
    emr_client: Any,
    cluster_id: str,
    prices: Mapping[str, float],
    prices_taken: Any = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The cluster figures of a run's summary: instance_hours (EMR's NormalizedInstanceHours),
    cluster_hours (creation to end, or to now while it still runs) and cost_usd_estimate (the
    instance groups × their prices × cluster_hours; None when a type has no price)."""
    cluster = emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    timeline = cluster.get("Status", {}).get("Timeline", {})
    created = timeline.get("CreationDateTime")
    ended = timeline.get("EndDateTime")
    # collect runs beside the teardown: the cluster is usually still terminating.
    until = ended or now or datetime.now(UTC)
    hours = max((until - created).total_seconds(), 0.0) / 3600 if created else None
    groups = instance_groups(emr_client, cluster_id)
    unpriced = sorted({instance_type for instance_type, _ in groups if instance_type not in prices})
    nodes = _nodes_text(groups)
    taken = f" of {prices_taken}" if prices_taken else ""
    if hours is None:
        cost, basis = None, "not known: the cluster reports no creation time"
    elif unpriced:
        cost, basis = None, f"not known: no price in emr.prices for {', '.join(unpriced)}"
    else:
        per_hour = sum(prices[instance_type] * count for instance_type, count in groups)
        cost = round(per_hour * hours, 4)
        span = "creation to end" if ended else "creation to now: the cluster was still running"
        basis = f"estimate: {nodes} at on-demand emr.prices{taken} ({per_hour:.4g} USD/h) x {hours:.3f} h ({span})"
    return {
        "instance_hours": cluster.get("NormalizedInstanceHours"),
        "cluster_hours": None if hours is None else round(hours, 4),
        "cost_usd_estimate": cost,
        "cost_basis": basis,
    }
