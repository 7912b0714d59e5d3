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
from spark_jobs.data.windows import split_point

DOC_BASE = 100_000


def doc_tokens(doc_id: int, length: int) -> np.ndarray:
    return (doc_id * DOC_BASE + np.arange(length)).astype(np.int32)


def validation_cuts(doc_lengths: list[int], valid_split: float, split_by: str) -> list[int]:
    """Where each document's validation begins (token index in the document), as preprocess decides."""
    if split_by == "document":
        return [split_point(0, n, valid_split) for n in doc_lengths]
    remaining = split_point(0, sum(doc_lengths), valid_split)
    cuts = []
    for n in doc_lengths:
        cuts.append(min(n, max(remaining, 0)))
        remaining -= n
    return cuts


def write_preprocess(
    config: PipelineConfig, doc_lengths: list[int], seed: int = 0, files: int = 3, success: bool = True
) -> str:
    """tokens/ (segments of random length, rows shuffled over several files; a segment ends at
    each document's validation start), split.json, stats.json, _SUCCESS."""
    rng = np.random.default_rng(seed)
    rows, val_first_segment = [], {}
    val_cuts = validation_cuts(doc_lengths, config.training.valid_split, config.data.split_by)
    for doc_id, (length, val_cut) in enumerate(zip(doc_lengths, val_cuts, strict=True)):
        tokens = doc_tokens(doc_id, length)
        cuts = set(
            rng.choice(np.arange(1, length), size=min(length - 1, length // 7), replace=False).tolist()
        )
        cuts = sorted((cuts | {val_cut}) - {0, length})
        pieces = np.split(tokens, cuts)
        val_first_segment[str(doc_id)] = len(pieces) if val_cut == length else ([0, *cuts]).index(val_cut)
        for seq, segment in enumerate(pieces):
            rows.append((doc_id, seq, segment))
    order = rng.permutation(len(rows))
    root, run_id = Path(config.run.root), config.run.id
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
    split = {
        "split_by": config.data.split_by,
        "valid_split": config.training.valid_split,
        "val_first_segment": val_first_segment,
        "chars": {"train": 3 * sum(val_cuts), "val": 3 * (total - sum(val_cuts))},
    }
    (Path(step) / "split.json").write_text(json.dumps(split))
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
                # rows_per_partition windows per chunk: each adds `stride` tokens
                "spark": {
                    "master": "local[2]",
                    "window_chunk_tokens": rows_per_partition * stride,
                },
                "model": {"window_size": window_size},
                "training": {"train_split": round(1 - valid_split, 10), "valid_split": valid_split},
                "data": {"window_stride": stride, "split_by": split_by},
                "run": {"root": str(tmp_path / "root"), "id": run_id},
            }
        )

    return make
