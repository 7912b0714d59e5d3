"""Windows for training: the window step's token chunks, cut into windows on the fly; the
seeded order of minibatches.

A `WindowSet` holds a token stream (chunks' ids, concatenated) and where each window starts
in it; `windows[rows]` copies just those rows out of a sliding-window view, so no window is
ever stored. A shard is a contiguous range of the split's windows (rank r of n gets the r-th
of n equal ranges), and a rank reads only the chunks that hold its range and keeps only the
tokens its windows read: its memory is O(its shard), not O(the split). Each rank walks its
shard in its own seeded order; DDP's global batch k is every rank's batch k.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError
from spark_jobs.data import window_chunks
from spark_jobs.data.windows import chunk_offsets, locate, run_windows

log = logging.getLogger(__name__)


class WindowSet:
    """Windows of window_size + 1 ids, cut on demand from one token stream.

    `stream` is int32; `starts[i]` is where window i begins in it. `windows[rows]` (rows: a
    LongTensor, a numpy int array, a slice or an int) is an int64 tensor [len(rows), W+1];
    `windows[rows, a:b]` only columns a..b-1 of those windows. `doc_ids` and `positions` say
    where each window begins (its document, its token position there).
    """

    def __init__(
        self,
        stream: np.ndarray,
        starts: np.ndarray,
        window_size: int,
        doc_ids: np.ndarray | None = None,
        positions: np.ndarray | None = None,
    ) -> None:
        self.stream = np.ascontiguousarray(stream, dtype=np.int32)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.window_size = window_size
        self.doc_ids = doc_ids if doc_ids is not None else np.zeros(len(self.starts), dtype=np.int64)
        self.positions = positions if positions is not None else self.starts
        # A view, not a copy: row j is stream[j : j + W + 1].
        self._view = np.lib.stride_tricks.sliding_window_view(self.stream, window_size + 1)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index) -> torch.Tensor:
        rows, columns = index if isinstance(index, tuple) else (index, slice(None))
        if isinstance(rows, torch.Tensor):
            rows = rows.numpy()
        return torch.from_numpy(self._view[self.starts[rows], columns].astype(np.int64))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.window_size + 1

    def numpy(self) -> np.ndarray:
        """Every window as one int64 array [N, W+1] (a copy: (W+1) * 8 bytes per window)."""
        return self[:].numpy()

    def between(self, begin: int, end: int) -> WindowSet:
        """Windows begin..end-1, holding just the tokens they read (a copy when that is fewer)."""
        starts = self.starts[begin:end]
        if not len(starts):
            return WindowSet(self.stream[: self.window_size + 1].copy(), starts, self.window_size)
        first, last = int(starts[0]), int(starts[-1]) + self.window_size + 1
        whole = first == 0 and last == len(self.stream)
        return WindowSet(
            self.stream if whole else self.stream[first:last].copy(),
            starts - first,
            self.window_size,
            self.doc_ids[begin:end],
            self.positions[begin:end],
        )


def read_window_set(window_dir: str, split: str) -> WindowSet:
    """All windows of a split, in order of global start (= (doc_id, position) order).

    Every file is read, or the read fails naming the file: a truncated file is never skipped.
    """
    uri = _split_uri(window_dir, split)
    return _window_set(uri, window_chunks.read_chunks(uri))


def _window_set(uri: str, chunks: list[window_chunks.Chunk]) -> WindowSet:
    """The windows of consecutive chunks, in order of global start."""
    sizes = {(chunk.window_size, chunk.stride) for chunk in chunks}
    if len(sizes) != 1:
        raise InputError(f"{uri}: chunks with different window sizes or strides {sorted(sizes)}")
    streams, starts, doc_ids, positions, offset = [], [], [], [], 0
    for chunk in chunks:
        streams.append(chunk.ids)
        starts.append(offset + chunk_offsets(chunk.run_counts, chunk.window_size, chunk.stride))
        doc, position = locate(
            run_windows(chunk.run_starts, chunk.run_counts, chunk.stride), chunk.doc_ids, chunk.doc_starts
        )
        doc_ids.append(doc.astype(np.int64))
        positions.append(position)
        offset += len(chunk.ids)
    return WindowSet(
        np.concatenate(streams),
        np.concatenate(starts),
        chunks[0].window_size,
        np.concatenate(doc_ids),
        np.concatenate(positions),
    )


def count_windows(window_dir: str, split: str) -> int:
    """The windows a split's files define, from their run_counts alone (no tokens are read)."""
    return sum(entry.windows for entry in window_chunks.chunk_index(_split_uri(window_dir, split)))


def load_windows(window_dir: str, split: str, shard: int = 0, num_shards: int = 1) -> WindowSet:
    """The windows of `split` ("train" or "val"); shard `shard` of `num_shards`.

    Shard r is windows [r·n, (r+1)·n) of the split in order of global start, n = windows //
    num_shards (the remainder is dropped, so DDP ranks run the same number of steps). Only the
    chunks that hold those windows are read, and the shard keeps only the tokens they read
    (~4 bytes per token of its range) plus 8 bytes per window.
    """
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} out of range for {num_shards} shards")
    uri = _split_uri(window_dir, split)
    index = window_chunks.chunk_index(uri)
    ends = np.cumsum([entry.windows for entry in index])
    per_shard = int(ends[-1]) // num_shards
    first, last = shard * per_shard, (shard + 1) * per_shard
    # the chunks whose windows overlap [first, last); one chunk for an empty shard
    needed = [i for i, end in enumerate(ends) if end > first and end - index[i].windows < last] or [0]
    offset = int(ends[needed[0]] - index[needed[0]].windows)  # windows before the first chunk read
    chunks = window_chunks.read_chunks(uri, [index[i] for i in needed])
    windows = _window_set(uri, chunks).between(first - offset, last - offset)
    log.info(
        "loaded %d %s windows (shard %d/%d: %d of %d chunks, %d tokens)",
        len(windows), split, shard, num_shards, len(needed), len(index), len(windows.stream),
    )  # fmt: skip
    return windows


def load_windows_with_positions(window_dir: str, split: str) -> tuple[WindowSet, np.ndarray, np.ndarray]:
    """All windows of `split` in (doc_id, start) order: (windows [N, W+1], doc_ids [N], starts [N]),
    a window's start being its position within its document."""
    windows = read_window_set(window_dir, split)
    return windows, windows.doc_ids, windows.positions


def _split_uri(window_dir: str, split: str) -> str:
    uri = storage.join(window_dir, split)
    if not storage.is_dir(uri):
        raise InputError(f"windows not found: {uri} (run the window step first)")
    return uri


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
