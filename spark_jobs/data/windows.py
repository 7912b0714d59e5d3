"""Sliding windows over token streams: the arithmetic of the window step, without Spark.

Positions are *global*: the documents' token streams laid end to end in doc_id order, so one
integer says where a token is. From the segment lengths alone (small metadata) the driver
works out everything else:

    segment lengths ─→ segment offsets ─→ train/val ranges ─→ window runs ─→ output partitions
                                                                     └─→ which segments each partition needs

Each partition then rebuilds only its own slice of the stream (plus the `window_size` tokens
of overlap its last windows reach into), so no task ever holds the whole stream, and keeps
it as one *chunk*: the tokens its windows read plus the rule that defines them (its runs and
the stride). Windows are cut from the chunks only when training reads them (numpy views), so
the window step's output is about the size of the token stream at any stride instead of
(window_size + 1) / stride times it.

A window is `window_size + 1` ids: for the mlp the first `window_size` are context and the
last is the target; the gpt trains on all `window_size` shifted positions. Windows start
every `stride` tokens from the start of their split's range; a window that would run past
the range's end is dropped, so no window mixes train and val tokens.

Split by "document", every document has its own train range (its first 1 - valid_split)
and val range, and windows stay inside one document; a range shorter than window_size + 1
gives no window. Split by "stream", the concatenated stream is one range pair, like
nanoGPT's single file: windows may run across a document boundary. Either way a window's
`doc_id` and `start` name the document of its first token and the position there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Run:
    """`count` windows starting at global positions `start`, `start + stride`, ..."""

    start: int
    count: int


# --- where every token is -------------------------------------------------------------


def segment_offsets(lengths: np.ndarray) -> np.ndarray:
    """Global offset of every segment, given its length, in (doc_id, seq) order."""
    offsets = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return offsets


def document_ranges(doc_ids: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
    """(doc_ids, starts, ends) of each document, from segments sorted by (doc_id, seq)."""
    if len(doc_ids) == 0:
        return doc_ids, offsets, offsets
    first = np.flatnonzero(np.r_[True, doc_ids[1:] != doc_ids[:-1]])
    last = np.r_[first[1:], len(doc_ids)] - 1
    return doc_ids[first], offsets[first], offsets[last] + lengths[last]


# --- the train/val split --------------------------------------------------------------


def split_point(start: int, end: int, valid_split: float) -> int:
    """Where validation begins in [start, end): the last `valid_split` of it (rounded)."""
    return end - round((end - start) * valid_split)


def validation_starts(
    segments: dict[str, np.ndarray],
    doc_ids: np.ndarray,
    doc_ends: np.ndarray,
    val_first_segment: dict[int, int],
) -> np.ndarray:
    """Global token offset where each document's validation begins: the offset of its first
    validation segment (preprocess/split.json), or its end when it has none."""
    where = {
        (int(d), int(s)): int(o)
        for d, s, o in zip(segments["doc_id"], segments["seq"], segments["offset"], strict=True)
    }
    return np.array(
        [
            where.get((int(doc), val_first_segment[int(doc)]), int(end))
            for doc, end in zip(doc_ids, doc_ends, strict=True)
        ],
        dtype=np.int64,
    )


def split_ranges(
    doc_starts: np.ndarray,
    doc_ends: np.ndarray,
    val_starts: np.ndarray,
    split_by: Literal["document", "stream"],
) -> dict[str, list[tuple[int, int]]]:
    """Global [start, end) ranges of each split, cut where validation begins: per document, or
    once in the whole stream (at the first document that has validation text)."""
    if split_by == "stream":
        if not len(doc_starts):
            return {"train": [], "val": []}
        cuts = [int(v) for v, end in zip(val_starts, doc_ends, strict=True) if v < end]
        cut = cuts[0] if cuts else int(doc_ends[-1])
        return {"train": [(int(doc_starts[0]), cut)], "val": [(cut, int(doc_ends[-1]))]}
    ranges: dict[str, list[tuple[int, int]]] = {"train": [], "val": []}
    for start, cut, end in zip(doc_starts, val_starts, doc_ends, strict=True):
        ranges["train"].append((int(start), int(cut)))
        ranges["val"].append((int(cut), int(end)))
    return ranges


# --- windows and partitions -----------------------------------------------------------


def window_count(tokens: int, window_size: int, stride: int) -> int:
    """Windows of window_size + 1 tokens that fit in `tokens`, one every `stride`."""
    if tokens < window_size + 1:
        return 0
    return (tokens - window_size - 1) // stride + 1


def window_runs(ranges: list[tuple[int, int]], window_size: int, stride: int) -> list[Run]:
    """The windows of each range, as runs; ranges too short for one window give none."""
    runs = [Run(start, window_count(end - start, window_size, stride)) for start, end in ranges]
    return [run for run in runs if run.count > 0]


def skipped_tokens_per_stride(window_size: int, stride: int) -> int:
    """Tokens between two consecutive windows that no window covers (stride > window_size + 1)."""
    return max(0, stride - (window_size + 1))


def plan_partitions(runs: list[Run], stride: int, rows_per_partition: int) -> list[list[Run]]:
    """Cut the runs (in order) into ceil(total / rows_per_partition) partitions of near-equal size.

    Partition p gets windows [p * total // n, (p + 1) * total // n) of the global order, so
    sizes differ by at most one and the output order follows the stream.
    """
    total = sum(run.count for run in runs)
    if total == 0:
        return []
    n = -(-total // rows_per_partition)
    bounds = [p * total // n for p in range(n + 1)]
    return [_slice_runs(runs, stride, bounds[p], bounds[p + 1]) for p in range(n)]


def windows_per_chunk(chunk_tokens: int, stride: int) -> int:
    """How many windows make a chunk of about `chunk_tokens` tokens: each window after a run's
    first adds `stride` tokens (a run keeps the tokens a large stride skips; see chunk_tokens)."""
    return max(1, chunk_tokens // stride)


def _slice_runs(runs: list[Run], stride: int, first: int, stop: int) -> list[Run]:
    """The windows with global index in [first, stop) of the runs, as runs."""
    sliced, seen = [], 0
    for run in runs:
        lo, hi = max(first, seen), min(stop, seen + run.count)
        if lo < hi:
            sliced.append(Run(start=run.start + (lo - seen) * stride, count=hi - lo))
        seen += run.count
    return sliced


def window_starts(runs: list[Run], stride: int) -> np.ndarray:
    """Global start of every window of a partition, in order."""
    if not runs:
        return np.array([], dtype=np.int64)
    return np.concatenate([run.start + stride * np.arange(run.count, dtype=np.int64) for run in runs])


def token_span(runs: list[Run], window_size: int, stride: int) -> tuple[int, int]:
    """The global [start, end) of the tokens a partition's windows read."""
    last = runs[-1]
    return runs[0].start, last.start + (last.count - 1) * stride + window_size + 1


def assign_segments(
    seg_starts: np.ndarray, seg_ends: np.ndarray, span_starts: np.ndarray, span_ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(segment index, partition) for every segment that overlaps a partition's token span.

    Spans are sorted with non-decreasing starts and ends (partitions follow the stream), so
    the partitions a segment overlaps form one interval found by binary search. A segment at
    a partition boundary goes to both sides: that is the overlap the last windows need.
    Empty segments go nowhere.
    """
    first = np.searchsorted(span_ends, seg_starts, side="right")
    stop = np.searchsorted(span_starts, seg_ends, side="left")
    counts = np.where(seg_ends > seg_starts, np.clip(stop - first, 0, None), 0)
    segment = np.repeat(np.arange(len(seg_starts)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return segment, np.repeat(first, counts) + within


def stream_order(offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The order that lays segments (arriving in any order) end to end; they must be contiguous."""
    order = np.argsort(offsets, kind="stable")
    ends = offsets[order] + lengths[order]
    if np.any(offsets[order][1:] != ends[:-1]):
        raise ValueError("the segments of a partition are not contiguous")
    return order


def cut_windows(stream: np.ndarray, base: int, starts: np.ndarray, window_size: int) -> np.ndarray:
    """Windows [len(starts), window_size + 1] int32 from `stream`, the tokens at global [base, ...)."""
    if len(starts) and (starts[0] < base or starts[-1] + window_size + 1 > base + len(stream)):
        raise ValueError(f"tokens cover [{base}, {base + len(stream)}), the windows need more")
    view = np.lib.stride_tricks.sliding_window_view(stream.astype(np.int32, copy=False), window_size + 1)
    return np.ascontiguousarray(view[starts - base])


def run_token_counts(counts: np.ndarray, window_size: int, stride: int) -> np.ndarray:
    """Tokens each run's windows read: from its first window's start to its last window's end."""
    return (np.asarray(counts, dtype=np.int64) - 1) * stride + window_size + 1


def run_windows(run_starts: np.ndarray, run_counts: np.ndarray, stride: int) -> np.ndarray:
    """Global start of every window of runs given as arrays (window_starts for a chunk's columns)."""
    counts = np.asarray(run_counts, dtype=np.int64)
    return np.repeat(np.asarray(run_starts, dtype=np.int64), counts) + stride * _index_within(counts)


def _index_within(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., counts[0] - 1, 0, 1, ..., counts[1] - 1, ...: each item's index within its run."""
    return np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


def chunk_tokens(stream: np.ndarray, base: int, runs: list[Run], window_size: int, stride: int) -> np.ndarray:
    """The tokens a partition's windows read, run after run, from `stream` (the tokens at global
    [base, ...)). The tokens between two runs (another split's range between two documents)
    are in no window of this split, so the chunk leaves them out."""
    lengths = run_token_counts(np.array([run.count for run in runs]), window_size, stride)
    pieces = []
    for run, length in zip(runs, lengths, strict=True):
        lo = run.start - base
        if lo < 0 or lo + length > len(stream):
            raise ValueError(f"tokens cover [{base}, {base + len(stream)}), the windows need more")
        pieces.append(stream[lo : lo + length])
    return np.concatenate(pieces).astype(np.int32, copy=False)


def chunk_offsets(run_counts: np.ndarray, window_size: int, stride: int) -> np.ndarray:
    """Where each window of a chunk starts in the chunk's tokens (see chunk_tokens): run i's
    windows start at (the tokens of runs 0..i-1) + stride * k."""
    counts = np.asarray(run_counts, dtype=np.int64)
    lengths = run_token_counts(counts, window_size, stride)
    run_offsets = np.cumsum(lengths) - lengths
    return np.repeat(run_offsets, counts) + stride * _index_within(counts)


def chunk_documents(
    doc_ids: np.ndarray, doc_starts: np.ndarray, span: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The documents (ids, global starts) that overlap the global token span [start, end): all
    that `locate` needs for the windows of that span."""
    first = max(int(np.searchsorted(doc_starts, span[0], side="right")) - 1, 0)
    stop = int(np.searchsorted(doc_starts, span[1], side="left"))
    return doc_ids[first:stop], doc_starts[first:stop]


def routing_keys(hashes: np.ndarray, n: int) -> np.ndarray | None:
    """For p in 0..n-1, the smallest i with hashes[i] mod n == p (None if some p has none).

    With `hashes[i]` = Spark's hash(i), `repartition(n, key)` sends key keys[p] to partition p.
    """
    landing = np.mod(hashes.astype(np.int64), n)
    keys = np.full(n, -1, dtype=np.int64)
    first = np.unique(landing, return_index=True)
    keys[first[0]] = first[1]
    return None if np.any(keys < 0) else keys


def locate(starts: np.ndarray, doc_ids: np.ndarray, doc_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(doc_id, position within that document) of global positions."""
    doc = np.searchsorted(doc_starts, starts, side="right") - 1
    return doc_ids[doc].astype(np.int32), (starts - doc_starts[doc]).astype(np.int64)


# --- the distribution report ----------------------------------------------------------


def partition_stats(rows: list[int]) -> dict:
    """rows_per_partition {min, mean, max} and skew (max / mean) of one split's output."""
    if not rows:
        return {"partitions": 0, "rows_per_partition": {"min": 0, "mean": 0.0, "max": 0}, "skew": 0.0}
    mean = sum(rows) / len(rows)
    return {
        "partitions": len(rows),
        "rows_per_partition": {"min": min(rows), "mean": mean, "max": max(rows)},
        "skew": max(rows) / mean,
    }
