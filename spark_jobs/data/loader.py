"""Reading the window step's Parquet into tensors, and the seeded order of minibatches.

Sharding interleaves rows (rank r gets rows r, r + world, r + 2·world, ...), and every rank
walks its shard in the same order, so with `training.shuffle=false` the ranks' batches of
size b together are exactly the single process's batches of size world·b.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError
from spark_jobs.data import parquet_files

log = logging.getLogger(__name__)


WINDOW_COLUMNS = ["doc_id", "start", "ids"]


def read_window_table(window_dir: str, split: str) -> pa.Table:
    """The split's windows as one Arrow table in a stable order (by doc_id, start).

    Every file is read, or the read fails naming the file: a truncated file is never skipped.
    """
    uri = storage.join(window_dir, split)
    if not storage.is_dir(uri):
        raise InputError(f"windows not found: {uri} (run the window step first)")
    parquet_files.rows_per_file(uri)  # every footer first: a truncated file fails by name
    table = pa.concat_tables(
        [parquet_files.read_table(file_uri, WINDOW_COLUMNS) for file_uri in parquet_files.data_files(uri)]
    )
    # Spark writes partitions in no guaranteed order: sort so every reader sees the same rows.
    return table.sort_by([("doc_id", "ascending"), ("start", "ascending")])


def count_windows(window_dir: str, split: str) -> int:
    """The windows in a split's files, from their footers alone (no data is read)."""
    uri = storage.join(window_dir, split)
    if not storage.is_dir(uri):
        raise InputError(f"windows not found: {uri} (run the window step first)")
    return sum(parquet_files.rows_per_file(uri).values())


def windows_to_tensor(ids: pa.ChunkedArray | pa.Array, source: str) -> torch.Tensor:
    """A list<int32> column of equal-length windows as an int64 tensor [N, W+1]."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], type=pa.list_(pa.int32()))
    n = len(ids)
    if n == 0:
        return torch.empty((0, 0), dtype=torch.int64)
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise InputError(f"{source}: windows have different lengths ({lengths.min()}..{lengths.max()})")
    flat = ids.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    return torch.from_numpy(flat.reshape(n, int(lengths[0])))


def load_windows(window_dir: str, split: str, shard: int = 0, num_shards: int = 1) -> torch.Tensor:
    """int64 [N, W+1] windows of `split` ("train" or "val"); shard `shard` of `num_shards`.

    Every shard gets the same number of rows (the remainder is dropped), so DDP ranks run
    the same number of steps.
    """
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} out of range for {num_shards} shards")
    table = read_window_table(window_dir, split)
    per_shard = table.num_rows // num_shards
    if num_shards > 1:
        rows = np.arange(per_shard, dtype=np.int64) * num_shards + shard
        table = table.take(pa.array(rows))
    windows = windows_to_tensor(table.column("ids"), storage.join(window_dir, split))
    log.info("loaded %d %s windows (shard %d/%d)", len(windows), split, shard, num_shards)
    return windows


def load_windows_with_positions(window_dir: str, split: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """All windows of `split` in (doc_id, start) order: (ids int64 [N, W+1], doc_ids [N], starts [N])."""
    table = read_window_table(window_dir, split)
    windows = windows_to_tensor(table.column("ids"), storage.join(window_dir, split))
    doc_ids = table.column("doc_id").to_numpy(zero_copy_only=False).astype(np.int64)
    starts = table.column("start").to_numpy(zero_copy_only=False).astype(np.int64)
    return windows, doc_ids, starts


def batch_order(
    num_windows: int, batch_size: int, epoch: int, seed: int, shuffle: bool = True
) -> list[torch.Tensor]:
    """Row indices of each minibatch of one epoch; the last partial batch is dropped.

    The order depends only on (seed, epoch), so a resumed run recomputes it and continues at
    a batch index.
    """
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(num_windows, generator=generator)
    else:
        order = torch.arange(num_windows)
    num_batches = num_windows // batch_size
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(num_batches)]
