"""A lost ddp rank fails within training.ddp_timeout_minutes instead of hanging (gloo's default: 30 min).

Two real processes join a gloo process group with the options the ddp strategy gives
`init_process_group`; one of them is lost (never starts, or joins and then never takes part),
and the other must fail after about the configured timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest

from spark_jobs.common.config import validate_config
from spark_jobs.training.strategies.ddp import process_group_options

TIMEOUT_MINUTES = 0.05  # 3 s

RANK = textwrap.dedent(
    """
    import sys, time
    import torch
    import torch.distributed as dist
    from spark_jobs.common.config import validate_config
    from spark_jobs.training.strategies.ddp import process_group_options

    config = validate_config({"training": {"ddp_timeout_minutes": float(sys.argv[1])}})
    started = time.monotonic()
    try:
        dist.init_process_group(**process_group_options(config))
        if dist.get_rank() == 1:
            time.sleep(120)  # joined, then lost: never takes part in the all-reduce
        started = time.monotonic()
        dist.all_reduce(torch.ones(1))
    except Exception as exc:
        print(f"failed after {time.monotonic() - started:.1f} s: {type(exc).__name__}", flush=True)
        sys.exit(3)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(rank: int, port: int, repo) -> subprocess.Popen:
    env_vars = {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return subprocess.Popen(
        [sys.executable, "-c", RANK, str(TIMEOUT_MINUTES)],
        cwd=repo,
        env={**os.environ, **env_vars},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_configured_timeout_reaches_the_process_group():
    config = validate_config({"training": {"ddp_timeout_minutes": 0.5}})
    assert process_group_options(config) == {"backend": "gloo", "timeout": timedelta(seconds=30)}
    assert validate_config({}).training.ddp_timeout_minutes == 5


@pytest.mark.parametrize("lost", ["never starts", "joins, then is lost"])
def test_a_lost_rank_fails_the_other_within_the_timeout(repo, lost):
    port = _free_port()
    survivor = _start(0, port, repo)
    other = _start(1, port, repo) if lost == "joins, then is lost" else None
    try:
        output, _ = survivor.communicate(timeout=60)
    finally:
        for process in (survivor, other):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert survivor.returncode == 3, output
    seconds = float(output.rsplit("failed after ", 1)[1].split(" s:")[0])
    assert 2.0 <= seconds < 20, output  # ~3 s, far from gloo's 30 minutes
