"""The driver never holds the corpus: its peak memory does not grow with the corpus.

The real CLI runs preprocess on a small corpus and on one 16 times larger; a wrapper reports
the driver process's own peak RSS (VmHWM of the Python process: not the JVM, not the Python
workers, which are other processes; not getrusage, whose maximum survives exec and so includes
the forking test process). Holding the larger corpus as one Python string would add its size;
as lines, several times that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyspark
import pytest
import yaml

# The CLI in this process, then the process's own peak RSS (KiB) as the last line.
DRIVER = """
import re, sys
from spark_jobs.cli import main
sys.argv = ["llm-decoder", *sys.argv[1:]]
try:
    main()
finally:
    with open("/proc/self/status") as status:
        print("peak_rss_kib", re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1), file=sys.stderr)
"""
SMALL_BYTES = 500_000
LARGE_BYTES = 8_000_000


def _driver_peak_mb(tmp_path: Path, repo: Path, corpus_bytes: int, name: str) -> float:
    text = (repo / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    corpus = tmp_path / f"{name}.txt"
    copies = -(-corpus_bytes // len(text.encode()))
    corpus.write_text((text * copies)[:corpus_bytes].rsplit("\n", 1)[0] + "\n", encoding="utf-8")
    config = {
        "spark": {"master": "local[2]", "driver_memory": "1g"},
        # the same bounded tokenizer sample for both: the driver's one by-design copy of text
        "data": {"corpus_path": str(corpus), "vocab_size": 300, "tokenizer_sample_chars": 200_000},
        "run": {"root": str(tmp_path / "out"), "id": name},
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, "preprocess", "--config", str(tmp_path / f"{name}.yaml")],
        capture_output=True, text=True, timeout=600, check=False, cwd=repo,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((tmp_path / "out" / "runs" / name / "preprocess" / "stats.json").read_text())
    assert stats["chars"] >= corpus_bytes * 0.99  # the whole corpus was encoded
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("peak_rss_kib "), last
    return int(last.split()[1]) / 1024


@pytest.mark.slow
def test_the_drivers_peak_memory_does_not_grow_with_the_corpus(tmp_path: Path, repo: Path):
    small = _driver_peak_mb(tmp_path, repo, SMALL_BYTES, "small")
    large = _driver_peak_mb(tmp_path, repo, LARGE_BYTES, "large")
    grown = large - small
    # 7.5 MB more corpus: holding it would add >= 7.5 MB (one str), lines or segments far more
    assert grown < 4, f"driver peak RSS {small:.1f} MB -> {large:.1f} MB for 16x the corpus"


# --- A corpus file larger than the driver's memory -------------------------------------------
#
# The driver (the CLI's Python process) runs in its own memory cgroup whose limit is half the
# corpus file; going over it gets the driver killed by the kernel (exit -9), as a container limit
# on a cluster would. The group is charged what the driver brings into memory (its heap, the
# pages it reads); shared libraries the test process already loaded stay charged to the test.
# Spark's JVM is not the driver's memory here: in local mode it also hosts the executors, so a
# wrapper moves it back to the test's own cgroup before it starts.

CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")  # cgroup v1's memory controller
DRIVER_LIMIT_BYTES = 128 * 2**20  # measured peak: 76 MB
BIG_CORPUS_BYTES = 256 * 2**20
# Text whose words become single tokens keeps the encoding cheap (~10 M tokens): the test is
# about where the bytes go, not about tokenizer speed, which bench/scale.py measures.
BIG_LINE = "abcdefghijklmnopqrstuvwxyz0123456789 " * 27 + "\n"


def _own_memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory directory, if it exists and we may make groups in it."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            own = CGROUP_MEMORY / path.lstrip("/")
            return own if own.is_dir() and os.access(own, os.W_OK) else None
    return None


@pytest.fixture
def driver_cgroup(tmp_path: Path):
    """A child memory cgroup limited to DRIVER_LIMIT_BYTES; yields (its dir, the parent's dir)."""
    parent = _own_memory_cgroup()
    if parent is None:
        pytest.skip("needs a writable cgroup v1 memory controller (root on a cgroup v1 machine)")
    group = parent / f"llm-decoder-driver-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(DRIVER_LIMIT_BYTES))
        yield group, parent
    finally:
        group.rmdir()  # its one process has exited


@pytest.mark.slow
def test_a_corpus_larger_than_the_drivers_memory_is_processed(tmp_path: Path, repo: Path, driver_cgroup):
    group, parent = driver_cgroup
    corpus = tmp_path / "big.txt"
    with corpus.open("w", encoding="utf-8") as out:
        for _ in range(BIG_CORPUS_BYTES // len(BIG_LINE) + 1):
            out.write(BIG_LINE)
    assert corpus.stat().st_size > DRIVER_LIMIT_BYTES * 1.3

    # pyspark starts the JVM with $SPARK_HOME/bin/spark-submit: this one leaves the driver's group.
    real_home = Path(pyspark.__file__).parent
    fake_home = tmp_path / "spark_home"
    (fake_home / "bin").mkdir(parents=True)
    submit = fake_home / "bin" / "spark-submit"
    submit.write_text(
        f"#!/bin/sh\necho $$ > {parent}/cgroup.procs\nSPARK_HOME={real_home}; export SPARK_HOME\n"
        f'exec {real_home}/bin/spark-submit "$@"\n'
    )
    submit.chmod(0o755)
    config = {
        "spark": {"master": "local[2]", "driver_memory": "1g"},
        "data": {"corpus_path": str(corpus), "vocab_size": 300, "tokenizer_sample_chars": 200_000},
        "run": {"root": str(tmp_path / "out"), "id": "big"},
    }
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(config))
    join_then_run = f"import os; open('{group}/cgroup.procs', 'w').write(str(os.getpid())); exec(compile({DRIVER!r}, 'driver', 'exec'))"
    done = subprocess.run(
        [sys.executable, "-c", join_then_run, "preprocess", "--config", str(tmp_path / "big.yaml")],
        capture_output=True, text=True, timeout=900, check=False, cwd=repo,
        env={**os.environ, "SPARK_HOME": str(fake_home)},
    )  # fmt: skip
    peak = int((group / "memory.max_usage_in_bytes").read_text())
    assert done.returncode == 0, (
        f"exit {done.returncode}, driver cgroup peak {peak / 2**20:.0f} MB\n{done.stderr[-3000:]}"
    )
    stats = json.loads((tmp_path / "out" / "runs" / "big" / "preprocess" / "stats.json").read_text())
    assert stats["chars"] == corpus.stat().st_size  # every byte (ASCII) was read and encoded
    assert peak < DRIVER_LIMIT_BYTES < corpus.stat().st_size
