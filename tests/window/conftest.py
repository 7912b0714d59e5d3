"""A hand-made preprocess output, so the window step is tested without the preprocess step.

Token ids encode their place: token i of document d is `d * DOC_BASE + i`, so a window's ids
say exactly where in which document it was cut from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_jobs.common import storage
from spark_jobs.common.config import PipelineConfig, validate_config

DOC_BASE = 100_000


def doc_tokens(doc_id: int, length: int) -> np.ndarray:
    return (doc_id * DOC_BASE + np.arange(length)).astype(np.int32)


def write_preprocess(
    root: Path, run_id: str, doc_lengths: list[int], seed: int = 0, files: int = 3, success: bool = True
) -> str:
    """tokens/ (segments of random length, rows shuffled over several files), stats.json, _SUCCESS."""
    rng = np.random.default_rng(seed)
    rows = []
    for doc_id, length in enumerate(doc_lengths):
        tokens = doc_tokens(doc_id, length)
        cuts = np.sort(rng.choice(np.arange(1, length), size=min(length - 1, length // 7), replace=False))
        for seq, segment in enumerate(np.split(tokens, cuts)):
            rows.append((doc_id, seq, segment))
    order = rng.permutation(len(rows))
    step = storage.step_dir(str(root), run_id, "preprocess")
    tokens_dir = Path(step) / "tokens"
    tokens_dir.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(np.array_split(order, files)):
        table = pa.table(
            {
                "doc_id": pa.array([rows[j][0] for j in chunk], pa.int32()),
                "seq": pa.array([rows[j][1] for j in chunk], pa.int64()),
                "ids": pa.array([rows[j][2] for j in chunk], pa.list_(pa.int32())),
            }
        )
        pq.write_table(table, tokens_dir / f"part-{i:05d}.parquet")
    total = sum(doc_lengths)
    stats = {"documents": len(doc_lengths), "tokens": total, "chars": total * 3, "chars_per_token": 3.0}
    (Path(step) / "stats.json").write_text(json.dumps(stats))
    if success:
        (Path(step) / storage.SUCCESS_MARKER).write_text("")
    return step


@pytest.fixture
def window_config(tmp_path: Path) -> Callable[..., PipelineConfig]:
    """A config for a run under tmp_path: window_config(window_size=8, stride=1, ...)."""

    def make(
        window_size: int = 8,
        stride: int = 1,
        valid_split: float = 0.2,
        split_by: str = "document",
        rows_per_partition: int = 500,
        run_id: str = "w",
    ) -> PipelineConfig:
        return validate_config(
            {
                "spark": {"master": "local[2]", "target_partition_size": rows_per_partition},
                "model": {"window_size": window_size},
                "training": {"train_split": round(1 - valid_split, 10), "valid_split": valid_split},
                "data": {"window_stride": stride, "split_by": split_by},
                "run": {"root": str(tmp_path / "root"), "id": run_id},
            }
        )

    return make
