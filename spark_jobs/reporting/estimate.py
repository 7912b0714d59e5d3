"""What a corpus of N tokens would cost on EMR, from throughputs measured by bench/scale.py.

    llm-decoder estimate --tokens 1e9 --instance-type m5.2xlarge --count 8

The table (bench/throughput.json, written by `bench/scale.py --write-table`) holds, per step,
the tokens per second per core that one machine measured, and the memory the step's processes
peaked at. The estimate assumes every step scales linearly with cores (a cluster of `count`
core nodes of `vcpus` each runs `count * vcpus` times one core's throughput), except `single`
training, which runs on one node whatever the cluster. docs/scaling.md says what this leaves
out. Prices come from configs/emr.yaml (`emr.prices`, USD per instance-hour, EMR included).

Definitions:
- preprocess and window process every corpus token once;
- training "at N tokens" means the model trains on N tokens (steps x batch x window x workers),
  i.e. one epoch over the corpus at stride = window size;
- hours: wall-clock of the step on the cluster; node-hours: core nodes x hours; USD: the core
  nodes plus the master node (which EMR bills for the whole step too).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spark_jobs.common.errors import ConfigError, InputError
from spark_jobs.common.instances import INSTANCE_TYPES, Instance

log = logging.getLogger(__name__)


# Assumed, not measured (the bench runs on local disks): sustained S3 throughput one node gets,
# and what one node moves through the network in a shuffle. Both are conservative figures for
# "up to 10 Gbit/s" instances; they only decide whether I/O or compute is named the bottleneck.
S3_READ_MB_S_PER_NODE = 200.0
SHUFFLE_MB_S_PER_NODE = 200.0

DATA_STEPS = ("preprocess", "window")
STRATEGIES = ("single", "ddp", "parameter_averaging")


@dataclass(frozen=True)
class StepEstimate:
    step: str  # preprocess, window, train single|ddp|parameter_averaging
    hours: float
    node_hours: float
    usd: float
    peak_memory_gib_per_node: float
    memory_gib_per_node: int  # what the instance type has
    bottleneck: str


def load_prices(emr_yaml: str | Path) -> tuple[dict[str, float], str | None]:
    """`emr.prices` (USD per instance-hour) and `emr.master_instance_type` from configs/emr.yaml."""
    try:
        emr = yaml.safe_load(Path(emr_yaml).read_text(encoding="utf-8"))["emr"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read emr.prices from {emr_yaml}: {exc}") from None
    return {name: float(usd) for name, usd in emr["prices"].items()}, emr.get("master_instance_type")


def load_table(path: str | Path) -> dict[str, Any]:
    """The measured throughput table (bench/throughput.json)."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the throughput table {path}: {exc}") from None
    missing = [
        s for s in (*DATA_STEPS, *(f"train_{s}" for s in STRATEGIES)) if s not in table.get("steps", {})
    ]
    if missing:
        raise InputError(
            f"{path}: no measurement for {', '.join(missing)}; re-run bench/scale.py --write-table"
        )
    return table


def check_request(tokens: float, instance_type: str, count: int, prices: dict[str, float]) -> Instance:
    """One-line errors for a request the estimate cannot answer; the instance type's size otherwise."""
    if not tokens > 0 or math.isinf(tokens):
        raise ConfigError(f"--tokens must be a positive number, got {tokens:g}")
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    if instance_type not in prices:
        raise ConfigError(f"instance type {instance_type!r} has no price in emr.prices (configs/emr.yaml)")
    if instance_type not in INSTANCE_TYPES:
        raise ConfigError(f"instance type {instance_type!r} has no vCPU/memory entry in INSTANCE_TYPES")
    return INSTANCE_TYPES[instance_type]


def _gib(mb: float) -> float:
    return mb / 1024


def estimate(
    table: dict[str, Any],
    tokens: float,
    instance_type: str,
    count: int,
    prices: dict[str, float],
    master_instance_type: str | None = None,
) -> list[StepEstimate]:
    """The estimate for each step (see the module docstring for what the figures mean)."""
    node = check_request(tokens, instance_type, count, prices)
    # The master node is billed for as long as any step runs; an unknown one is left out.
    master_usd_per_hour = prices.get(master_instance_type or "", 0.0)
    cluster_usd_per_hour = count * prices[instance_type] + master_usd_per_hour
    cores = count * node.vcpus
    steps = table["steps"]
    results = []

    for name in DATA_STEPS:
        measured = steps[name]
        compute_s = tokens / (measured["tokens_per_core_s"] * cores)
        # I/O time if every node moved its share at the assumed rate: the corpus from S3
        # (preprocess) or the token stream through the shuffle (window).
        if name == "preprocess":
            io_mb = tokens * measured["input_bytes_per_token"] / 1e6
            rate, io_what = S3_READ_MB_S_PER_NODE, "S3 reads"
        else:
            io_mb = tokens * measured["output_bytes_per_token"] / 1e6
            rate, io_what = SHUFFLE_MB_S_PER_NODE, "the shuffle"
        io_s = io_mb / (rate * count)
        seconds = max(compute_s, io_s)
        bottleneck = (
            f"{io_what} ({io_s / 3600:.2f} h at {rate:.0f} MB/s per node, assumed)"
            if io_s > compute_s
            else f"CPU ({compute_s / 3600:.2f} h of compute; {io_what} {io_s / 3600:.2f} h)"
        )
        # In local mode the JVM is driver and executor at once, so its peak plus the Python
        # workers' is what the measured cores used; a node runs vcpus such cores.
        per_core_mb = (measured["jvm_peak_rss_mb"] + measured["worker_sum_peak_rss_mb"]) / measured["cores"]
        results.append(
            _step(
                name, seconds, count, cluster_usd_per_hour, _gib(per_core_mb * node.vcpus), node, bottleneck
            )
        )

    for strategy in STRATEGIES:
        measured = steps[f"train_{strategy}"]
        if strategy == "single":
            # One process on one node, all of its cores as threads; the other nodes idle but billed.
            used_cores = node.vcpus
            peak_mb = measured["driver_peak_rss_mb"]
            bottleneck = f"compute on one node ({node.vcpus} cores); the other {count - 1} nodes idle"
        else:
            # One worker per core (as measured: each worker one thread), all nodes.
            used_cores = cores
            peak_mb = measured["worker_max_peak_rss_mb"] * node.vcpus
            ratio = measured.get("scaling_2_vs_1", float("nan"))
            # Two workers cannot be more than 2x one: above that the two runs met different loads.
            artefact = ", above 2x: a measurement artefact" if ratio > 2 else ""
            bottleneck = (
                f"training compute ({cores} workers at the per-core rate measured with 2; "
                f"2 vs 1 worker measured {ratio:.2f}x{artefact})"
            )
        seconds = tokens / (measured["tokens_per_core_s"] * used_cores)
        results.append(
            _step(f"train {strategy}", seconds, count, cluster_usd_per_hour, _gib(peak_mb), node, bottleneck)
        )
    return results


def _step(
    name: str,
    seconds: float,
    count: int,
    cluster_usd_per_hour: float,
    peak_gib: float,
    node: Instance,
    bottleneck: str,
) -> StepEstimate:
    hours = seconds / 3600
    if peak_gib > node.memory_gib:
        bottleneck += f"; memory: {peak_gib:.1f} GiB per node > {node.memory_gib} GiB"
    return StepEstimate(
        step=name,
        hours=hours,
        node_hours=hours * count,
        usd=hours * cluster_usd_per_hour,
        peak_memory_gib_per_node=peak_gib,
        memory_gib_per_node=node.memory_gib,
        bottleneck=bottleneck,
    )


def render(
    results: list[StepEstimate], table: dict[str, Any], tokens: float, instance_type: str, count: int
) -> str:
    """The estimate as the text `llm-decoder estimate` prints."""
    measured = table.get("measured_on", {})
    lines = [
        f"{tokens:.3g} tokens on {count} x {instance_type} "
        f"({count * INSTANCE_TYPES[instance_type].vcpus} vCPUs), EMR on-demand",
        f"throughputs: {measured.get('machine', '?')}, {measured.get('cores', '?')} cores, "
        f"{measured.get('date', '?')}, corpus {table.get('scale', '?')} ({table.get('corpus_tokens', '?')} tokens)",
        f"{'step':<26}{'hours':>9}{'node-h':>9}{'USD':>10}{'GiB/node':>10}  bottleneck",
    ]
    for r in results:
        memory = f"{r.peak_memory_gib_per_node:.1f}/{r.memory_gib_per_node}"
        lines.append(
            f"{r.step:<26}{r.hours:>9.2f}{r.node_hours:>9.2f}{r.usd:>10.2f}{memory:>10}  {r.bottleneck}"
        )
    data = [r for r in results if r.step in DATA_STEPS]
    lines.append(
        "data steps (preprocess + window): "
        f"{sum(r.hours for r in data):.2f} h, {sum(r.usd for r in data):.2f} USD; "
        "plus cluster start-up (~10 min) and bootstrap, not counted"
    )
    return "\n".join(lines)
