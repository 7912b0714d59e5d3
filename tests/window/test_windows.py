"""The window arithmetic (spark_jobs.data.windows), without Spark."""

from __future__ import annotations

import numpy as np
import pytest

from spark_jobs.data.windows import (
    Run,
    assign_segments,
    cut_windows,
    document_ranges,
    locate,
    partition_stats,
    plan_partitions,
    routing_keys,
    run_token_counts,
    segment_offsets,
    skipped_tokens_per_stride,
    split_point,
    split_ranges,
    stream_order,
    token_span,
    window_count,
    window_runs,
    window_starts,
    windows_per_chunk,
)


@pytest.mark.parametrize(
    ("tokens", "window_size", "stride", "expected"),
    [
        (8, 8, 1, 0),
        (9, 8, 1, 1),
        (10, 8, 1, 2),
        (100, 8, 1, 92),
        (100, 8, 4, 23),
        (100, 8, 50, 2),
        (0, 1, 1, 0),
    ],
)
def test_window_count_matches_brute_force(tokens: int, window_size: int, stride: int, expected: int) -> None:
    brute = len([s for s in range(0, tokens, stride) if s + window_size + 1 <= tokens])
    assert window_count(tokens, window_size, stride) == brute == expected


def test_offsets_and_document_ranges() -> None:
    doc_ids = np.array([0, 0, 0, 3, 3, 7])
    lengths = np.array([5, 2, 4, 10, 1, 6])
    offsets = segment_offsets(lengths)
    assert offsets.tolist() == [0, 5, 7, 11, 21, 22]
    ids, starts, ends = document_ranges(doc_ids, offsets, lengths)
    assert ids.tolist() == [0, 3, 7]
    assert starts.tolist() == [0, 11, 22]
    assert ends.tolist() == [11, 22, 28]
    empty = np.array([], dtype=np.int64)
    assert [a.tolist() for a in document_ranges(empty, empty, empty)] == [[], [], []]


def test_split_by_document_and_by_stream() -> None:
    starts, ends = np.array([0, 100]), np.array([100, 150])
    by_doc = split_ranges(starts, ends, np.array([80, 140]), "document")
    assert by_doc == {"train": [(0, 80), (100, 140)], "val": [(80, 100), (140, 150)]}
    # stream: the first document with validation text holds the one cut; later ones are all validation
    by_stream = split_ranges(starts, ends, np.array([100, 120]), "stream")
    assert by_stream == {"train": [(0, 120)], "val": [(120, 150)]}
    assert split_ranges(starts, ends, np.array([100, 100]), "stream") == {
        "train": [(0, 100)],
        "val": [(100, 150)],
    }
    assert split_point(0, 10, 0.25) == 10 - round(2.5)


def test_partitions_are_balanced_and_keep_every_window_in_order() -> None:
    stride, window_size = 3, 4
    runs = window_runs([(0, 100), (100, 103), (200, 260), (300, 305)], window_size, stride)
    assert runs == [Run(0, 32), Run(200, 19), Run(300, 1)]
    plan = plan_partitions(runs, stride, rows_per_partition=10)
    sizes = [sum(r.count for r in p) for p in plan]
    assert len(plan) == 6 and sum(sizes) == 52 and max(sizes) - min(sizes) <= 1
    every = np.concatenate([window_starts(p, stride) for p in plan])
    assert every.tolist() == window_starts(runs, stride).tolist()
    assert every.tolist() == list(range(0, 96, 3)) + list(range(200, 255, 3)) + [300]
    spans = [token_span(p, window_size, stride) for p in plan]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(spans, spans[1:], strict=False))
    assert spans[0][0] == 0 and spans[-1][1] == 305


@pytest.mark.parametrize("stride", [1, 3, 20])
def test_a_chunk_holds_about_window_chunk_tokens_tokens_at_any_stride(stride: int) -> None:
    window_size, chunk_tokens = 8, 1000
    runs = window_runs([(0, 50_000)], window_size, stride)
    plan = plan_partitions(runs, stride, windows_per_chunk(chunk_tokens, stride))
    tokens = [int(run_token_counts(np.array([r.count for r in p]), window_size, stride).sum()) for p in plan]
    assert len(plan) > 10
    # the plan balances its partitions: n = ceil(windows / per chunk), so none is under (n - 1) / n
    assert all(0.9 * chunk_tokens <= t <= chunk_tokens + window_size + 1 for t in tokens), tokens
    assert windows_per_chunk(5, stride=20) == 1  # a window longer than a chunk: one window each


def test_assign_segments_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 20, size=60)
    seg_starts = segment_offsets(lengths)
    seg_ends = seg_starts + lengths
    plan = plan_partitions(window_runs([(0, int(seg_ends[-1]))], 6, 2), 2, 25)
    spans = np.array([token_span(p, 6, 2) for p in plan])
    segment, part = assign_segments(seg_starts, seg_ends, spans[:, 0], spans[:, 1])
    expected = [
        (s, p)
        for s in range(len(lengths))
        for p in range(len(spans))
        if seg_starts[s] < spans[p, 1] and spans[p, 0] < seg_ends[s]
    ]
    assert sorted(zip(segment.tolist(), part.tolist(), strict=True)) == expected
    # an empty segment is needed by no partition
    segment, part = assign_segments(np.array([0, 5, 5]), np.array([5, 5, 9]), np.array([0]), np.array([9]))
    assert segment.tolist() == [0, 2] and part.tolist() == [0, 0]


def test_cut_windows_from_shuffled_segments() -> None:
    stream = np.arange(1000, 1030, dtype=np.int32)
    offsets = np.array([20, 10, 17])  # global; the stream slice starts at 10
    segments = [stream[10:20], stream[0:7], stream[7:10]]
    lengths = np.array([len(s) for s in segments])
    order = stream_order(offsets, lengths)
    rebuilt = np.concatenate([segments[i] for i in order])
    assert rebuilt.tolist() == stream[:20].tolist()
    windows = cut_windows(rebuilt, 10, np.array([10, 13, 25]), window_size=4)
    assert windows.dtype == np.int32
    assert windows.tolist() == [list(range(1000, 1005)), list(range(1003, 1008)), list(range(1015, 1020))]
    with pytest.raises(ValueError, match="need more"):
        cut_windows(rebuilt, 10, np.array([26]), window_size=4)
    with pytest.raises(ValueError, match="not contiguous"):
        stream_order(np.array([0, 11]), np.array([10, 5]))


def test_locate_maps_global_positions_to_documents() -> None:
    doc, start = locate(np.array([0, 10, 11, 25]), np.array([4, 9, 12]), np.array([0, 11, 20]))
    assert doc.tolist() == [4, 4, 9, 12] and start.tolist() == [0, 10, 0, 5]


def test_stride_skips_and_partition_stats() -> None:
    assert skipped_tokens_per_stride(8, 9) == 0 and skipped_tokens_per_stride(8, 12) == 3
    stats = partition_stats([10, 10, 5])
    assert stats["partitions"] == 3
    assert stats["rows_per_partition"] == {"min": 5, "mean": 25 / 3, "max": 10}
    assert stats["skew"] == pytest.approx(10 / (25 / 3))


def test_routing_keys_pick_the_first_key_landing_on_each_partition() -> None:
    hashes = np.array([5, 2, 7, 4, -1], dtype=np.int32)  # Spark's pmod: -1 mod 3 == 2
    assert routing_keys(hashes, 2).tolist() == [1, 0]
    assert routing_keys(hashes, 3) is None  # nothing lands on 0
    assert routing_keys(np.append(hashes, 6), 3).tolist() == [5, 2, 0]
