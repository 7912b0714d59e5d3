"""The window step's file format ("token-chunks-v1"): token chunks plus the rule that cuts windows.

One Parquet file per output partition, one row per file (zstd):

    part         int            the output partition (= the file's place in the split's order)
    window_size  int            a window is window_size + 1 ids
    stride       int            windows of a run start every `stride` tokens
    ids          array<int>     the tokens the partition's windows read, run after run
    run_starts   array<long>    global position of each run's first window
    run_counts   array<long>    windows in each run
    doc_ids      array<int>     the documents that overlap the chunk, and their global
    doc_starts   array<long>    starts: a window's doc_id and position within it (windows.locate)

Run i reads `(run_counts[i] - 1) * stride + window_size + 1` tokens, which follow run i - 1's
in `ids`; its window k starts at global position `run_starts[i] + stride * k`. A split's
windows are its chunks' windows in order of global start, exactly the windows the step used
to write one row each. A file holds sum(run_counts) windows; `ids` holds about the tokens of
the stream (plus window_size tokens of overlap per partition), whatever the stride.

Readers check every footer first (a truncated file fails by name), refuse the older
one-row-per-window layout with a one-line hint, and refuse a chunk whose ids do not hold
what its runs need. The run columns alone say which chunks hold which windows
(`chunk_index`), so a reader of a range of windows reads only those chunks' tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError
from spark_jobs.data import parquet_files
from spark_jobs.data.windows import Run, chunk_tokens, plan_partitions, run_token_counts, window_runs

FORMAT = "token-chunks-v1"
CHUNK_SCHEMA = pa.schema(
    [
        ("part", pa.int32()),
        ("window_size", pa.int32()),
        ("stride", pa.int32()),
        ("ids", pa.list_(pa.int32())),
        ("run_starts", pa.list_(pa.int64())),
        ("run_counts", pa.list_(pa.int64())),
        ("doc_ids", pa.list_(pa.int32())),
        ("doc_starts", pa.list_(pa.int64())),
    ]
)
# The same schema in Spark's DDL, for mapInArrow.
CHUNK_DDL = (
    "part int, window_size int, stride int, ids array<int>, run_starts array<long>, "
    "run_counts array<long>, doc_ids array<int>, doc_starts array<long>"
)
OLD_FORMAT_HINT = "windows from an older version of the window step; re-run the window step"


@dataclass(frozen=True)
class Chunk:
    """One chunk row: see the module docstring."""

    part: int
    window_size: int
    stride: int
    ids: np.ndarray
    run_starts: np.ndarray
    run_counts: np.ndarray
    doc_ids: np.ndarray
    doc_starts: np.ndarray


def chunk_batch(
    part: int,
    window_size: int,
    stride: int,
    ids: np.ndarray,
    runs: list[Run],
    doc_ids: np.ndarray,
    doc_starts: np.ndarray,
) -> pa.RecordBatch:
    """One chunk as a one-row Arrow batch of CHUNK_SCHEMA."""
    lists = {
        "ids": (ids, pa.int32()),
        "run_starts": ([run.start for run in runs], pa.int64()),
        "run_counts": ([run.count for run in runs], pa.int64()),
        "doc_ids": (doc_ids, pa.int32()),
        "doc_starts": (doc_starts, pa.int64()),
    }
    columns = {"part": pa.array([part], pa.int32()), "window_size": pa.array([window_size], pa.int32())}
    columns["stride"] = pa.array([stride], pa.int32())
    for name, (values, kind) in lists.items():
        values = pa.array(np.asarray(values), kind)
        columns[name] = pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)
    return pa.RecordBatch.from_arrays(list(columns.values()), schema=CHUNK_SCHEMA)


def write_chunk_file(path: str, batch: pa.RecordBatch) -> None:
    """A chunk file as the window step writes it (for tests and benchmarks that build inputs)."""
    pq.write_table(pa.Table.from_batches([batch]), path, compression="zstd")


def write_stream_split(
    folder: str, stream: np.ndarray, base: int, window_size: int, stride: int, files: int = 2
) -> int:
    """The chunk files of a split that is one range of document 0 (which starts at global 0):
    `stream` holds the range's tokens, at global [base, base + len(stream)). Its windows go in
    `files` near-equal local files, named in reverse stream order so that readers cannot lean
    on file order; returns the number of windows. For tests and benchmarks that build inputs."""
    runs = window_runs([(base, base + len(stream))], window_size, stride)
    total = sum(run.count for run in runs)
    plan = plan_partitions(runs, stride, max(1, -(-total // files)))
    os.makedirs(folder, exist_ok=True)
    for part, part_runs in enumerate(plan):
        ids = chunk_tokens(stream, base, part_runs, window_size, stride)
        batch = chunk_batch(part, window_size, stride, ids, part_runs, np.array([0]), np.array([0]))
        write_chunk_file(os.path.join(folder, f"part-{len(plan) - 1 - part:05d}.parquet"), batch)
    return total


def chunk_files(split_uri: str) -> list[str]:
    """A split's data files, every footer checked and the format too (one-line errors naming the file)."""
    files = list(parquet_files.rows_per_file(split_uri))  # every footer first: a truncated file fails by name
    for uri in files:
        fs, path = storage.filesystem(uri)
        names = pq.read_schema(path, filesystem=fs).names
        if "run_starts" not in names and "start" in names:
            raise InputError(f"{uri}: {OLD_FORMAT_HINT}")
        missing = [name for name in CHUNK_SCHEMA.names if name not in names]
        if missing:
            raise InputError(f"{uri}: not a window chunk file (missing column(s) {', '.join(missing)})")
    return files


@dataclass(frozen=True)
class ChunkEntry:
    """Where one chunk is and which windows it holds, from its run columns alone."""

    uri: str
    row: int
    first_start: int  # global start of its first window: chunks sort by it
    windows: int


def chunk_index(split_uri: str) -> list[ChunkEntry]:
    """Every chunk of a split in order of global start, read from the run columns (no tokens):
    what a reader needs to pick the chunks that hold a range of windows."""
    entries = []
    for uri in chunk_files(split_uri):
        table = parquet_files.read_table(uri, ["run_starts", "run_counts"])
        for row in range(table.num_rows):
            starts, counts = _values(table, "run_starts", row), _values(table, "run_counts", row)
            if not len(starts) or len(starts) != len(counts):
                raise InputError(f"{uri}: not a valid window chunk (window_size, stride or runs)")
            entries.append(ChunkEntry(uri, row, int(starts[0]), int(counts.sum())))
    # Spark writes partitions in no guaranteed order: sort so every reader sees the same windows.
    return sorted(entries, key=lambda entry: entry.first_start)


def windows_per_file(split_uri: str) -> dict[str, int]:
    """{file URI: windows it defines}, in file name order, from the run columns alone."""
    counts: dict[str, int] = {}
    for entry in sorted(chunk_index(split_uri), key=lambda entry: entry.uri):
        counts[entry.uri] = counts.get(entry.uri, 0) + entry.windows
    return counts


def read_chunks(split_uri: str, entries: list[ChunkEntry] | None = None) -> list[Chunk]:
    """The chunks `entries` name (default: every chunk of the split), in order of global start;
    only their files are read. A chunk whose ids are not what its runs read is an InputError
    naming the file."""
    rows_of: dict[str, list[int] | None] = {}
    if entries is None:
        rows_of = dict.fromkeys(chunk_files(split_uri))  # None: every row of the file
    for entry in entries or []:
        rows_of.setdefault(entry.uri, []).append(entry.row)
    chunks = []
    for uri, rows in rows_of.items():
        table = parquet_files.read_table(uri, CHUNK_SCHEMA.names)
        for row in sorted(rows) if rows is not None else range(table.num_rows):
            chunk = Chunk(
                part=int(table.column("part")[row].as_py()),
                window_size=int(table.column("window_size")[row].as_py()),
                stride=int(table.column("stride")[row].as_py()),
                **{name: _values(table, name, row) for name in CHUNK_SCHEMA.names[3:]},
            )
            _check(chunk, uri)
            chunks.append(chunk)
    return sorted(chunks, key=lambda chunk: int(chunk.run_starts[0]))


def _values(table: pa.Table, name: str, row: int) -> np.ndarray:
    return table.column(name)[row].values.to_numpy(zero_copy_only=False)


def _check(chunk: Chunk, uri: str) -> None:
    counts = chunk.run_counts
    if chunk.window_size < 1 or chunk.stride < 1 or not len(counts) or len(counts) != len(chunk.run_starts):
        raise InputError(f"{uri}: not a valid window chunk (window_size, stride or runs)")
    if np.any(counts < 1) or not len(chunk.doc_ids) or chunk.doc_starts[0] > chunk.run_starts[0]:
        raise InputError(f"{uri}: not a valid window chunk (empty runs or documents)")
    needed = int(run_token_counts(counts, chunk.window_size, chunk.stride).sum())
    if len(chunk.ids) != needed:
        raise InputError(
            f"{uri}: part {chunk.part} holds {len(chunk.ids)} tokens but its {int(counts.sum())} windows "
            f"read {needed}; re-run the window step"
        )
