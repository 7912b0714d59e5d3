"""The window step on real local Spark: windows checked token by token against the stream."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError
from spark_jobs.data import window_chunks
from spark_jobs.data.loader import (
    WindowSet,
    count_windows,
    load_windows,
    load_windows_with_positions,
    read_window_set,
)
from spark_jobs.data.windows import split_point, window_count
from spark_jobs.steps import window

from .conftest import doc_tokens, write_preprocess

pytestmark = pytest.mark.timeout(300)


def read_split(step: str, split: str) -> tuple[WindowSet, list[int]]:
    """A split's windows as training reads them, and the windows each file (partition) defines."""
    files = window_chunks.windows_per_file(storage.join(step, split))
    return read_window_set(step, split), list(files.values())


def window_dir(config) -> str:
    return storage.step_dir(config.run.root, config.run.id, "window")


def test_stride_one_by_document_rebuilds_the_stream(spark, window_config) -> None:
    lengths = [1000, 537, 20]  # the last document is too short for a val window
    config = window_config(window_size=8, stride=1, valid_split=0.2, rows_per_partition=300)
    write_preprocess(config, lengths)

    result = window.run(config)

    step = window_dir(config)
    assert storage.is_complete(step)
    distribution = json.loads(Path(step, "data_distribution.json").read_text())
    assert distribution["window_size"] == 8 and distribution["stride"] == 1
    assert distribution["chars_per_token"] == 3.0
    assert distribution["format"] == "token-chunks-v1"
    for split in ("train", "val"):
        files = sorted((Path(step) / split).glob("*.parquet"))
        schema = pq.read_schema(files[0])
        assert schema.names == window_chunks.CHUNK_SCHEMA.names
        for field in window_chunks.CHUNK_SCHEMA:
            assert getattr(
                schema.field(field.name).type, "value_type", schema.field(field.name).type
            ) == getattr(field.type, "value_type", field.type)
        assert all(pq.read_metadata(f).num_rows == 1 for f in files)  # one chunk per partition
        assert distribution[split]["bytes"] == sum(f.stat().st_size for f in files)
        windows, rows = read_split(step, split)
        doc_ids, starts = windows.doc_ids, windows.positions
        ids = windows[:].numpy()
        assert ids.shape == (len(windows), 9)
        # the windows follow the stream: sorted by (doc_id, start)
        assert np.all(np.lexsort((starts, doc_ids)) == np.arange(len(windows)))
        # no window is stored: the chunks hold the tokens once (plus the overlap between partitions)
        assert len(windows.stream) <= distribution[split]["tokens"] + 8 * (len(rows) - 1)

        tokens, expected_windows = 0, 0
        for doc_id, length in enumerate(lengths):
            cut = split_point(0, length, 0.2)
            lo, hi = (0, cut) if split == "train" else (cut, length)
            tokens += hi - lo
            count = window_count(hi - lo, 8, 1)
            expected_windows += count
            mine = doc_ids == doc_id
            assert starts[mine].tolist() == list(range(lo, lo + count))  # window k starts at k * stride
            assert ids[mine].min(initial=lo + doc_id * 100_000) >= lo + doc_id * 100_000  # no window crosses
            assert ids[mine].max(initial=0) < doc_id * 100_000 + hi
            if count:
                stream = doc_tokens(doc_id, length)[lo:hi]
                rebuilt = np.concatenate([ids[mine][:, 0], ids[mine][-1, 1:]])
                assert rebuilt.tolist() == stream.tolist()
        assert len(windows) == expected_windows
        stats = distribution[split]
        assert stats["windows"] == expected_windows == result[f"{split}_windows"]
        assert stats["tokens"] == tokens
        assert stats["partitions"] == len(rows) == -(-expected_windows // 300)
        assert stats["rows_per_partition"] == {
            "min": min(rows),
            "mean": sum(rows) / len(rows),
            "max": max(rows),
        }
        assert stats["skew"] == pytest.approx(max(rows) / (sum(rows) / len(rows)))
        assert max(rows) - min(rows) <= 1


def test_stride_by_stream_starts_every_stride_and_warns_when_skipping(spark, window_config) -> None:
    lengths = [300, 45, 260]
    config = window_config(
        window_size=4, stride=7, valid_split=0.25, split_by="stream", rows_per_partition=20
    )
    write_preprocess(config, lengths, seed=3)
    stream = np.concatenate([doc_tokens(d, n) for d, n in enumerate(lengths)])
    doc_starts = np.cumsum([0, *lengths[:-1]])
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger("spark_jobs.steps.window")
    logger.addHandler(handler)
    try:
        window.run(config)
    finally:
        logger.removeHandler(handler)
    assert any("data.window_stride=7 > model.window_size + 1 = 5: 2 of every 7" in w for w in warnings)

    cut = split_point(0, len(stream), 0.25)
    for split, (lo, hi) in {"train": (0, cut), "val": (cut, len(stream))}.items():
        windows, rows = read_split(window_dir(config), split)
        count = window_count(hi - lo, 4, 7)
        global_starts = lo + 7 * np.arange(count)
        assert len(windows) == count and len(rows) == -(-count // 20)
        doc = np.searchsorted(doc_starts, global_starts, side="right") - 1
        assert windows.doc_ids.tolist() == doc.tolist()
        assert windows.positions.tolist() == (global_starts - doc_starts[doc]).tolist()
        # stream windows may run across documents, never across the split
        expected = [stream[s : s + 5].tolist() for s in global_starts]
        assert windows[:].tolist() == expected
        assert all(s + 5 <= hi for s in global_starts)


def test_rerun_replaces_the_output_and_is_identical(spark, window_config) -> None:
    config = window_config(window_size=6, stride=3, rows_per_partition=40)
    write_preprocess(config, [400, 250], seed=5)
    step = window_dir(config)
    stale = Path(step, "train", "part-99999-stale.parquet")  # an older output, marked complete
    stale.parent.mkdir(parents=True)
    pq.write_table(pa.table({"doc_id": pa.array([9], pa.int32())}), stale)
    Path(step, storage.SUCCESS_MARKER).write_text("")

    window.run(config)
    first = {s: read_split(step, s) for s in ("train", "val")}
    assert not stale.exists()
    assert sum(first["train"][1]) == window_count(320, 6, 3) + window_count(200, 6, 3)
    first_json = Path(step, "data_distribution.json").read_text()

    window.run(config)
    for split in ("train", "val"):
        windows, rows = read_split(step, split)
        assert rows == first[split][1]
        assert np.array_equal(windows.stream, first[split][0].stream)
        assert np.array_equal(windows.starts, first[split][0].starts)
    assert Path(step, "data_distribution.json").read_text() == first_json
    assert storage.is_complete(step)


def test_window_larger_than_the_tokens_is_refused(spark, window_config) -> None:
    config = window_config(window_size=64, valid_split=0.1)
    write_preprocess(config, [300, 200])
    with pytest.raises(InputError) as info:
        window.run(config)
    message = str(info.value)
    assert "\n" not in message
    assert "no val windows" in message and "model.window_size=64" in message and "30 tokens" in message
    assert not storage.is_complete(window_dir(config))


def test_missing_or_unfinished_preprocess_is_refused(tmp_path: Path, window_config) -> None:
    config = window_config()
    with pytest.raises(InputError, match="preprocess output not found"):
        window.run(config)
    write_preprocess(config, [100], success=False)
    with pytest.raises(InputError, match="no _SUCCESS marker"):
        window.run(config)
    assert not storage.exists(window_dir(config))


def test_malformed_preprocess_output_is_refused(spark, window_config) -> None:
    config = window_config()
    step = Path(write_preprocess(config, [200]))
    stats = step / "stats.json"
    good_stats = stats.read_text()
    stats.write_text("{}")
    with pytest.raises(InputError, match=r"stats\.json: no valid 'chars_per_token'"):
        window.run(config)
    stats.write_text(good_stats)
    for part in (step / "tokens").iterdir():
        table = pq.read_table(part)
        pq.write_table(table.rename_columns(["doc_id", "seq", "tokens"]), part)
    with pytest.raises(InputError, match=r"tokens: missing column\(s\) ids"):
        window.run(config)
    assert not storage.exists(window_dir(config))


def test_a_truncated_token_file_is_named_before_spark_reads_it(spark, window_config) -> None:
    config = window_config()
    step = Path(write_preprocess(config, [200, 150]))
    part = sorted((step / "tokens").glob("*.parquet"))[1]
    part.write_bytes(part.read_bytes()[:-9])  # the footer's length and magic bytes gone
    with pytest.raises(InputError) as info:
        window.run(config)
    message = str(info.value)
    assert message.startswith(f"{part}: not a valid Parquet file (") and "\n" not in message
    assert not storage.exists(window_dir(config))


def test_cli_exits_2_with_one_line(tmp_path: Path, repo: Path) -> None:
    result = subprocess.run(
        [sys.executable, "spark_jobs/steps/window.py", "--set", f"run.root={tmp_path}", "--set", "run.id=x"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: window: preprocess output not found") and str(tmp_path) in last


@pytest.mark.slow
def test_preprocess_then_window_decodes_back_to_the_corpus(spark, tmp_path: Path, small_corpus: Path) -> None:
    from spark_jobs.common.config import validate_config
    from spark_jobs.data.tokenizer import load_tokenizer
    from spark_jobs.steps import preprocess

    config = validate_config(
        {
            "spark": {"master": "local[2]", "window_chunk_tokens": 2000},
            "model": {"window_size": 16, "embedding_size": 16},
            "data": {"corpus_path": str(small_corpus), "vocab_size": 300, "window_stride": 1},
            "run": {"root": str(tmp_path), "id": "e2e"},
        }
    )
    preprocess.run(config)
    window.run(config)

    step = window_dir(config)
    stream = []
    for split in ("train", "val"):
        windows, rows = read_split(step, split)
        ids = windows[:].tolist()
        stream += [w[0] for w in ids] + ids[-1][1:]  # stride 1: first tokens + the last tail
    preprocess_dir = storage.step_dir(config.run.root, config.run.id, "preprocess")
    tokenizer = load_tokenizer(storage.join(preprocess_dir, "tokenizer.json"))
    assert tokenizer.decode(stream) == small_corpus.read_text(encoding="utf-8")
    stats = json.loads(Path(preprocess_dir, "stats.json").read_text())
    distribution = json.loads(Path(step, "data_distribution.json").read_text())
    assert distribution["chars_per_token"] == stats["chars_per_token"]
    assert distribution["train"]["tokens"] + distribution["val"]["tokens"] == stats["tokens"] == len(stream)


def test_a_split_that_disagrees_with_the_preprocess_step_is_refused(window_config):
    config = window_config(valid_split=0.2)
    write_preprocess(config, [300, 200])
    other = window_config(valid_split=0.3)
    with pytest.raises(
        InputError, match=r"training.valid_split is 0.3 but the preprocess step split .*valid_split=0.2"
    ):
        window.run(other)
    split_by = window_config(valid_split=0.2, split_by="stream")
    with pytest.raises(InputError, match=r"data.split_by is 'stream' but .*re-run the preprocess step"):
        window.run(split_by)


# --- the bundled corpus: the windows training reads, against numpy on the preprocess tokens ---------


def expected_windows(preprocess_dir: str, window_size: int, stride: int, split_by: str) -> dict[str, tuple]:
    """Per split (doc_ids, positions, ids [N, W+1]) computed from tokens/ and split.json alone:
    per split ranges (each document's or the stream's), a window every `stride` tokens from the
    range's start, none that runs past the range's end, in stream order."""
    tokens = pq.read_table(Path(preprocess_dir, "tokens")).sort_by(
        [("doc_id", "ascending"), ("seq", "ascending")]
    )
    split = json.loads(Path(preprocess_dir, "split.json").read_text())
    docs: dict[int, list] = {}
    val_at: dict[int, int] = {}
    for doc, seq, ids in zip(*(tokens.column(c).to_pylist() for c in ("doc_id", "seq", "ids")), strict=True):
        if seq == split["val_first_segment"].get(str(doc)):
            val_at[doc] = sum(len(piece) for piece in docs.get(doc, []))
        docs.setdefault(doc, []).append(ids)
    streams = {
        doc: np.array([t for piece in pieces for t in piece], dtype=np.int64) for doc, pieces in docs.items()
    }
    doc_order = sorted(streams)
    doc_start = dict(zip(doc_order, np.cumsum([0] + [len(streams[d]) for d in doc_order[:-1]]), strict=True))
    everything = np.concatenate([streams[d] for d in doc_order])
    if split_by == "document":
        ranges = {
            "train": [(doc_start[d], doc_start[d] + val_at.get(d, len(streams[d]))) for d in doc_order],
            "val": [
                (doc_start[d] + val_at.get(d, len(streams[d])), doc_start[d] + len(streams[d]))
                for d in doc_order
            ],
        }
    else:
        cut = min(doc_start[d] + val_at[d] for d in val_at)
        ranges = {"train": [(0, cut)], "val": [(cut, len(everything))]}
    out = {}
    for name, split_ranges in ranges.items():
        starts = np.array(
            [s for lo, hi in split_ranges for s in range(lo, hi - window_size, stride)], dtype=np.int64
        )
        owner = np.searchsorted([doc_start[d] for d in doc_order], starts, side="right") - 1
        doc_ids = np.array(doc_order)[owner]
        positions = starts - np.array([doc_start[d] for d in doc_order])[owner]
        out[name] = (doc_ids, positions, np.stack([everything[s : s + window_size + 1] for s in starts]))
    return out


@pytest.fixture(scope="module")
def bundled_preprocess(tmp_path_factory: pytest.TempPathFactory, corpus_path: Path):
    """The first ~30 kB of data/tinyshakespeare.txt as three documents, preprocessed once per
    split_by; returns make(split_by, window_size, stride) -> (window dir, preprocess dir)."""
    from spark_jobs.common.config import validate_config
    from spark_jobs.steps import preprocess

    text = corpus_path.read_text(encoding="utf-8")[:30_000]
    corpus = tmp_path_factory.mktemp("bundled")
    scenes = text.split("\n\n")
    for i, part in enumerate(np.array_split(np.arange(len(scenes)), 3)):
        (corpus / f"part{i}.txt").write_text("\n\n".join(scenes[j] for j in part) + "\n", encoding="utf-8")
    root = tmp_path_factory.mktemp("bundled-root")

    def config(run_id: str, split_by: str, window_size: int = 16, stride: int = 1):
        return validate_config(
            {
                "spark": {"master": "local[2]", "window_chunk_tokens": 1000 * stride},
                "model": {"window_size": window_size, "embedding_size": 16},
                "data": {
                    "corpus_path": str(corpus),
                    "vocab_size": 300,
                    "window_stride": stride,
                    "split_by": split_by,
                },
                "run": {"root": str(root), "id": run_id},
            }
        )

    done: dict[str, str] = {}

    def make(split_by: str, window_size: int, stride: int) -> tuple[str, str]:
        if split_by not in done:
            preprocess.run(config(split_by, split_by))
            done[split_by] = storage.step_dir(str(root), split_by, "preprocess")
        cfg = config(f"{split_by}-{window_size}-{stride}", split_by, window_size, stride)
        target = storage.step_dir(str(root), cfg.run.id, "preprocess")
        if not Path(target).exists():
            shutil.copytree(done[split_by], target)
        window.run(cfg)
        return window_dir(cfg), target

    return make


@pytest.mark.slow  # two preprocess runs: ~1 min in all on 2 idle cores
@pytest.mark.parametrize(
    ("split_by", "stride"), [("document", 1), ("document", 5), ("stream", 1), ("stream", 5)]
)
def test_bundled_corpus_windows_are_exactly_the_sliding_windows_of_the_tokens(
    spark, bundled_preprocess, split_by: str, stride: int
) -> None:
    window_size = 16
    windows_dir, preprocess_dir = bundled_preprocess(split_by, window_size, stride)
    expected = expected_windows(preprocess_dir, window_size, stride, split_by)
    distribution = json.loads(Path(windows_dir, "data_distribution.json").read_text())
    assert distribution["train"]["partitions"] > 1  # windows cut across chunk boundaries too
    for split, (doc_ids, positions, ids) in expected.items():
        windows, doc_got, positions_got = load_windows_with_positions(windows_dir, split)
        assert len(windows) == len(ids) == distribution[split]["windows"] == count_windows(windows_dir, split)
        assert np.array_equal(doc_got, doc_ids) and np.array_equal(positions_got, positions)
        assert windows[:].dtype == torch.int64 and np.array_equal(windows[:].numpy(), ids)
        # every rank's shard, together, is the whole split in the same order
        shards = [load_windows(windows_dir, split, r, 3) for r in range(3)]
        per_shard = len(ids) // 3
        for r, shard in enumerate(shards):
            assert np.array_equal(shard[:].numpy(), ids[r * per_shard : (r + 1) * per_shard])
