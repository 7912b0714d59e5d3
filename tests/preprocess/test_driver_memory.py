"""The driver never holds the corpus: its peak memory does not grow with the corpus.

The real CLI runs preprocess on a small corpus and on one 16 times larger; a wrapper reports
the driver process's own peak RSS (VmHWM of the Python process: not the JVM, not the Python
workers, which are other processes; not getrusage, whose maximum survives exec and so includes
the forking test process). Holding the larger corpus as one Python string would add its size;
as lines, several times that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
