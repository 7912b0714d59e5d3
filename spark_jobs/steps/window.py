"""The window step: cut the preprocess step's token streams into train/val windows on Spark.

    spark-submit spark_jobs/steps/window.py --config configs/local.yaml

reads `<run>/preprocess/tokens/` and writes `<run>/window/{train,val}/` (Parquet token chunks
and the rule that cuts them into windows: `spark_jobs.data.window_chunks`) and
`data_distribution.json`.

The driver collects only segment lengths and plans the output partitions with
`spark_jobs.data.windows`; one shuffle then sends every token segment to the partition(s) that
need it, and each partition lays its segments end to end and keeps the tokens its windows
read as one chunk row. `collect_list` over the stream would put it all in one partition; this
never does. Output partition p defines windows [p * total // n, (p + 1) * total // n) of the
stream order (n = ceil(total / w), w the windows of spark.window_chunk_tokens tokens), one
Parquet file each, so a re-run writes the same files; data_distribution.json reads the
windows of each file back from its run_counts. No window is materialized: training cuts
them on the fly (`spark_jobs.data.loader`), so the output is about the size of the token
stream at any stride.

A stride larger than window_size + 1 is allowed (the tokens between two windows are in
none of them) and logged as a warning: it is a way to subsample a large corpus.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spark_jobs.common import finite_json, lineage, storage
from spark_jobs.common.config import PipelineConfig
from spark_jobs.common.errors import InputError, names_partition
from spark_jobs.common.spark_session import get_spark
from spark_jobs.data import parquet_files, window_chunks
from spark_jobs.data.windows import (
    SPLITS,
    Run,
    assign_segments,
    chunk_documents,
    chunk_tokens,
    document_ranges,
    partition_stats,
    plan_partitions,
    routing_keys,
    segment_offsets,
    skipped_tokens_per_stride,
    split_ranges,
    stream_order,
    token_span,
    validation_starts,
    window_runs,
    windows_per_chunk,
)
from spark_jobs.reporting.spark_metrics import record_step_metrics
from spark_jobs.steps.entrypoint import run_step_main

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

TOKEN_COLUMNS = ("doc_id", "seq", "ids")


def run(config: PipelineConfig, **_: Any) -> dict:
    """Run the window step; returns the window counts, partitions and tokens/s."""
    began = time.perf_counter()
    window_size, stride = config.model.window_size, config.data.window_stride
    preprocess_dir = storage.step_dir(config.run.root, config.run.id, "preprocess")
    storage.require_complete(preprocess_dir, "preprocess")
    chars_per_token = _chars_per_token(storage.join(preprocess_dir, "stats.json"))
    recorded_split = _read_split(storage.join(preprocess_dir, "split.json"), config)
    skipped = skipped_tokens_per_stride(window_size, stride)
    if skipped:
        log.warning(
            "data.window_stride=%d > model.window_size + 1 = %d: %d of every %d tokens are in no window",
            *(stride, window_size + 1, skipped, stride),
        )

    spark = get_spark(config, "window")
    job_group = f"window-{config.run.id}"
    spark.sparkContext.setJobGroup(job_group, f"llm-decoder window {config.run.id}")
    tokens_uri = storage.join(preprocess_dir, "tokens")
    tokens = _read_tokens(spark, tokens_uri)
    segments = _segment_table(tokens, tokens_uri)
    docs = document_ranges(segments["doc_id"], segments["offset"], segments["length"])
    val_starts = validation_starts(segments, docs[0], docs[2], recorded_split["val_first_segment"])
    ranges = split_ranges(docs[1], docs[2], val_starts, config.data.split_by)
    plans, per_chunk = {}, windows_per_chunk(config.spark.window_chunk_tokens, stride)
    for split in SPLITS:
        runs = window_runs(ranges[split], window_size, stride)
        if not runs:
            raise InputError(_no_windows_message(split, ranges[split], config, tokens_uri))
        plans[split] = plan_partitions(runs, stride, per_chunk)
    keys = partition_keys(spark, [len(plan) for plan in plans.values()])

    distribution: dict[str, Any] = {
        "window_size": window_size,
        "stride": stride,
        "split_by": config.data.split_by,
        "valid_split": config.training.valid_split,
        "chars_per_token": chars_per_token,
        "format": window_chunks.FORMAT,
    }
    made_from = lineage.current_outputs(config.run.root, config.run.id, ("preprocess",))
    window_dir = storage.step_dir(config.run.root, config.run.id, "window")
    with storage.step_output(window_dir, made_from=made_from) as out:
        for split in SPLITS:
            plan = plans[split]
            chunks = _chunks(spark, tokens, segments, docs, plan, keys[len(plan)], window_size, stride)
            split_uri = storage.join(out, split)
            chunks.write.option("compression", "zstd").parquet(storage.spark_path(split_uri))
            rows = list(window_chunks.windows_per_file(split_uri).values())  # windows per partition
            planned = [sum(run.count for run in runs) for runs in plan]
            if rows != planned:
                raise RuntimeError(f"{split}: wrote {rows} windows per file, planned {planned}")
            distribution[split] = {
                "windows": sum(planned),
                "tokens": sum(end - start for start, end in ranges[split]),
                "chars": recorded_split["chars"][split],  # the text's characters, from preprocess
                **partition_stats(rows),
                "bytes": _parquet_bytes(split_uri),
            }
        finite_json.write(storage.join(out, "data_distribution.json"), distribution)
        # Timing lives apart from data_distribution.json, which is identical across re-runs.
        timing = {"run_id": config.run.id, "seconds": round(time.perf_counter() - began, 3)}
        finite_json.write(storage.join(out, "stats.json"), timing)
        record_step_metrics(spark, job_group, out)
    lineage.drop_checkpoints(config.run.root, config.run.id, because="the window step")

    seconds = time.perf_counter() - began
    train, val = distribution["train"], distribution["val"]
    log.info("windows: train %d, val %d in %.1f s", train["windows"], val["windows"], seconds)
    tokens_total = int(segments["length"].sum())
    return {
        "train_windows": train["windows"],
        "val_windows": val["windows"],
        "train_partitions": train["partitions"],
        "val_partitions": val["partitions"],
        "tokens": tokens_total,
        "seconds": seconds,
        "tokens_per_s": tokens_total / seconds,
    }


# --- reading the preprocess output ----------------------------------------------------


def _chars_per_token(stats_uri: str) -> float:
    try:
        return float(json.loads(storage.read_text(stats_uri))["chars_per_token"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{stats_uri}: no valid 'chars_per_token' ({exc!r})") from None


def _read_tokens(spark: SparkSession, tokens_uri: str) -> DataFrame:
    if not storage.exists(tokens_uri):
        raise InputError(f"preprocess tokens not found: {tokens_uri}")
    # Spark meets a truncated file with a Java stack trace: check every footer here first.
    parquet_files.rows_per_file(tokens_uri)
    tokens = spark.read.parquet(storage.spark_path(tokens_uri))
    missing = [c for c in TOKEN_COLUMNS if c not in tokens.columns]
    if missing:
        raise InputError(f"{tokens_uri}: missing column(s) {', '.join(missing)} (expected doc_id, seq, ids)")
    return tokens.select(*TOKEN_COLUMNS)


def _read_split(split_uri: str, config: PipelineConfig) -> dict[str, Any]:
    """preprocess/split.json, checked against this run's split settings."""
    try:
        split = json.loads(storage.read_text(split_uri))
        split["val_first_segment"] = {int(doc): int(seq) for doc, seq in split["val_first_segment"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            f"{split_uri}: not a valid split record ({exc!r}); re-run the preprocess step"
        ) from None
    for key, configured in (("split_by", config.data.split_by), ("valid_split", config.training.valid_split)):
        if split.get(key) != configured:
            section = "data" if key == "split_by" else "training"
            raise InputError(
                f"{section}.{key} is {configured!r} but the preprocess step split the corpus with "
                f"{key}={split.get(key)!r} ({split_uri}): the tokenizer and embeddings were fitted on "
                "that training part; re-run the preprocess step with this config"
            )
    return split


def _segment_table(tokens: DataFrame, tokens_uri: str) -> dict[str, np.ndarray]:
    """doc_id, seq, length and global offset of every segment, in stream order (on the driver)."""
    from pyspark.sql import functions as F

    meta = tokens.select("doc_id", "seq", F.size("ids").alias("length")).toPandas()
    order = np.lexsort((meta["seq"].to_numpy(), meta["doc_id"].to_numpy()))
    doc_ids = meta["doc_id"].to_numpy(np.int64)[order]
    seqs = meta["seq"].to_numpy(np.int64)[order]
    lengths = meta["length"].to_numpy(np.int64)[order]
    if np.any(lengths < 0):
        raise InputError(f"{tokens_uri}: a segment has null ids")
    same = (doc_ids[1:] == doc_ids[:-1]) & (seqs[1:] == seqs[:-1])
    if np.any(same):
        i = int(np.flatnonzero(same)[0])
        raise InputError(f"{tokens_uri}: duplicate segment doc_id={doc_ids[i]} seq={seqs[i]}")
    return {"doc_id": doc_ids, "seq": seqs, "length": lengths, "offset": segment_offsets(lengths)}


def _no_windows_message(split: str, ranges: list[tuple[int, int]], config: PipelineConfig, uri: str) -> str:
    longest = max((end - start for start, end in ranges), default=0)
    total = sum(end - start for start, end in ranges)
    return (
        f"no {split} windows: model.window_size={config.model.window_size} needs "
        f"{config.model.window_size + 1} tokens per window, but the longest {split} range has {longest} "
        f"tokens ({total} {split} tokens in all; data.split_by={config.data.split_by}, "
        f"training.valid_split={config.training.valid_split}; tokens: {uri})"
    )


# --- building one split's chunks ------------------------------------------------------


def _chunks(
    spark: SparkSession,
    tokens: DataFrame,
    segments: dict[str, np.ndarray],
    docs: tuple[np.ndarray, ...],
    plan: list[list[Run]],
    keys: np.ndarray,
    window_size: int,
    stride: int,
) -> DataFrame:
    """One split as len(plan) chunk rows, one per partition, following the stream's order."""
    import pandas as pd
    from pyspark.sql import functions as F

    spans = np.array([token_span(runs, window_size, stride) for runs in plan], dtype=np.int64)
    seg_ends = segments["offset"] + segments["length"]
    segment, part = assign_segments(segments["offset"], seg_ends, spans[:, 0], spans[:, 1])
    routing = pd.DataFrame(
        {
            "doc_id": segments["doc_id"][segment].astype(np.int32),
            "seq": segments["seq"][segment],
            "part": part.astype(np.int64),
            "key": keys[part],
            "offset": segments["offset"][segment],
        }
    )
    routed = (
        tokens.join(F.broadcast(spark.createDataFrame(routing)), ["doc_id", "seq"])
        .select("key", "part", "offset", "ids")
        .repartition(len(plan), "key")
    )
    # Sent once per executor, not with every task: the plan grows with the corpus.
    shared = spark.sparkContext.broadcast((plan, docs[0], docs[1]))

    def cut(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # One output partition per Spark partition; grouping by `part` keeps it correct anyway.
        table = pa.Table.from_batches(list(batches))
        if table.num_rows == 0:
            return
        plan, doc_ids, doc_starts = shared.value
        parts = table.column("part").to_numpy()
        for p in np.unique(parts):
            runs = plan[p]
            base, stream = _stream_from_segments(table.filter(pa.array(parts == p)))
            ids = chunk_tokens(stream, base, runs, window_size, stride)
            span = token_span(runs, window_size, stride)
            chunk_doc_ids, chunk_doc_starts = chunk_documents(doc_ids, doc_starts, span)
            yield window_chunks.chunk_batch(
                int(p), window_size, stride, ids, runs, chunk_doc_ids, chunk_doc_starts
            )

    return routed.mapInArrow(names_partition("window", cut), window_chunks.CHUNK_DDL)


def _stream_from_segments(segments: pa.Table) -> tuple[int, np.ndarray]:
    """Lay a partition's segments (offset, ids; any order) end to end: (global base, tokens)."""
    offsets = segments.column("offset").to_numpy()
    ids = segments.column("ids").combine_chunks()
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    order = stream_order(offsets, lengths)
    stream = ids.take(pa.array(order)).flatten().to_numpy(zero_copy_only=False)
    return int(offsets[order[0]]), stream


def partition_keys(spark: SparkSession, counts: list[int]) -> dict[int, np.ndarray]:
    """keys[n][p]: a long that `repartition(n, key)` sends to partition p, for each n in counts.

    Hash partitioning puts a row in pmod(murmur3(key, seed 42), n), which is exactly SQL's
    `hash()`; so one small job hashes candidate keys 0, 1, 2, ... and the driver picks, for each
    p, the smallest key landing there. Routing is then one-to-one: output partition p (and its
    Parquet file) holds exactly the windows the plan gave it.
    """
    from pyspark.sql import functions as F

    candidates = max(1024, 16 * max(counts))
    while True:
        hashes = spark.range(candidates).select(F.hash("id").alias("h")).toPandas()["h"].to_numpy()
        keys = {n: routing_keys(hashes, n) for n in counts}
        if all(k is not None for k in keys.values()):
            return keys  # type: ignore[return-value]
        candidates *= 4


def _parquet_bytes(split_uri: str) -> int:
    """The bytes of a split's Parquet files (what training reads)."""
    total = 0
    for uri in parquet_files.data_files(split_uri):
        fs, path = storage.filesystem(uri)
        total += fs.get_file_info(path).size or 0
    return total


if __name__ == "__main__":
    run_step_main("window", run)
