"""The preprocess step: corpus -> tokenizer, token ids (Parquet), token counts, embeddings.

    llm-decoder preprocess --config configs/local.yaml
    spark-submit spark_jobs/steps/preprocess.py --config configs/local.yaml --set run.id=a

Writes `<root>/runs/<run_id>/preprocess/` (see docs/architecture.md): tokenizer.json,
tokens/ (doc_id int32, seq int64, ids array<int32>), documents.json, token_counts.csv,
split.json, stats.json, and embeddings.safetensors + embeddings.txt when the model uses
embeddings (mlp, or gpt with model.init_from_embeddings) or data.embeddings_path gives them.

The driver never holds the corpus: it lists the files, and the executors read them in blocks
of whole lines (`spark_jobs.data.corpus_spark`, `corpus_blocks`), validate and normalise them, and keep the
text cached for the jobs that follow. The driver gets numbers back (characters, segment
counts, hashes, the first decoding error) and the tokenizer's sample, which
`data.tokenizer_sample_chars` bounds. The output is marked complete (`_SUCCESS`) only when
everything is written.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from spark_jobs.common import finite_json, lineage, storage
from spark_jobs.common.config import PipelineConfig
from spark_jobs.data import corpus_blocks as blocks_io
from spark_jobs.data import embeddings as emb
from spark_jobs.data import tokenizer as tok
from spark_jobs.data.corpus_files import find_corpus_files
from spark_jobs.data.corpus_spark import (
    plan_segments,
    read_corpus_blocks,
    segment_rows,
    split_record,
    tokenizer_sample,
)
from spark_jobs.reporting.spark_metrics import record_step_metrics
from spark_jobs.steps.entrypoint import run_step_main

log = logging.getLogger("spark_jobs.steps.preprocess")

STEP = "preprocess"
EMBEDDINGS_FILE = "embeddings.safetensors"
# stats.json's embeddings_source when the model needs none (gpt without init_from_embeddings)
NO_EMBEDDINGS = "none"


def training_rows(spark, tokens_df, val_first_segment: dict[int, int]):
    """The token rows of the training text only (what Word2Vec may learn from)."""
    from pyspark.sql import functions as F

    bounds = spark.createDataFrame(list(val_first_segment.items()), schema="doc_id int, val_seq bigint")
    return (
        tokens_df.join(F.broadcast(bounds), "doc_id").where(F.col("seq") < F.col("val_seq")).drop("val_seq")
    )


def encode_on_spark(spark, segments, num_segments: int, tokenizer_json: str, config: PipelineConfig):
    """Tokenize the segments inside Spark (mapInArrow, tokenizer broadcast once)."""
    # Range partitioning keeps each partition a contiguous run of (doc_id, seq); order itself
    # is carried by the columns, never by the row order.
    wanted = -(-num_segments // config.spark.target_partition_size)
    num_partitions = max(1, min(num_segments, max(spark.sparkContext.defaultParallelism, wanted)))
    frame = segments.repartitionByRange(num_partitions, "doc_id", "seq")
    broadcast = spark.sparkContext.broadcast(tokenizer_json)
    return frame.mapInArrow(tok.arrow_encoder(broadcast), tok.TOKENS_DDL), num_partitions


def token_counts_csv(counts: np.ndarray, id_to_token: list[str], has_vector: np.ndarray) -> str:
    """id, token, count (whole corpus), has_vector (1: a vector learnt or given; 0: seeded random,
    or no embeddings made)."""
    order = sorted(range(len(counts)), key=lambda i: (-int(counts[i]), i))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "token", "count", "has_vector"])
    for i in order:
        writer.writerow([i, id_to_token[i], int(counts[i]), int(has_vector[i])])
    return buffer.getvalue()


def _tokenizer(config: PipelineConfig, sample: Callable[[int | None], list[str]]):
    """(tokenizer, source): the user's, checked on a sample of the text, or a BPE trained on
    the training text only (nothing of the validation text leaks into the vocabulary)."""
    data = config.data
    if data.tokenizer_path:
        tokenizer = tok.load_tokenizer(data.tokenizer_path)
        tok.check_round_trip(tokenizer, sample(200_000), data.tokenizer_path)
        return tokenizer, f"file:{data.tokenizer_path}"
    texts = sample(data.tokenizer_sample_chars)
    started = time.perf_counter()
    tokenizer = tok.train_tokenizer(texts, data.vocab_size)
    log.info(
        "trained a byte-level BPE: vocab %d on %d chars in %.2f s",
        tokenizer.get_vocab_size(),
        sum(map(len, texts)),
        time.perf_counter() - started,
    )
    return tokenizer, "trained"


def count_tokens(tokens_df, vocab_size: int) -> tuple[dict[int, int], np.ndarray]:
    """(tokens per document, occurrences per token id) of the encoded corpus."""
    from pyspark.sql import functions as F

    per_doc = {
        row["doc_id"]: int(row["tokens"])
        for row in tokens_df.groupBy("doc_id").agg(F.sum(F.size("ids")).alias("tokens")).collect()
    }
    counts = np.zeros(vocab_size, dtype=np.int64)
    for row in tokens_df.select(F.explode("ids").alias("id")).groupBy("id").count().collect():
        if not 0 <= row["id"] < vocab_size:
            raise RuntimeError(f"token id {row['id']} outside the vocabulary ({vocab_size})")
        counts[row["id"]] = row["count"]
    return per_doc, counts


def build_embeddings(
    config: PipelineConfig,
    user_vectors: emb.TokenVectors | None,
    tokens_df,
    counts: np.ndarray,
    id_to_token: list[str],
) -> tuple[np.ndarray, np.ndarray, float, str]:
    """(matrix [vocab, dim], which ids have a vector, corpus OOV rate, source): the user's
    vectors aligned to the vocabulary, or Word2Vec trained on the token stream."""
    data, dim, seed = config.data, config.model.embedding_size, config.training.seed
    vocab_size = len(id_to_token)
    if user_vectors is not None:
        matrix, known = emb.align(user_vectors.vectors, id_to_token, dim, seed)
        rate = emb.oov_rate(counts, known)
        missing = [id_to_token[i] for i in np.argsort(-counts, kind="stable") if not known[i] and counts[i]]
        emb.check_oov(rate, data.max_oov_rate, data.embeddings_path, missing)
        log.info(
            "embeddings from %s: %d of %d tokens have a vector, corpus OOV rate %.2f%%",
            *(data.embeddings_path, int(known.sum()), vocab_size, 100 * rate),
        )
        source = f"file:{data.embeddings_path}"
    else:
        started = time.perf_counter()
        vectors = emb.train_word2vec(tokens_df, dim, seed, data.word2vec_iterations, data.word2vec_window)
        matrix, known = emb.align(vectors, [str(i) for i in range(vocab_size)], dim, seed)
        rate = emb.oov_rate(counts, known)
        log.info(
            "word2vec: %d of %d tokens trained in %.2f s (the rest: seeded random init)",
            *(int(known.sum()), vocab_size, time.perf_counter() - started),
        )
        source = "word2vec"
    emb.check_finite(matrix, source)
    return matrix, known, rate, source


def encode_corpus(
    spark,
    config: PipelineConfig,
    segments,
    num_segments: int,
    tokenizer_json: str,
    vocab_size: int,
    tokens_uri: str,
):
    """Write tokens/ (Parquet) and count it: (tokens DataFrame, tokens per document, counts per id, seconds)."""
    started = time.perf_counter()
    encoded, num_partitions = encode_on_spark(spark, segments, num_segments, tokenizer_json, config)
    encoded.sortWithinPartitions("doc_id", "seq").write.mode("overwrite").parquet(
        storage.spark_path(tokens_uri)
    )
    tokens_df = spark.read.parquet(storage.spark_path(tokens_uri))
    per_doc, counts = count_tokens(tokens_df, vocab_size)
    seconds = time.perf_counter() - started
    log.info(
        "encoded %d tokens in %.2f s (%.0f tokens/s, %d partitions)",
        *(int(counts.sum()), seconds, int(counts.sum()) / max(seconds, 1e-9), num_partitions),
    )
    return tokens_df, per_doc, counts, seconds


def run(config: PipelineConfig, **_: Any) -> dict[str, Any]:
    """Run the preprocess step; returns the figures written to stats.json."""
    started = time.perf_counter()
    data = config.data
    out_uri = storage.step_dir(config.run.root, config.run.id, STEP)
    log.info("preprocess run=%s corpus=%s -> %s", config.run.id, data.corpus_path, out_uri)

    with storage.step_output(out_uri) as out:
        # Inputs first, before Spark starts: bad ones fail in a second with one line.
        files = find_corpus_files(data.corpus_path)
        user_vectors = (
            emb.read_embeddings(data.embeddings_path, config.model.embedding_size)
            if data.embeddings_path
            else None
        )

        from spark_jobs.common.spark_session import get_spark

        spark = get_spark(config, STEP)
        job_group = f"{STEP}-{config.run.id}"
        spark.sparkContext.setJobGroup(job_group, f"llm-decoder {STEP} {config.run.id}")
        texts, plan = read_corpus_blocks(spark, files, data)
        segs = plan_segments(spark, texts, plan, config)
        chars = sum(plan.doc_chars)
        log.info(
            "corpus: %d documents, %d chars, %d segments, read in %d blocks",
            *(len(plan.doc_chars), chars, segs.segments, len(plan.blocks)),
        )
        tokenizer, tokenizer_source = _tokenizer(
            config, lambda max_chars: tokenizer_sample(spark, texts, segs, max_chars)
        )
        tokenizer_json = tokenizer.to_str()
        vocab_size = tokenizer.get_vocab_size()
        id_to_token = [tokenizer.id_to_token(i) for i in range(vocab_size)]
        storage.write_text(storage.join(out, "tokenizer.json"), tokenizer_json)

        tokens_df, per_doc, counts, encode_seconds = encode_corpus(
            spark,
            config,
            segment_rows(spark, texts, plan, segs),
            segs.segments,
            tokenizer_json,
            vocab_size,
            storage.join(out, "tokens"),
        )
        texts.unpersist()
        total_tokens = int(counts.sum())

        if config.model.uses_embeddings or user_vectors is not None:
            train_tokens_df = training_rows(spark, tokens_df, segs.val_first_segment)
            matrix, known, rate, source = build_embeddings(
                config, user_vectors, train_tokens_df, counts, id_to_token
            )
            storage.write_bytes(storage.join(out, EMBEDDINGS_FILE), emb.to_safetensors(matrix))
            storage.write_text(storage.join(out, "embeddings.txt"), emb.to_word2vec_text(matrix, id_to_token))
        else:
            # Word2Vec is most of this step's time and model.kind=gpt never reads its output.
            known, rate, source = np.zeros(vocab_size, dtype=bool), None, NO_EMBEDDINGS
            log.info("no embeddings: model.kind=%s does not use them", config.model.kind)
        storage.write_text(
            storage.join(out, "token_counts.csv"), token_counts_csv(counts, id_to_token, known)
        )
        finite_json.write(storage.join(out, "split.json"), split_record(config, plan, segs))
        documents_json = [
            {"doc_id": doc, "path": files[index], "chars": plan.doc_chars[doc], "tokens": per_doc.get(doc, 0)}
            for index, doc in plan.doc_of_file.items()
        ]
        finite_json.write(storage.join(out, "documents.json"), documents_json)

        stats = {
            "run_id": config.run.id,
            "documents": len(plan.doc_chars),
            "segments": segs.segments,
            "chars": chars,
            "corpus_sha256": blocks_io.corpus_hash(
                [fact.sha256 for i, fact in enumerate(plan.facts) if plan.doc_of_block(i) >= 0]
            ),
            "read_blocks": len(plan.blocks),
            "tokens": total_tokens,
            "vocab_size": vocab_size,
            "chars_per_token": chars / total_tokens if total_tokens else 0.0,
            "tokenizer_source": tokenizer_source,
            "embeddings_source": source,
            "embedding_size": config.model.embedding_size,
            "tokens_with_vector": int(known.sum()),
            "oov_rate": rate,
            "encode_seconds": round(encode_seconds, 3),
            "seconds": round(time.perf_counter() - started, 3),
            "tokens_per_s": round(total_tokens / max(encode_seconds, 1e-9), 1),
        }
        finite_json.write(storage.join(out, "stats.json"), stats)
        record_step_metrics(spark, job_group, out)
    lineage.drop_checkpoints(config.run.root, config.run.id, because="the preprocess step")
    log.info(
        "preprocess done: %d documents, %d chars, %d tokens (%.2f chars/token), %.1f s, %.0f tokens/s",
        *(stats["documents"], chars, total_tokens, stats["chars_per_token"], stats["seconds"]),
        stats["tokens_per_s"],
    )
    return stats


if __name__ == "__main__":
    run_step_main(STEP, run)
