"""`llm-decoder estimate`: the arithmetic on a hand-made table, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from spark_jobs.common.errors import ConfigError, InputError
from spark_jobs.reporting import estimate as est

PRICES = {"m5.2xlarge": 0.5, "m5.xlarge": 0.25}


def _step(tokens_per_core_s: float, **extra: float) -> dict:
    figures = {
        "tokens_per_core_s": tokens_per_core_s,
        "cores": 2,
        "driver_peak_rss_mb": 512.0,
        "jvm_peak_rss_mb": 1024.0,
        "worker_sum_peak_rss_mb": 1024.0,
        "worker_max_peak_rss_mb": 256.0,
    }
    return {**figures, **extra}


# Round numbers: 1e6 tokens/s per core for preprocess, 5e5 for window, 1e3 for training.
TABLE = {
    "measured_on": {"machine": "test", "cores": 2, "date": "2026-11-29"},
    "scale": "x10",
    "corpus_tokens": 1000,
    "steps": {
        "preprocess": _step(1e6, input_bytes_per_token=4.0),
        "window": _step(5e5, output_bytes_per_token=100.0),
        "train_single": _step(1e3),
        "train_ddp": _step(1e3, scaling_2_vs_1=1.5),
        "train_parameter_averaging": _step(2e3, scaling_2_vs_1=1.8),
    },
}


def by_step(results: list[est.StepEstimate]) -> dict[str, est.StepEstimate]:
    return {r.step: r for r in results}


def test_arithmetic_on_a_hand_made_table():
    # 2 x m5.2xlarge = 16 cores; cluster = 2 x 0.5 + master 0.25 = 1.25 USD/h.
    tokens = 16 * 1e6 * 3600  # exactly one hour of preprocess compute
    got = by_step(est.estimate(TABLE, tokens, "m5.2xlarge", 2, PRICES, "m5.xlarge"))

    pre = got["preprocess"]
    # S3: 4 bytes/token x 5.76e10 tokens / (200 MB/s x 2 nodes) = 0.16 h < 1 h of compute.
    assert pre.hours == pytest.approx(1.0)
    assert pre.bottleneck.startswith("CPU")
    assert pre.node_hours == pytest.approx(pre.hours * 2)
    assert pre.usd == pytest.approx(pre.hours * 1.25)
    # (1024 + 1024) MB over 2 cores = 1 GiB per core, 8 cores per node.
    assert pre.peak_memory_gib_per_node == pytest.approx(8.0)
    assert pre.memory_gib_per_node == 32

    # Window: 2 h of compute; its shuffle moves 100 bytes/token: 5.76e12 / 400e6 s = 4 h.
    window = got["window"]
    assert window.hours == pytest.approx(tokens * 100 / 400e6 / 3600)
    assert window.bottleneck.startswith("the shuffle")

    ddp = got["train ddp"]
    assert ddp.hours == pytest.approx(tokens / (1e3 * 16) / 3600)
    assert ddp.usd == pytest.approx(ddp.hours * 1.25)
    assert ddp.peak_memory_gib_per_node == pytest.approx(256 * 8 / 1024)
    assert got["train parameter_averaging"].hours == pytest.approx(ddp.hours / 2)

    single = got["train single"]  # one node's 8 cores only
    assert single.hours == pytest.approx(tokens / (1e3 * 8) / 3600)
    assert single.node_hours == pytest.approx(single.hours * 2)
    assert single.peak_memory_gib_per_node == pytest.approx(0.5)


def test_compute_bound_when_io_is_small():
    # 1 byte/token of S3 input: 1e9 bytes over 200 MB/s = 5 s; compute: 1e9 / (1e3 x 8) s.
    table = json.loads(json.dumps(TABLE))
    table["steps"]["preprocess"]["tokens_per_core_s"] = 1e3
    table["steps"]["preprocess"]["input_bytes_per_token"] = 1.0
    pre = by_step(est.estimate(table, 1e9, "m5.2xlarge", 1, PRICES))["preprocess"]
    assert pre.hours == pytest.approx(1e9 / 8e3 / 3600)
    assert pre.bottleneck.startswith("CPU")
    assert pre.usd == pytest.approx(pre.hours * 0.5)  # no master type given: core nodes only


def test_memory_over_the_node_is_named():
    table = json.loads(json.dumps(TABLE))
    table["steps"]["window"]["worker_sum_peak_rss_mb"] = 20_000.0
    window = by_step(est.estimate(table, 1e9, "m5.2xlarge", 1, PRICES))["window"]
    assert "memory:" in window.bottleneck


@pytest.mark.parametrize(
    ("tokens", "instance_type", "count", "names"),
    [
        (1e9, "x9.huge", 2, "x9.huge"),
        (0, "m5.2xlarge", 2, "--tokens"),
        (-5, "m5.2xlarge", 2, "--tokens"),
        (1e9, "m5.2xlarge", 0, "--count"),
    ],
)
def test_bad_requests_are_one_line_errors(tokens, instance_type, count, names):
    with pytest.raises(ConfigError) as caught:
        est.estimate(TABLE, tokens, instance_type, count, PRICES)
    message = str(caught.value)
    assert names in message and "\n" not in message


def test_a_table_without_a_step_is_refused(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"steps": {"preprocess": {}}}), encoding="utf-8")
    with pytest.raises(InputError, match="window"):
        est.load_table(path)


def test_prices_come_from_emr_yaml(repo):
    prices, master = est.load_prices(repo / "configs" / "emr.yaml")
    assert prices["m5.2xlarge"] > 0
    assert master in prices


def test_committed_table_loads_and_estimates(repo):
    table = est.load_table(repo / "bench" / "throughput.json")
    prices, master = est.load_prices(repo / "configs" / "emr.yaml")
    results = est.estimate(table, 1e9, "m5.2xlarge", 8, prices, master)
    assert [r.step for r in results] == [
        "preprocess",
        "window",
        "train single",
        "train ddp",
        "train parameter_averaging",
    ]
    assert all(r.hours > 0 and r.usd > 0 for r in results)


def test_every_priced_x86_type_has_a_size(repo):
    prices, _ = est.load_prices(repo / "configs" / "emr.yaml")
    # Graviton types are priced for reference only (refused by staging): no size needed.
    unsized = {name for name in prices if name not in est.INSTANCE_TYPES and "g." not in name}
    assert not unsized


def test_cli_bad_instance_type_is_one_line(repo):
    done = subprocess.run(
        [sys.executable, "-m", "spark_jobs.cli", "estimate", "--tokens", "1e9", "--instance-type", "x9.huge"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: instance type 'x9.huge' has no price in emr.prices (configs/emr.yaml)"
    ]


def test_cli_prints_every_step(repo):
    done = subprocess.run(
        [sys.executable, "-m", "spark_jobs.cli", "estimate", "--tokens", "1e9", "--count", "8"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for step in ("preprocess", "window", "train single", "train ddp", "train parameter_averaging"):
        assert step in done.stdout
